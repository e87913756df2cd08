"""End-to-end latency at a steady rate, and peak RSS while draining a backlog (child process).

Latency: a publisher sends ``rate`` events/s (async ``bus.publish``, not awaited one by one,
each carrying ``time.time()`` at send), a runner on a second bus handles them; the handler
records ``now - sent``. The first second is a warm-up and not counted.

Drain: ``python -m benchmarks.latency drain URL TOPIC COUNT`` runs in a fresh interpreter,
drains COUNT events through the runner and prints its peak RSS (``VmHWM``) as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import eventbus
from benchmarks.harness import Env, Metric, chunks, judge_value, keys, payload


async def _latency(url: str, topic: str, rate: int, seconds: float) -> list[float]:
    ks = keys()
    samples: list[float] = []
    total = int(rate * (seconds + 1))
    async with eventbus.connect_async(url) as pub, eventbus.connect_async(url) as sub:
        await pub.create_topic(topic, partitions=1)
        try:
            handled = 0
            done = asyncio.Event()

            async def handler(d: eventbus.AsyncDelivery) -> None:
                nonlocal handled
                sent = d.event.data["t"]
                handled += 1
                if d.event.data["i"] >= rate:  # after the first second
                    samples.append((time.time() - sent) * 1000)
                if handled >= total:
                    done.set()

            runner = sub.runner(handler, topic, group="latency", start="latest", batch_size=100)
            task = asyncio.create_task(runner.run())
            while not runner.started.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # let the member own its partitions before sending
            pending: set[asyncio.Task[Any]] = set()
            start = time.monotonic()
            for i in range(total):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = asyncio.create_task(
                    pub.publish(topic, {"t": time.time(), "i": i}, key=ks[i % len(ks)])
                )
                pending.add(t)
                t.add_done_callback(pending.discard)
            await asyncio.wait_for(done.wait(), 30)
            runner.stop()
            await task
        finally:
            await pub.delete_topic(topic)
    return samples


def latency_metric(env: Env, transport: str, url: str) -> Metric:
    seconds = 5.0 if env.quick else 20.0
    title = f"end-to-end latency at 1,000 events/s, {transport} ({seconds:.0f} s)"
    try:
        samples = env.run(_latency(url, env.name("lat"), 1000, seconds))
    except Exception as exc:  # report, do not abort the whole run
        return Metric(f"{transport}.latency", title, {}, "ms", error=repr(exc))
    samples.sort()

    def q(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))]

    return Metric(
        f"{transport}.latency",
        title,
        {"p50 ms": q(0.5), "p99 ms": q(0.99), "max ms": samples[-1]},
        "ms",
        note="publisher and runner in one process, async API, runner batch_size=100",
    )


def drain_metric(env: Env, transport: str, url: str) -> Metric:
    count = env.count(100_000, 1_000_000)
    title = f"peak RSS draining {count:,} events through the runner, {transport}"
    topic = env.name("drain")
    data, ks = payload(100), keys()
    try:
        with eventbus.connect(url) as bus:
            bus.create_topic(topic, partitions=1 if transport == "redis" else 3)
            try:
                for lo, hi in chunks(count, 5000):
                    bus.publish_many(
                        topic, [eventbus.Event(data=data, key=ks[i % 64]) for i in range(lo, hi)]
                    )
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.latency", "drain", url, topic, str(count)],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=1800,
                    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                )
            finally:
                bus.delete_topic(topic)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as exc:  # report, do not abort the whole run
        detail = getattr(exc, "stderr", "") or ""
        return Metric(f"{transport}.drain_rss", title, {}, "MB", error=f"{exc!r} {detail[-500:]}")
    values = {
        "peak RSS MB": result["peak_rss_kb"] / 1024,
        "RSS before MB": result["rss_before_kb"] / 1024,
        "events/s": result["handled"] / result["seconds"],
    }
    target = None
    if count >= 1_000_000:
        target = judge_value("1M drain < 200 MB RSS", values["peak RSS MB"], 200, transport)
    else:
        target = judge_value(
            f"{count:,} drain < 200 MB RSS (1M in full mode)", values["peak RSS MB"], 200, transport
        )
    return Metric(
        f"{transport}.drain_rss",
        title,
        values,
        "MB",
        target=target,
        note="child process; 100-byte events, runner batch_size=1000, no-op async handler",
    )


def _status_kb(field: str) -> int:
    """A /proc/self/status field in KiB. VmHWM is this process's peak RSS; ru_maxrss is not
    used because Linux carries the parent's peak over fork+exec into the child's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def _drain(url: str, topic: str, count: int) -> dict[str, float]:
    from benchmarks.redis_cases import drain_with_runner

    async with eventbus.connect_async(url) as bus:
        before = _status_kb("VmRSS")
        start = time.perf_counter()
        await drain_with_runner(bus, topic, "drain", count)
        seconds = time.perf_counter() - start
    return {
        "rss_before_kb": before,
        "peak_rss_kb": _status_kb("VmHWM"),
        "handled": count,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    sub = parser.add_subparsers(dest="command", required=True)
    drain = sub.add_parser("drain", help="drain a topic through the runner; print peak RSS")
    drain.add_argument("url")
    drain.add_argument("topic")
    drain.add_argument("count", type=int)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_drain(args.url, args.topic, args.count))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
