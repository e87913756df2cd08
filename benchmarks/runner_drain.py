"""Runner drain on its own: ``python benchmarks/runner_drain.py URL [--events N] [--keys K]``.

Fills a fresh one-partition topic with ``--events`` small events (keyless, or over ``--keys``
keys), then times a runner (``batch_size=1000``, a no-op async handler) draining it, and prints
events per second. It is the runner row of ``benchmarks.run`` without the harness, small enough
to run against an older checkout of eventbus for a before/after comparison::

    git worktree add /tmp/before <commit>
    cd /tmp && PYTHONPATH=/tmp/before python /path/to/eventbus/benchmarks/runner_drain.py URL
    cd /tmp && PYTHONPATH=/path/to/eventbus python /path/to/eventbus/benchmarks/runner_drain.py URL

(run by path from a folder that holds neither checkout, so that ``PYTHONPATH`` decides which
``eventbus`` is imported; the script prints the path it imported).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import eventbus


async def drain(url: str, events: int, keys: int = 0) -> float:
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    if url == "memory://":
        url = f"memory://{topic}"  # a broker of its own
    async with eventbus.connect_async(url) as bus:
        await bus.create_topic(topic, partitions=1)
        for start in range(0, events, 1000):
            size = min(1000, events - start)
            await bus.publish_many(
                topic,
                [
                    eventbus.Event(data=i, key=f"k{(start + i) % keys}" if keys else None)
                    for i in range(size)
                ],
            )
        done = asyncio.Event()
        handled = 0

        async def handle(_: Any) -> None:
            nonlocal handled
            handled += 1
            if handled >= events:
                done.set()

        runner = bus.runner(handle, topic, group="drain", batch_size=1000)
        task = asyncio.create_task(runner.run())
        started = time.perf_counter()
        await done.wait()
        took = time.perf_counter() - started
        runner.stop()
        await task
        await bus.delete_topic(topic)
        return events / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=0, help="spread events over K keys")
    args = parser.parse_args()
    rate = asyncio.run(drain(args.url, args.events, args.keys))
    print(f"{eventbus.__file__}: {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
