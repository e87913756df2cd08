"""The conformance suite: every delivery claim of eventbus, written once, run on every transport.

Use it from a test module by subclassing :class:`ConformanceSuite` and giving the ``url``
fixture (a fresh, reachable server; unique topic and group names keep tests apart)::

    import pytest
    from eventbus.testing.conformance import ConformanceSuite

    class TestMyTransport(ConformanceSuite):
        @pytest.fixture
        def url(self) -> str:
            return "mytransport://127.0.0.1:1234"

Class attributes tune timing for slow servers (``session_timeout``, ``visibility_timeout``,
``deadline``). Where a transport's :class:`~eventbus.transport.Capabilities` says it cannot do
something, the test checks the clear error or skips naming the flag.

The suite is split by topic into the modules of this package (``publishing``, ``groups``,
``leases``, ``handlers``, ``admin``) over ``_base``; :class:`ConformanceSuite` joins them.
"""

from __future__ import annotations

from eventbus.testing.conformance._base import SuiteBase, Task, drain, unique, wait_until
from eventbus.testing.conformance.admin import AdminTests
from eventbus.testing.conformance.groups import GroupTests
from eventbus.testing.conformance.handlers import HandlerTests
from eventbus.testing.conformance.leases import LeaseTests
from eventbus.testing.conformance.publishing import PublishingTests

__all__ = ["ConformanceSuite", "SuiteBase", "Task", "drain", "unique", "wait_until"]


# pytest collects inherited tests in reverse MRO order: the last base runs first
class ConformanceSuite(AdminTests, HandlerTests, LeaseTests, GroupTests, PublishingTests):
    """The suite. Subclasses provide the ``url`` fixture."""
