"""Where the Kafka end-to-end latency goes: per-stage timestamps at a steady rate.

``python -m benchmarks.kafka_trace KAFKA_URL [--rate 1000] [--seconds 5] [--raw]
[--option key=value ...] [--batch-size 100] [--fetch-loop]``

The eventbus side publishes ``rate`` events/s (async ``bus.publish`` as tasks, like the latency
row) and a runner on a second bus handles them. Every event is stamped (``time.time()``, one
clock for all threads of the process) at:

1. ``publish``: the ``bus.publish`` call (carried in the event's data);
2. ``produced``: librdkafka's ``produce`` returned for the call holding it;
3. ``delivered``: its delivery report ran (producer poll thread);
4. ``appended``: the broker's append time (the topic uses ``LogAppendTime``; 1 ms resolution);
5. ``polled``: the consumer thread's ``poll``/``consume`` returned it (``to_record``);
6. ``fetched``: the blocking part of ``fetch`` returned on the consumer thread;
7. ``on loop``: ``fetch`` resumed on the event loop;
8. ``handler``: the runner started the handler (or ``--fetch-loop``: a plain
   ``sub.fetch`` loop without the runner received it).

The stamps come from wrappers installed on eventbus's Kafka classes in this process only (a
diagnostic, not a benchmark row). ``--raw`` traces a raw confluent-kafka producer (paced
``produce`` + ``poll(0)``, the settings eventbus uses) and a raw consumer polling in a thread,
with the same stamps where they exist. ``--option`` passes librdkafka settings through the URL
(both clients), e.g. ``--option linger.ms=0 --option fetch.wait.max.ms=10``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import threading
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import eventbus

STAGES = ["publish", "produced", "appended", "polled", "fetched", "on loop", "handler"]
"""The chain of one event; ``delivered`` (the producer's report) is a branch after ``produced``."""


def _bootstrap(url: str) -> str:
    return url.removeprefix("kafka://").split("?", 1)[0]


def _create_topic(url: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": _bootstrap(url)})
    cfg = {"message.timestamp.type": "LogAppendTime"}
    admin.create_topics([NewTopic(topic, 1, 1, config=cfg)])[topic].result(30)
    time.sleep(0.5)  # metadata propagation


def _delete_topic(url: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": _bootstrap(url)})
    admin.delete_topics([topic])[topic].result(30)


def _with_options(url: str, options: list[str]) -> str:
    if not options:
        return url
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(o.replace(".", "_", o.index("=")) for o in options)


class _Stamps:
    """Per-event stage times: by event number (producer side) and by offset (consumer side)."""

    def __init__(self) -> None:
        self.by_i: dict[int, dict[str, float]] = defaultdict(dict)
        self.by_offset: dict[int, dict[str, float]] = defaultdict(dict)
        self.offset_of: dict[int, int] = {}
        self.publish_sizes: list[int] = []
        self.fetch_sizes: list[int] = []
        self.fetch_called: dict[int, float] = {}
        self.fetch_queued: list[float] = []
        """Per fetch: ms from the call on the loop to its job starting on the member thread."""
        self.commit_ms: list[float] = []
        """Per commit job after acks: ms the member thread spent in it."""
        self.lock = threading.Lock()


def _install(stamps: _Stamps, async_ack_commit: bool = False) -> list[tuple[Any, str, Any]]:
    """Wrap eventbus's Kafka producer and consumer to record stage times; returns undo info."""
    from eventbus.adapters.kafka import _producer

    undo: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, new: Any) -> None:
        undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    produce_all = _producer.PolledProducer._produce_all

    async def traced_produce_all(self: Any, topic: str, records: Any, *rest: Any) -> None:
        await produce_all(self, topic, records, *rest)
        now = time.time()
        stamps.publish_sizes.append(len(records))
        for r in records:
            stamps.by_i[json.loads(r.value)["i"]]["produced"] = now

    delivered = _producer._Batch.delivered

    def traced_delivered(self: Any, index: int, err: Any, msg: Any) -> None:
        stamps.by_i[json.loads(msg.value())["i"]]["delivered"] = time.time()
        delivered(self, index, err, msg)

    patch(_producer.PolledProducer, "_produce_all", traced_produce_all)
    patch(_producer._Batch, "delivered", traced_delivered)
    return undo + _install_consumer(stamps, async_ack_commit)


def _install_consumer(stamps: _Stamps, async_ack_commit: bool) -> list[tuple[Any, str, Any]]:
    from eventbus.adapters.kafka import _consumer

    undo: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, new: Any) -> None:
        undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    to_record = _consumer.to_record

    def traced_to_record(msg: Any, *rest: Any) -> Any:
        stage = stamps.by_offset[msg.offset()]
        stage["polled"] = time.time()
        stage["appended"] = msg.timestamp()[1] / 1000
        return to_record(msg, *rest)

    fetch_blocking = _consumer.KafkaConsumer._fetch_blocking

    def traced_fetch_blocking(self: Any, *args: Any) -> Any:
        called = stamps.fetch_called.pop(id(self), None)
        if called is not None:
            stamps.fetch_queued.append((time.time() - called) * 1000)
        out = fetch_blocking(self, *args)
        now = time.time()
        for r in out:
            stamps.by_offset[r.offset]["fetched"] = now
        return out

    fetch = _consumer.KafkaConsumer.fetch

    async def traced_fetch(self: Any, *args: Any) -> Any:
        stamps.fetch_called[id(self)] = time.time()
        out = await fetch(self, *args)
        now = time.time()
        if out:
            stamps.fetch_sizes.append(len(out))
        for r in out:
            stamps.by_offset[r.offset]["on loop"] = now
        return out

    commit_acked = _consumer.KafkaConsumer._commit_acked

    def traced_commit_acked(self: Any) -> None:
        start = time.perf_counter()
        if async_ack_commit:  # the proposed change, tried here only: no wait for the broker
            with self._lock:
                self._commit_queued = False
            if self._consumer is not None and not self._killed:
                self._commit(list(self._parts), asynchronous=True)
        else:
            commit_acked(self)
        stamps.commit_ms.append((time.perf_counter() - start) * 1000)

    patch(_consumer.KafkaConsumer, "_commit_acked", traced_commit_acked)
    patch(_consumer, "to_record", traced_to_record)
    patch(_consumer.KafkaConsumer, "_fetch_blocking", traced_fetch_blocking)
    patch(_consumer.KafkaConsumer, "fetch", traced_fetch)
    return undo


async def trace_eventbus(
    url: str, rate: int, seconds: float, batch_size: int, fetch_loop: bool, async_ack_commit: bool
) -> _Stamps:
    stamps = _Stamps()
    topic = f"ebtrace-{time.time_ns() % 10**9}"
    _create_topic(url, topic)
    undo = _install(stamps, async_ack_commit)
    total = int(rate * (seconds + 1))
    try:
        async with eventbus.connect_async(url) as pub, eventbus.connect_async(url) as sub:
            done = asyncio.Event()
            handled = 0

            def seen(data: Any, offset: int) -> None:
                nonlocal handled
                stamps.by_offset[offset]["handler"] = time.time()
                i = data["i"]
                stamps.by_i[i]["publish"] = data["t"]
                stamps.offset_of[i] = offset
                handled += 1
                if handled >= total:
                    done.set()

            async def handler(d: eventbus.AsyncDelivery) -> None:
                seen(d.event.data, int(d.position.offset))

            consume: asyncio.Task[Any]
            if fetch_loop:
                subscription = await sub.subscribe(
                    topic, group="trace", start="latest", batch_size=batch_size
                )

                async def loop() -> None:
                    while not done.is_set():
                        for d in await subscription.fetch(batch_size, timeout=0.25):
                            seen(d.event.data, int(d.position.offset))
                        # acks are not part of the path being traced

                consume = asyncio.create_task(loop())
            else:
                runner = sub.runner(
                    handler, topic, group="trace", start="latest", batch_size=batch_size
                )
                consume = asyncio.create_task(runner.run())
                while not runner.started.is_set():
                    await asyncio.sleep(0.01)
            await asyncio.sleep(2.0)  # the member owns its partition before the first send
            await _pace(rate, total, lambda i: pub.publish(topic, {"t": time.time(), "i": i}))
            await asyncio.wait_for(done.wait(), 30)
            if fetch_loop:
                await consume
                await subscription.close()
            else:
                runner.stop()
                await consume
    finally:
        for owner, name, old in undo:
            setattr(owner, name, old)
        _delete_topic(url, topic)
    return stamps


async def _pace(rate: int, total: int, publish: Any) -> None:
    pending: set[asyncio.Task[Any]] = set()
    start = time.monotonic()
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(publish(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)


def trace_raw(url: str, rate: int, seconds: float, options: list[str]) -> _Stamps:
    """Raw producer (paced produce + poll(0)) and a raw consumer thread polling."""
    stamps = _Stamps()
    topic = f"ebtrace-raw-{time.time_ns() % 10**9}"
    _create_topic(url, topic)
    extra = dict(o.split("=", 1) for o in options)
    producer = Producer(
        {
            "bootstrap.servers": _bootstrap(url),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "compression.type": "none",
            **{k: v for k, v in extra.items() if not k.startswith("fetch")},
        }
    )
    consumer = Consumer(
        {
            "bootstrap.servers": _bootstrap(url),
            "group.id": "trace",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
            **{k: v for k, v in extra.items() if k.startswith("fetch")},
        }
    )
    total = int(rate * (seconds + 1))
    assigned = threading.Event()
    stop = threading.Event()

    def consume() -> None:
        consumer.subscribe([topic], on_assign=lambda c, ps: assigned.set())
        seen = 0
        while seen < total and not stop.is_set():
            msg = consumer.poll(0.25)
            if msg is None or msg.error() is not None:
                continue
            now = time.time()
            i = json.loads(msg.value())["i"]
            stage = stamps.by_offset[msg.offset()]
            stage["polled"] = stage["handler"] = now
            stage["appended"] = msg.timestamp()[1] / 1000
            stamps.offset_of[i] = msg.offset()
            seen += 1
            consumer.commit(asynchronous=True)  # as a service would, per message

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        assigned.wait(30)
        time.sleep(2.0)

        def report(err: Any, msg: Any) -> None:
            stamps.by_i[json.loads(msg.value())["i"]]["delivered"] = time.time()

        start = time.monotonic()
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            value = json.dumps({"t": now, "i": i}).encode()
            producer.produce(topic, value, key=f"agent-{i % 64}", on_delivery=report)
            stamps.by_i[i]["produced"] = time.time()
            producer.poll(0)
        producer.flush(30)
        thread.join(30)
    finally:
        stop.set()
        thread.join(5)
        consumer.close()
        _delete_topic(url, topic)
    for i in range(total):  # the raw side's publish time is its produce call
        stamps.by_i[i]["publish"] = stamps.by_i[i].get("produced", 0.0)
    return stamps


def summarize(stamps: _Stamps, rate: int, total_publish: dict[int, float]) -> dict[str, Any]:
    """p50/p99/max per stage gap (ms) over events after the first second."""
    rows: dict[str, list[float]] = defaultdict(list)
    for i, offset in stamps.offset_of.items():
        if i < rate:
            continue
        stage = {**stamps.by_i.get(i, {}), **stamps.by_offset.get(offset, {})}
        stage["publish"] = total_publish.get(i, stage.get("publish", 0.0))
        present = [s for s in STAGES if s in stage]
        for a, b in itertools.pairwise(present):
            rows[f"{a} -> {b}"].append((stage[b] - stage[a]) * 1000)
        if "delivered" in stage:
            rows["(branch) produced -> delivered"].append(
                (stage["delivered"] - stage["produced"]) * 1000
            )
        rows["end to end"].append((stage["handler"] - stage["publish"]) * 1000)
    if stamps.fetch_queued:
        rows["(per fetch) queued behind other jobs"] = list(stamps.fetch_queued)
    if stamps.commit_ms:
        rows["(per ack commit job) duration"] = list(stamps.commit_ms)
    out: dict[str, Any] = {}
    for name, values in rows.items():
        values.sort()
        out[name] = {
            "p50": values[len(values) // 2],
            "p99": values[min(len(values) - 1, int(0.99 * len(values)))],
            "max": values[-1],
            "mean": statistics.fmean(values),
        }
    if stamps.publish_sizes:
        out["records per transport.publish (mean)"] = statistics.fmean(stamps.publish_sizes)
    if stamps.fetch_sizes:
        out["records per fetch (mean)"] = statistics.fmean(stamps.fetch_sizes)
    return out


def _latency_row(url: str, rate: int, seconds: float, layout: str, async_ack_commit: bool) -> int:
    from benchmarks import latency
    from eventbus.adapters.kafka import _consumer

    member: Any = _consumer.KafkaConsumer
    original = member._commit_acked
    if async_ack_commit:

        def commit_acked(self: Any) -> None:
            with self._lock:
                self._commit_queued = False
            if self._consumer is not None and not self._killed:
                self._commit(list(self._parts), asynchronous=True)

        member._commit_acked = commit_acked
    try:
        topic = f"ebtrace-row-{time.time_ns() % 10**9}"
        run = latency._eventbus_latency(url, topic, rate, seconds, layout == "2proc", "kafka")
        p50, p99, top = latency._quantiles(asyncio.run(run))
    finally:
        member._commit_acked = original
    flag = "async ack commits" if async_ack_commit else "as is"
    print(f"{layout}, {flag}: p50 {p50:.2f} p99 {p99:.2f} max {top:.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kafka_trace", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--raw", action="store_true", help="raw confluent-kafka instead")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--fetch-loop", action="store_true", help="sub.fetch loop, no runner")
    parser.add_argument(
        "--async-ack-commit",
        action="store_true",
        help="experiment: the member thread commits acks asynchronously (patched here only)",
    )
    parser.add_argument(
        "--row",
        choices=["1proc", "2proc"],
        help="instead of stamping: the latency row's eventbus side (publisher in this process "
        "or another), p50/p99/max; with --async-ack-commit patched in this process",
    )
    args = parser.parse_args(argv)
    if args.row:
        return _latency_row(args.url, args.rate, args.seconds, args.row, args.async_ack_commit)
    if args.raw:
        stamps = trace_raw(args.url, args.rate, args.seconds, args.option)
        publish = {i: s["publish"] for i, s in stamps.by_i.items()}
    else:
        url = _with_options(args.url, args.option)
        stamps = asyncio.run(
            trace_eventbus(
                url,
                args.rate,
                args.seconds,
                args.batch_size,
                args.fetch_loop,
                args.async_ack_commit,
            )
        )
        publish = {}
    result = summarize(stamps, args.rate, publish)
    for name, value in result.items():
        if isinstance(value, dict):
            print(
                f"{name:40s} p50 {value['p50']:8.2f}  p99 {value['p99']:8.2f}  "
                f"max {value['max']:8.2f}  mean {value['mean']:8.2f} ms"
            )
        else:
            print(f"{name:40s} {value:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
