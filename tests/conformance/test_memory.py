"""The conformance suite on the in-memory transport (a fresh named broker per test)."""

import uuid

import pytest

from eventbus.testing.conformance import ConformanceSuite


class TestMemoryConformance(ConformanceSuite):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex[:8]}"
