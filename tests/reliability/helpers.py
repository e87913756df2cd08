"""Helpers for the process-level tests: the consumer subprocess, its log, server-side state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import eventbus
from eventbus.errors import EventBusError
from eventbus.transport import Offset, Position, offset_key

if TYPE_CHECKING:
    from tests.reliability.conftest import Figures

APP = Path(__file__).resolve().parent / "consumer_app.py"


@dataclass
class Handled:
    """One line of the consumer's log."""

    kind: str  # "S" or "H"
    n: int
    partition: int
    offset: str
    attempt: int
    pid: int


@dataclass
class ConsumerLog:
    path: Path
    entries: list[Handled] = field(default_factory=list)

    def read(self) -> ConsumerLog:
        self.entries = []
        for text in self.path.read_text(encoding="utf-8").splitlines():
            parts = text.split()
            if len(parts) == 6 and parts[0] in ("S", "H"):
                kind, n, p, off, att, pid = parts
                self.entries.append(Handled(kind, int(n), int(p), off, int(att), int(pid)))
        return self

    def handled(self, pid: int | None = None) -> list[Handled]:
        return [e for e in self.entries if e.kind == "H" and (pid is None or e.pid == pid)]

    def count(self) -> int:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        return sum(1 for x in text.splitlines() if x.startswith("H "))

    def text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""


def start_consumer(
    url: str, topic: str, group: str, out: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``consumer_app.py`` as a child process; its stderr goes to ``<out>.err``."""
    err = open(f"{out}.err", "ab")  # noqa: SIM115 (handed to the child, closed below)
    try:
        return subprocess.Popen(
            [sys.executable, str(APP), "--url", url, "--topic", topic, "--group", group,
             "--out", str(out), *extra],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    finally:
        err.close()


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 30) -> int:
    """Send ``sig`` and wait for the process to end; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def publish_numbered(
    bus: eventbus.EventBus, topic: str, start: int, count: int, keys: int = 16
) -> dict[int, Position]:
    """Publish events ``{"n": start..start+count-1}`` keyed ``k<n % keys>``; n -> position."""
    numbers = range(start, start + count)
    events = [eventbus.Event(data={"n": n}, key=f"k{n % keys}") for n in numbers]
    positions = bus.publish_many(topic, events, timeout=30)
    return dict(zip(range(start, start + count), positions, strict=True))


def redis_pending(url: str, topic: str, group: str, partitions: int) -> set[tuple[int, str]]:
    """(partition, entry id) of every entry pending (delivered, not acked) in ``group``."""
    import redis

    from eventbus.adapters.redis_streams import _layout as layout

    client = redis.Redis.from_url(url.split("?")[0])
    try:
        found: set[tuple[int, str]] = set()
        for p in range(partitions):
            key = layout.stream_key(topic, p)
            try:
                rows = client.xpending_range(key, group, "-", "+", 100_000)
            except redis.ResponseError:  # no group yet on this partition
                continue
            for row in rows:
                found.add((p, row["message_id"].decode()))
        return found
    finally:
        client.close()


def kafka_committed(bus: eventbus.EventBus, group: str, topic: str) -> dict[int, Offset | None]:
    """The group's committed offset per partition of ``topic`` (the next one it reads)."""
    try:
        info = bus.describe_group(group)
    except eventbus.errors.GroupNotFoundError:
        return {}
    return {p.partition: p.committed for p in info.partitions if p.topic == topic}


def unacked_kafka(positions: dict[int, Position], committed: dict[int, Offset | None]) -> set[int]:
    """Events at or after their partition's committed offset (not done for the group)."""
    out: set[int] = set()
    for n, pos in positions.items():
        c = committed.get(pos.partition)
        if c is None or offset_key(pos.offset) >= offset_key(c):
            out.add(n)
    return out


@dataclass
class Attempt:
    n: int
    position: Position | None
    error: BaseException | None
    seconds: float
    finished: float


class Publisher(threading.Thread):
    """Publishes ``{"n": n}`` one at a time until stopped, recording every outcome."""

    def __init__(self, bus: eventbus.EventBus, topic: str, timeout: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.bus, self.topic, self.timeout = bus, topic, timeout
        self.attempts: list[Attempt] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            t0 = time.monotonic()
            position: Position | None = None
            error: BaseException | None = None
            try:
                position = self.bus.publish(
                    self.topic, {"n": n}, key=f"k{n % 8}", timeout=self.timeout
                )
            except Exception as exc:  # recorded and checked by the test
                error = exc
            now = time.monotonic()
            self.attempts.append(Attempt(n, position, error, now - t0, now))
            n += 1

    def ok_since(self, when: float) -> int:
        return sum(1 for a in list(self.attempts) if a.error is None and a.finished > when)

    def failed_since(self, when: float) -> int:
        return sum(1 for a in list(self.attempts) if a.error is not None and a.finished > when)


class Consumer(threading.Thread):
    """Fetches and acks in a group until stopped; records the ``n`` of every delivery and how
    long each fetch and ack took (``slowest``)."""

    def __init__(
        self, bus: eventbus.EventBus, topic: str, group: str, session_timeout: float = 3.0
    ) -> None:
        super().__init__(daemon=True)
        self.sub = bus.subscribe(topic, group=group, session_timeout=session_timeout)
        self.seen: list[int] = []
        self.errors: Counter[str] = Counter()
        self.slowest = 0.0
        self.halt = threading.Event()

    def _timed(self, fn: Any, *args: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - t0)

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                batch = self._timed(self.sub.fetch, 50, 0.5)
                for delivery in batch:
                    self.seen.append(delivery.event.data["n"])
                    self._timed(delivery.ack)
            except EventBusError as exc:  # counted; the consumer goes on
                self.errors[type(exc).__name__] += 1
                time.sleep(0.1)  # allowed: back off before the next fetch
        try:
            self.sub.close()
        except EventBusError as exc:
            self.errors[f"close {type(exc).__name__}"] += 1


def publish_figures(
    fig: Figures,
    publisher: Publisher,
    consumer: Consumer | None,
    stored: Mapping[tuple[int, str], int],
) -> list[int]:
    """Fill ``fig`` from a :class:`Publisher` and its :class:`Consumer` after a fault test:
    published (returned publishes), errors per type (each failed publish's, then the
    consumer's as ``consumer <name>``), duplicates (deliveries beyond an event's first),
    ``publish_calls`` and ``max_call_seconds``. Returns the numbers of returned publishes
    not in ``stored`` (``{(partition, offset): n}``, read back from the topic) at their
    position; the caller sets ``fig.lost`` (it may add losses of its own). Without a
    consumer (a publish-only test) the consumer figures are left alone."""
    attempts = publisher.attempts
    returned = [a for a in attempts if a.error is None]
    fig.published = len(returned)
    fig.extra["publish_calls"] = len(attempts)
    for a in attempts:
        if a.error is not None:
            fig.error(a.error)
    if consumer is not None:
        for name, count in consumer.errors.items():
            fig.errors[f"consumer {name}"] = count
        fig.duplicates = len(consumer.seen) - len(set(consumer.seen))
    fig.extra["max_call_seconds"] = round(max(a.seconds for a in attempts), 3)
    return [
        a.n
        for a in returned
        if a.position is None or stored.get((a.position.partition, str(a.position.offset))) != a.n
    ]
