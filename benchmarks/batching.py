"""Benchmark: budgeted batches vs a naive fixed-count reader, 4 workers.

    python benchmarks/batching.py [URL ...] [--items 4000] [--budget 4096] [--workers 4]

For each URL (default ``memory://``; Redis URLs run twice: core batcher and the server-side
fast path) it publishes ``--items`` events with token counts drawn from 1..512 (header
``tokens``) on 8 partitions, then ``--workers`` workers (each its own bus connection) consume
them all and ack each batch. Printed per mode: batches per second, budget fill ratio (mean
batch weight / budget), and the share of batches over the budget, timed from the first batch to
the last (group joins excluded; the budgeted modes' last partial batch waits one max_wait).
The naive reader takes a fixed count per batch (budget / mean weight), so its mean is near the
budget but many batches overflow it. Not collected by pytest (no ``test_`` name).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import eventbus
from eventbus.batching import subscribe_batches

MEAN_TOKENS = 256.5


@dataclass
class Result:
    mode: str
    batches: int = 0
    items: int = 0
    seconds: float = 0.0
    weights: list[float] = field(default_factory=list)
    first: float | None = None
    last: float = 0.0

    def note(self, items: int, weight: float) -> None:
        """One batch acked: timed from the first batch (group joins excluded) to the last."""
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.last = now
        self.batches += 1
        self.items += items
        self.weights.append(weight)

    def row(self, budget: float) -> str:
        fill = statistics.fmean(self.weights) / budget if self.weights else 0.0
        over = sum(1 for w in self.weights if w > budget) / max(1, len(self.weights))
        rate = self.batches / self.seconds if self.seconds else 0.0
        return (
            f"{self.mode:<28} {rate:>10.1f} {fill:>8.3f} {over:>8.1%} "
            f"{self.items / max(1, self.batches):>8.1f} {self.seconds:>7.2f}"
        )


async def publish(url: str, topic: str, items: int, seed: int) -> None:
    rng = random.Random(seed)
    async with eventbus.connect_async(url) as bus:
        await bus.create_topic(topic, partitions=8)
        events = [
            eventbus.Event(
                data={"i": i, "prompt": "x" * 32},
                key=f"user-{rng.randrange(200)}",
                headers={"tokens": str(rng.randint(1, 512))},
            )
            for i in range(items)
        ]
        for start in range(0, items, 500):
            await bus.publish_many(topic, events[start : start + 500])


async def budgeted_worker(
    url: str, topic: str, group: str, budget: float, fast: bool | None, res: Result, total: int
) -> None:
    async with eventbus.connect_async(url) as bus:
        sub = await subscribe_batches(
            bus, topic, group=group, budget=budget, weight="tokens", max_wait=0.2, fast_path=fast
        )
        async with sub:
            while res.items < total:
                batch = await sub.fetch()
                if batch is None:
                    continue
                await batch.ack()
                res.note(len(batch), batch.weight)


async def naive_worker(
    url: str, topic: str, group: str, count: int, res: Result, total: int
) -> None:
    async with eventbus.connect_async(url) as bus, await bus.subscribe(topic, group=group) as sub:
        while res.items < total:
            got = await sub.fetch(count, timeout=0.2)
            if not got:
                continue
            await sub.consumer.ack([d.record for d in got])
            res.note(len(got), sum(float(d.record.headers["tokens"]) for d in got))


async def run(url: str, mode: str, args: argparse.Namespace) -> Result:
    topic = f"bench-batch-{uuid.uuid4().hex[:8]}"
    await publish(url, topic, args.items, seed=7)
    res = Result(mode)
    group = f"g-{uuid.uuid4().hex[:8]}"
    count = max(1, round(args.budget / MEAN_TOKENS))
    workers: list[Coroutine[Any, Any, None]] = []
    for _ in range(args.workers):
        if mode.startswith("naive"):
            workers.append(naive_worker(url, topic, group, count, res, args.items))
        else:
            fast = "fast" in mode
            workers.append(budgeted_worker(url, topic, group, args.budget, fast, res, args.items))
    await asyncio.gather(*workers)
    res.seconds = res.last - (res.first or res.last)
    async with eventbus.connect_async(url) as bus:
        await bus.delete_topic(topic)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="*", default=["memory://"])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--budget", type=float, default=4096.0)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    print(
        f"{args.workers} workers, {args.items} items, tokens 1..512, budget {args.budget:g}, "
        f"naive count {max(1, round(args.budget / MEAN_TOKENS))}"
    )
    print(f"{'transport / mode':<28} {'batches/s':>10} {'fill':>8} {'over':>8} {'items/b':>8} "
          f"{'secs':>7}")  # fmt: skip
    for url in args.urls:
        scheme = url.split(":", 1)[0]
        modes = ["budgeted (core)", "naive fixed count"]
        if scheme.startswith("redis"):
            modes.insert(1, "budgeted (fast path)")
        for mode in modes:
            res = asyncio.run(run(url, mode, args))
            print(f"{scheme + ' ' + mode:<28}"[:28] + res.row(args.budget)[28:])


if __name__ == "__main__":
    main()
