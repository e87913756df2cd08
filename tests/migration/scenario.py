"""The end-to-end migration scenario, shared by the memory and the real-server tests.

Three producer threads publish keyed events continuously through ``migrate://`` while a
consumer group of two members handles them, and an operator (the :class:`Migration` API) moves
the topic through every stage to ``target-only``. The two members are threads of this process
(:class:`ThreadWorkers`, for ``memory://``, which one process owns) or two worker processes
(:class:`ProcessWorkers`, ``tests/migration/worker_app.py``, for real servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

import eventbus
from eventbus.migration import Migration
from eventbus.migration.transport import journal_backlog
from eventbus.sync import Runner
from eventbus.testing.conformance import wait_until
from tests.migration.procs import Children, migrate_url, read_lines

__all__ = ["Handled", "Tally", "check", "migrate_url", "operate", "run_scenario"]

ROOT = Path(__file__).resolve().parents[2]
HISTORY = 30


@dataclass(frozen=True)
class Handled:
    """One handled event: which, by whom, when (``time.monotonic_ns()`` at handler start)."""

    id: str
    key: str
    seq: int
    worker: str
    at: int


@dataclass
class Tally:
    published: list[str] = field(default_factory=list)
    handled: list[Handled] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)
    slowest: float = 0.0
    """The longest a publish call took (seconds)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Workers(Protocol):
    """The consumer group: two members handling the topic through ``migrate://``."""

    def start(self) -> None: ...
    def handled(self) -> list[Handled]: ...
    def stop(self) -> None: ...
    def __enter__(self) -> Workers: ...
    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ThreadWorkers:
    """Two runners on threads of this process, each with its own connection."""

    def __init__(self, url: str, topic: str, group: str) -> None:
        self.url, self.topic, self.group = url, topic, group
        self._handled: list[Handled] = []
        self._lock = threading.Lock()
        self._buses: list[eventbus.EventBus] = []
        self._runners: list[Runner] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(2):
            bus = eventbus.connect(self.url)
            self._buses.append(bus)
            name = f"w{i}"

            def handle(d: eventbus.Delivery, name: str = name) -> None:
                at = time.monotonic_ns()
                entry = Handled(d.event.id, d.event.key or "-", d.event.data["seq"], name, at)
                with self._lock:
                    self._handled.append(entry)

            runner = bus.runner(
                handle, self.topic, group=self.group, consumer=name, session_timeout=6.0
            )
            self._runners.append(runner)
            thread = threading.Thread(target=runner.run, daemon=True)
            self._threads.append(thread)
            thread.start()

    def handled(self) -> list[Handled]:
        with self._lock:
            return list(self._handled)

    def stop(self) -> None:
        for runner in self._runners:
            runner.stop()
        for thread in self._threads:
            thread.join(30)
        for bus in self._buses:
            bus.close()
        self._runners, self._threads, self._buses = [], [], []

    def __enter__(self) -> ThreadWorkers:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ProcessWorkers:
    """Two worker processes (``python -m tests.migration.worker_app``), each logging what it
    handled to its own file; SIGTERM stops them gracefully, and they are killed if a test
    fails before that."""

    def __init__(
        self,
        url: str,
        topic: str | list[str],
        group: str,
        folder: Path,
        names: tuple[str, ...] = ("w0", "w1"),
        extra: tuple[str, ...] = (),
    ) -> None:
        self.url, self.group, self.folder = url, group, folder
        self.topics = [topic] if isinstance(topic, str) else topic
        self.children = Children(folder)
        self.names = list(names)
        self.extra = list(extra)
        """More arguments for worker_app (``--start latest``, ...)."""

    def _out(self, name: str) -> Path:
        return self.folder / f"{name}.out"

    def start(self) -> None:
        for name in self.names:
            topics = [a for t in self.topics for a in ("--topic", t)]
            argv = [sys.executable, "-m", "tests.migration.worker_app", "--url", self.url,
                    *topics, "--group", self.group, "--name", name,
                    "--out", str(self._out(name)), *self.extra]  # fmt: skip
            self.children.start(name, argv, cwd=ROOT)
        for name in self.names:
            proc = self.children.procs[name]

            def ready(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
                lines = read_lines(self._out(name))
                return proc.poll() is not None or any(x.startswith("READY") for x in lines)

            wait_until(ready, 60, f"worker {name} to start")
            assert proc.poll() is None, self.children.log(name)

    def handled(self) -> list[Handled]:
        out: list[Handled] = []
        for name in self.names:
            for text in read_lines(self._out(name)):
                parts = text.split()
                if len(parts) == 6 and parts[0] == "H":
                    _, eid, key, seq, pid, at = parts
                    out.append(Handled(eid, key, int(seq), f"{name}/{pid}", int(at)))
        return out

    def stop(self) -> None:
        for name in self.names:
            self.children.signal(name, signal.SIGTERM)
        for name in self.names:
            code = self.children.wait(name, 60)
            assert code == 0, f"worker {name} exited with {code}:\n{self.children.log(name)}"

    def __enter__(self) -> ProcessWorkers:
        self.children.__enter__()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.children.__exit__(t, e, tb)


async def operate(
    name: str,
    topic: str,
    group: str,
    source_url: str,
    target_url: str,
    traffic: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """The operator's runbook, step by step, while services keep running. ``traffic`` is
    awaited after each step (to let services publish in every stage)."""

    async def then() -> None:
        if traffic is not None:
            await traffic()

    migration = await Migration.open(name, source_url, target_url)
    try:
        await migration.init([topic])
        await then()
        await migration.advance(topic)  # dual-source-primary
        await then()
        await migration.backfill(topic)
        await then()
        await wait_for_empty_journal(migration, topic)  # runbook step 5: backlog 0 first
        report = await migration.verify(topic)
        assert report.ok, report.summary()
        await migration.advance(topic)  # dual-target-primary
        await then()
        await migration.cutover(group, topic)
        await then()
        await migration.advance(topic)  # target-only
        await then()
    finally:
        await migration.close()


async def wait_for_empty_journal(migration: Migration, topic: str, timeout: float = 60) -> None:
    """Wait until the journal backlog of ``topic`` (as ``status`` shows it) is 0."""
    deadline = time.monotonic() + timeout

    async def backlog() -> int:
        stage = (await migration.control.require()).topics[topic].stage
        primary = migration.target if stage == "dual-target-primary" else migration.source
        return await journal_backlog(migration.name, topic, primary)

    while await backlog():
        assert time.monotonic() < deadline, f"the journal of {topic} did not drain"
        await asyncio.sleep(0.1)  # allowed: polling interval of a condition wait


@contextlib.contextmanager
def producing(
    url: str,
    topic: str,
    tally: Tally,
    count: int = 3,
    prefix: str = "",
    keys: Callable[[int, int], str] | None = None,
    first_seq: int = 0,
) -> Iterator[None]:
    """``count`` producer threads publishing keyed events (keys start with ``prefix``, or
    ``keys(producer, seq)``), ``seq`` counting from ``first_seq``, through ``url`` until the
    block ends; every returned publish is recorded, every failure too."""
    stop = threading.Event()

    def produce(n: int) -> None:
        with eventbus.connect(url) as bus:
            seq = first_seq
            while not stop.is_set():
                key = keys(n, seq) if keys is not None else f"{prefix}p{n}-k{seq % 4}"
                ev = eventbus.Event(data={"seq": seq}, key=key)
                began = time.monotonic()
                try:
                    bus.publish(topic, ev)
                except eventbus.errors.EventBusError as exc:
                    with tally.lock:
                        tally.publish_errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with tally.lock:
                    tally.published.append(ev.id)
                    tally.slowest = max(tally.slowest, time.monotonic() - began)
                seq += 1
                time.sleep(0.005)  # allowed: a producer's pace, not a wait for a condition

    threads = [threading.Thread(target=produce, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def run_scenario(
    source_url: str,
    target_url: str,
    *,
    processes: Path | None = None,
    partitions: int = 3,
    deadline: float = 90,
) -> Tally:
    """Producers and a two-member group keep running on migrate:// while an operator moves
    the topic through every stage to target-only. With ``processes`` (a folder for their
    logs) the members are worker processes, else threads. Returns what was published and
    handled."""
    name = f"m{uuid.uuid4().hex[:6]}"
    topic = f"orders-{uuid.uuid4().hex[:6]}"
    group = f"workers-{uuid.uuid4().hex[:6]}"
    url = migrate_url(name, source_url, target_url)
    tally = Tally()

    with eventbus.connect(source_url) as admin:
        admin.create_topic(topic, partitions=partitions)
        # history written before the migration starts
        admin.publish_many(
            topic, [eventbus.Event(data={"seq": i}, key="history") for i in range(HISTORY)]
        )
        history = [r.event.id for r in admin.replay(topic)]

    workers: Workers = (
        ProcessWorkers(url, topic, group, processes)
        if processes is not None
        else ThreadWorkers(url, topic, group)
    )
    with workers:
        workers.start()

        async def traffic(more: int = 200) -> None:
            """Wait until the producers have published ``more`` events since the call."""
            goal = len(tally.published) + more
            limit = time.monotonic() + 30
            while len(tally.published) < goal:
                assert time.monotonic() < limit, "the producers stopped publishing"
                await asyncio.sleep(0.02)  # allowed: polling interval of a condition wait

        with producing(url, topic, tally):
            job = operate(name, topic, group, source_url, target_url, traffic)
            asyncio.run(asyncio.wait_for(job, deadline))
        expected = set(history) | set(tally.published)
        wait_until(
            lambda: {h.id for h in workers.handled()} >= expected, deadline, "every event handled"
        )
        workers.stop()
        tally.handled = workers.handled()
    tally.published = history + tally.published
    return tally


def check(tally: Tally) -> None:
    """None lost, none handled twice, per-key order held, no publish failed."""
    assert not tally.publish_errors, tally.publish_errors[:5]
    counts = Counter(h.id for h in tally.handled)
    twice = [i for i, n in counts.items() if n > 1]
    lost = set(tally.published) - set(counts)
    assert not lost, f"{len(lost)} events lost"
    assert not twice, f"{len(twice)} events handled twice: {twice[:5]}"
    by_key: dict[str, list[Handled]] = defaultdict(list)
    for h in tally.handled:
        by_key[h.key].append(h)
    out_of_order = []
    for key, entries in by_key.items():
        seqs = [h.seq for h in sorted(entries, key=lambda h: h.at)]
        if seqs != sorted(seqs):
            out_of_order.append(f"{key}: {seqs}")
    assert not out_of_order, out_of_order[:5]
