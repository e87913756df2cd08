"""Slow handlers at default settings: how many events are handled more than once?

``python -m benchmarks.leases URL [URL ...] [--events 200] [--seconds 1.0] [--members 1]
[--concurrency 4] [--partitions 1] [--json out.json]``

For each URL: create a topic, publish ``--events`` events, start ``--members`` runner
processes of one group (every runner setting at its default except ``concurrency``), each
handler sleeping ``--seconds`` (an LLM call's stand-in). Once every event was handled, it waits
one more default visibility timeout (30 s) plus 5 s for late duplicates, stops the members
gracefully and prints, per transport: handled, distinct, handled more than once, wall time.

This is the measurement of issue #17 (not a test: it takes minutes). No failure is injected,
so every duplicate is spurious.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import eventbus

VISIBILITY_DEFAULT = 30.0


def _member(url: str, topic: str, group: str, log_path: str, stop_path: str, seconds: float,
            concurrency: int) -> None:  # fmt: skip
    """One member process: a runner at default settings appending each handled id to a file."""
    name = f"m-{os.getpid()}"

    def handle(delivery: Any) -> None:
        time.sleep(seconds)  # the slow handler under test
        with open(log_path, "a", encoding="utf-8") as out:
            out.write(f"{name} {delivery.event.data}\n")

    with eventbus.connect(url) as bus:
        runner = bus.runner(handle, topic, group=group, concurrency=concurrency)

        def watch() -> None:
            while not os.path.exists(stop_path):
                time.sleep(0.2)  # polls for the stop file
            runner.stop()

        threading.Thread(target=watch, daemon=True).start()
        runner.run()


def measure(url: str, events: int, seconds: float, members: int, concurrency: int,
            partitions: int) -> dict[str, Any]:  # fmt: skip
    topic = f"lease-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="eventbus-leases-"))
    log_path, stop_path = work / "handled.log", work / "stop"
    log_path.touch()
    with eventbus.connect(url) as bus:
        bus.create_topic(topic, partitions=partitions)
        bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i}") for i in range(events)])
    args = (url, topic, group, str(log_path), str(stop_path), seconds, concurrency)
    # memory:// is one broker per process: its members are threads of this one
    procs: list[Any] = [
        threading.Thread(target=_member, args=args)
        if url.startswith("memory")
        else multiprocessing.get_context("spawn").Process(target=_member, args=args)
        for _ in range(members)
    ]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    deadline = started + events * seconds * 2 / max(1, concurrency) + 600
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = log_path.read_text().splitlines()
        if len({line.split()[1] for line in lines}) >= events:
            break
        time.sleep(0.5)  # polls the log file
    done = time.monotonic() - started
    late_until = time.monotonic() + VISIBILITY_DEFAULT + 5
    while time.monotonic() < late_until:
        time.sleep(0.5)  # waits out the window in which a duplicate would appear
    stop_path.touch()
    for proc in procs:
        proc.join(120)
        if proc.is_alive() and isinstance(proc, multiprocessing.process.BaseProcess):
            proc.kill()
    lines = log_path.read_text().splitlines()
    counts = Counter(line.split()[1] for line in lines)
    with eventbus.connect(url) as bus:
        for name in (topic, f"{topic}.dlq"):
            if name in bus.list_topics():
                bus.delete_topic(name)
    return {
        "transport": url.split(":", 1)[0],
        "events": events,
        "handler_s": seconds,
        "members": members,
        "concurrency": concurrency,
        "partitions": partitions,
        "handled": len(lines),
        "distinct": len(counts),
        "more_than_once": sum(1 for n in counts.values() if n > 1),
        "seconds_to_handle_all": round(done, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for url in args.urls:
        row = measure(
            url, args.events, args.seconds, args.members, args.concurrency, args.partitions
        )
        rows.append(row)
        print(
            f"{row['transport']:8} events={row['events']} handler={row['handler_s']}s "
            f"members={row['members']} concurrency={row['concurrency']} "
            f"partitions={row['partitions']}: handled {row['handled']}, distinct "
            f"{row['distinct']}, more than once {row['more_than_once']} "
            f"({row['seconds_to_handle_all']} s)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any(r["more_than_once"] or r["distinct"] < r["events"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
