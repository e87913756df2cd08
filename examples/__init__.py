"""Examples of eventbus, using only its public API.

- ``examples/quickstart.py``: publish typed events and handle them in a group (a script).
- ``examples/agent_workflow``: a planner and workers with retries and a dead-letter topic
  (``python -m examples.agent_workflow --help``).
"""
