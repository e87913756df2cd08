"""Shared pieces of the reliability tests: figures, soak scaling, helpers.

Every fault test records its figures (trials, faults injected, events published, events lost,
duplicates) with the ``figures`` fixture; they are written as JSON to
``$EVENTBUS_RELIABILITY_RESULTS`` (default ``tests/reliability/.results``) when the test ends,
and ``tests/reliability/report.py`` turns them into ``docs/reliability.md``.

``EVENTBUS_SOAK=1`` runs the same tests with larger counts (see :func:`scale`): in all, at least
100,000 events and 20 faults per transport (Redis, Kafka), in about 20 minutes on 2 CPUs; the
tests' timeouts grow with their counts. ``report.py --soak DIR`` renders such a run's figures
next to the CI-sized ones.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SOAK = os.environ.get("EVENTBUS_SOAK", "").strip().lower() in {"1", "true", "yes", "on"}


def results_dir() -> Path:
    """Where the figures go: ``$EVENTBUS_RELIABILITY_RESULTS`` or ``tests/reliability/.results``."""
    env = os.environ.get("EVENTBUS_RELIABILITY_RESULTS")
    path = Path(env).expanduser() if env else HERE / ".results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scale(normal: int, soak: int) -> int:
    """A count for CI (``normal``) or for a soak run (``soak``, with ``EVENTBUS_SOAK=1``)."""
    return soak if SOAK else normal


@dataclass
class Figures:
    """What one fault test did and what it lost."""

    test: str
    fault: str
    transport: str
    trials: int = 0
    faults: int = 0
    published: int = 0
    lost: int = 0
    duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Errors callers saw during faults, by class name (expected ones, counted)."""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    soak: bool = SOAK
    passed: bool = False

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Callable[..., Figures]]:
    """A factory ``figures(fault, transport) -> Figures``; each is written when the test ends."""
    made: list[Figures] = []
    started = time.monotonic()

    def make(fault: str, transport: str) -> Figures:
        fig = Figures(test=request.node.nodeid, fault=fault, transport=transport)
        made.append(fig)
        return fig

    yield make
    report = getattr(request.node, "rep_call", None)
    passed = bool(report is not None and report.passed)
    for fig in made:
        fig.seconds = round(time.monotonic() - started, 2)
        fig.passed = passed
        name = _SAFE.sub("_", f"{request.node.nodeid}-{fig.transport}-{fig.fault}")[-180:]
        (results_dir() / f"{name}.json").write_text(json.dumps(asdict(fig), indent=2) + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def poll(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # allowed: polling interval of a condition wait
