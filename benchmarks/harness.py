"""The measuring machinery: sides, rows, alternation, statistics and the result table.

A *row* compares one or more eventbus *sides* with one or more *reference* sides (a raw client
or a peer library) on the same workload. Every side is a function ``run(n) -> seconds`` that
moves ``n`` events and returns the time it took (setup outside the timed region). The harness
warms every side up once, then runs all sides ``repeats`` times, rotating their order on each
repetition so slow drift of the shared machine hits every side alike. Each side's rate is
reported as median, min and max; each eventbus side gets ratio = median(eventbus) /
median(reference) against every reference of its row, and the min/max of the per-repetition
ratios (paired within a repetition, so they share the machine's state).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pydantic_core

T = TypeVar("T")

Role = Literal["eventbus", "reference"]


@dataclass
class Side:
    """One way of doing a row's work. ``run(n)`` returns elapsed seconds for ``n`` events."""

    label: str
    role: Role
    run: Callable[[int], float]
    reset: Callable[[], None] | None = None
    """Called before every run, outside the timed region (trim streams, fresh groups)."""
    scale: float = 1.0
    """This side moves ``count * scale`` events (for very slow peers)."""


@dataclass
class Target:
    """An issue target: ``eventbus`` side's ratio against ``reference`` is at least ``at_least``.

    ``reference`` may name several labels separated by ``|``: the slowest of them is used."""

    eventbus: str
    reference: str
    at_least: float
    text: str


@dataclass
class Row:
    key: str
    title: str
    transport: str
    payload: int
    count: int
    sides: list[Side]
    targets: list[Target] = field(default_factory=list)
    note: str = ""


@dataclass
class SideResult:
    label: str
    role: Role
    count: int
    rates: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "role": self.role,
            "events_per_run": self.count,
            "rates": [round(r, 1) for r in self.rates],
            "median": round(self.median, 1),
            "min": round(min(self.rates), 1),
            "max": round(max(self.rates), 1),
        }


@dataclass
class Ratio:
    eventbus: str
    reference: str
    median: float
    low: float
    high: float

    def to_json(self) -> dict[str, Any]:
        return {
            "eventbus": self.eventbus,
            "reference": self.reference,
            "ratio": round(self.median, 3),
            "paired_min": round(self.low, 3),
            "paired_max": round(self.high, 3),
        }


@dataclass
class TargetResult:
    text: str
    eventbus: str
    reference: str
    at_least: float
    ratio: float | None
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.text,
            "eventbus": self.eventbus,
            "reference": self.reference,
            "at_least": self.at_least,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "met": self.met,
        }


@dataclass
class RowResult:
    row: Row
    sides: list[SideResult]
    ratios: list[Ratio]
    targets: list[TargetResult]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.row.key,
            "title": self.row.title,
            "transport": self.row.transport,
            "payload_bytes": self.row.payload,
            "note": self.row.note,
            "sides": [s.to_json() for s in self.sides],
            "ratios": [r.to_json() for r in self.ratios],
            "targets": [t.to_json() for t in self.targets],
            "error": self.error,
        }


@dataclass
class Metric:
    """A measurement that is not a throughput ratio (latency, memory)."""

    key: str
    title: str
    values: dict[str, float]
    unit: str
    target: TargetResult | None = None
    note: str = ""
    error: str | None = None
    targets: list[TargetResult] = field(default_factory=list)
    """More targets on the same measurement (the latency rows judge p50 and p99)."""

    @property
    def all_targets(self) -> list[TargetResult]:
        return ([self.target] if self.target is not None else []) + self.targets

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "values": {k: round(v, 3) for k, v in self.values.items()},
            "target": None if self.target is None else self.target.to_json(),
            "targets": [t.to_json() for t in self.targets],
            "note": self.note,
            "error": self.error,
        }


def measure(row: Row, repeats: int, *, warmup: bool = True) -> RowResult:
    """Warm up each side once, then ``repeats`` rounds with a rotating order of sides."""
    sides = row.sides
    if warmup:
        for side in sides:
            _timed(side, max(1, int(min(row.count, 5000) * side.scale)))
    rates: dict[str, list[float]] = {s.label: [] for s in sides}
    for rep in range(repeats):
        shift = rep % len(sides)
        order = sides[shift:] + sides[:shift]
        if rep % 2:
            order.reverse()
        for side in order:
            n = max(1, int(row.count * side.scale))
            rates[side.label].append(n / _timed(side, n))
    results = [
        SideResult(s.label, s.role, max(1, int(row.count * s.scale)), rates[s.label]) for s in sides
    ]
    ratios = [
        _ratio(e, r)
        for e in results
        if e.role == "eventbus"
        for r in results
        if r.role == "reference"
    ]
    by_label = {r.label: r for r in results}
    return RowResult(row, results, ratios, [_judge(t, by_label) for t in row.targets])


def _timed(side: Side, n: int) -> float:
    if side.reset is not None:
        side.reset()
    return max(side.run(n), 1e-9)


def _ratio(e: SideResult, r: SideResult) -> Ratio:
    paired = [a / b for a, b in zip(e.rates, r.rates, strict=True)]
    return Ratio(e.label, r.label, e.median / r.median, min(paired), max(paired))


