"""Testing tools: the conformance suite (``eventbus.testing.conformance``), pytest fixtures for
real servers (``eventbus.testing.fixtures``) and the local server machinery
(``eventbus.testing.servers``). Import the submodule you need; this package imports nothing."""