def _judge(target: Target, results: dict[str, SideResult]) -> TargetResult:
    refs = [results[label] for label in target.reference.split("|") if label in results]
    eb = results.get(target.eventbus)
    if eb is None or not refs:
        return TargetResult(
            target.text, target.eventbus, target.reference, target.at_least, None, None
        )
    slowest = min(refs, key=lambda r: r.median)
    ratio = eb.median / slowest.median
    return TargetResult(
        target.text, eb.label, slowest.label, target.at_least, ratio, ratio >= target.at_least
    )


def judge_value(
    text: str, value: float, limit: float, label: str, inclusive: bool = False
) -> TargetResult:
    """A "below ``limit``" (or "at most", ``inclusive``) target on a measured value."""
    met = value <= limit if inclusive else value < limit
    return TargetResult(text, label, "limit", limit, value, met)


# --------------------------------------------------------------------------------------------
# helpers for cases


class Clock:
    """Times a block: ``with clock: ...`` then ``clock.seconds``."""

    seconds = 0.0
    _start = 0.0

    def __enter__(self) -> Clock:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def payload(size: int) -> dict[str, str]:
    """A small field dict whose JSON encoding is exactly ``size`` bytes."""
    overhead = len(pydantic_core.to_json({"body": ""}))
    body = (uuid.uuid4().hex * (size // 32 + 1))[: max(0, size - overhead)]
    data = {"body": body}
    assert len(pydantic_core.to_json(data)) == size
    return data


def keys(n: int = 64) -> list[str]:
    """Event keys used by every side (keyed publishing, as services do)."""
    return [f"agent-{i}" for i in range(n)]


def chunks(n: int, size: int = 1000) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks covering ``range(n)``."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


@dataclass
class Env:
    """What the cases share: server URLs, the event loop for async sides, naming, sizes."""

    quick: bool
    redis_url: str | None = None
    kafka_url: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    facts: dict[str, Any] = field(default_factory=dict)
    _runner: asyncio.Runner | None = None
    _names: int = 0

    def name(self, what: str) -> str:
        """A unique topic / group / stream name for this run (shared servers stay tidy)."""
        self._names += 1
        return f"ebbench-{self.run_id}-{what}-{self._names}"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the benchmark's event loop (one loop for every async side)."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(coro)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def count(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    @property
    def payloads(self) -> list[int]:
        return [100] if self.quick else [100, 1024]


@contextlib.contextmanager
def cleanup() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose callbacks never hide the benchmark's own error."""
    with contextlib.ExitStack() as stack:
        yield stack


def timed_async(
    env: Env, work: Callable[[int], Coroutine[Any, Any, None]]
) -> Callable[[int], float]:
    """A ``run(n)`` for an async workload, timed inside the loop (loop start-up excluded)."""

    async def timed(n: int) -> float:
        start = time.perf_counter()
        await work(n)
        return time.perf_counter() - start

    return lambda n: env.run(timed(n))


# --------------------------------------------------------------------------------------------
# the table


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def render(rows: list[RowResult], metrics: list[Metric]) -> str:
    """The markdown table printed at the end and pasted into docs/performance.md."""
    out = [
        "| row | transport | payload | eventbus side | events/s (median, min-max) "
        "| reference | events/s (median, min-max) | ratio (paired min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in rows:
        if result.error:
            out.append(
                f"| {result.row.title} | {result.row.transport} | {result.row.payload} B "
                f"| error: {result.error} | | | | |"
            )
            continue
        by_label = {s.label: s for s in result.sides}
        for ratio in result.ratios:
            e, r = by_label[ratio.eventbus], by_label[ratio.reference]
            out.append(
                f"| {result.row.title} | {result.row.transport} | {result.row.payload} B "
                f"| {e.label} | {_spread(e)} | {r.label} | {_spread(r)} "
                f"| **{ratio.median:.2f}x** ({ratio.low:.2f}-{ratio.high:.2f}) |"
            )
    if metrics:
        out += ["", "| measurement | values | target |", "|---|---|---|"]
        for m in metrics:
            values = (
                f"error: {m.error}"
                if m.error
                else ", ".join(f"{k} {v:,.1f}" for k, v in m.values.items())
            )
            text = "; ".join(_target_text(t) for t in m.all_targets)
            out.append(f"| {m.title} | {values} | {text} |")
    return "\n".join(out)


def render_targets(rows: list[RowResult], metrics: list[Metric]) -> str:
    lines = ["| target | eventbus side | reference | ratio | met? |", "|---|---|---|---|---|"]
    for result in rows:
        for t in result.targets:
            lines.append(
                f"| {t.text} ({result.row.transport}, {result.row.payload} B) | {t.eventbus} "
                f"| {t.reference} | {_ratio_text(t)} | {_met(t.met)} |"
            )
    for m in metrics:
        for t in m.all_targets:
            lines.append(
                f"| {t.text} | {t.eventbus} | limit {t.at_least:,g} "
                f"| {_ratio_text(t, '-')} | {_met(t.met)} |"
            )
    return "\n".join(lines)


def _spread(s: SideResult) -> str:
    return f"{fmt_rate(s.median)} ({fmt_rate(min(s.rates))}-{fmt_rate(max(s.rates))})"


def _ratio_text(t: TargetResult, unit: str = "") -> str:
    if t.ratio is None:
        return "n/a"
    if unit:
        return f"{t.ratio:,.2f}"
    return f"{t.ratio:.2f}x (>= {t.at_least:g}x)"


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def _target_text(t: TargetResult | None) -> str:
    if t is None:
        return ""
    return f"{t.text}: {_met(t.met)}"
