"""One command for every benchmark: ``python -m benchmarks.run [--quick] [--only redis|kafka]
[--rows TEXT] [--json out.json]``. See docs/performance.md for what each row measures and the
targets.

Servers: ``EVENTBUS_BENCH_REDIS_URL`` / ``EVENTBUS_BENCH_KAFKA_URL`` if set (shared servers are
fine: every name is unique to the run and everything created is deleted; nothing is flushed),
else a private Redis and Apache Kafka are started with :mod:`eventbus.testing.servers` and
stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from benchmarks import kafka_cases, latency, memory_cases, migration_cases, peer_cases, redis_cases
from benchmarks.harness import Env, Metric, Row, RowResult, measure, render, render_targets

Builder = Callable[[Env, int], AbstractContextManager[Row]]

REDIS_ROWS: list[Builder] = [
    redis_cases.batch_publish,
    redis_cases.inflight_publish,
    redis_cases.consume_ack,
    peer_cases.redis_publish,
]
KAFKA_ROWS: list[Builder] = [
    kafka_cases.batch_publish,
    kafka_cases.inflight_publish,
    kafka_cases.consume_ack,
    peer_cases.kafka_publish,
]
MIGRATION_ROWS: list[Builder] = [migration_cases.dual_write, migration_cases.backfill]
SUSTAINED_ROWS: dict[str, list[Builder]] = {
    "redis": [redis_cases.sustained_publish, redis_cases.sustained_consume],
    "kafka": [kafka_cases.sustained_publish, kafka_cases.sustained_consume],
}
"""Next to the burst rows, 100-byte events only; the targets table reads these."""


@contextlib.contextmanager
def servers(only: str | None) -> Iterator[tuple[str | None, str | None, dict[str, str]]]:
    """(redis URL, kafka URL, server versions): from the environment or started here."""
    from eventbus.testing import servers as srv

    facts: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        redis_url = kafka_url = None
        if only in (None, "redis"):
            redis_url = os.environ.get("EVENTBUS_BENCH_REDIS_URL")
            if redis_url is None:
                redis_url = stack.enter_context(srv.start_redis()).url
                facts["redis_server"] = "started for this run"
            else:
                facts["redis_server"] = "EVENTBUS_BENCH_REDIS_URL"
            facts["redis_version"] = _redis_version(redis_url)
        if only in (None, "kafka"):
            kafka_url = os.environ.get("EVENTBUS_BENCH_KAFKA_URL")
            if kafka_url is None:
                kafka_url = stack.enter_context(srv.start_kafka()).url
                facts["kafka_server"] = "started for this run"
                facts["kafka_version"] = f"Apache Kafka {srv.KAFKA_VERSION} (KRaft, one node)"
            else:
                facts["kafka_server"] = "EVENTBUS_BENCH_KAFKA_URL"
                facts["kafka_version"] = "external (not probed)"
        yield redis_url, kafka_url, facts


def _redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def machine_facts() -> dict[str, Any]:
    import confluent_kafka

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    libs = {}
    for name in ("eventbus", "redis", "hiredis", "confluent-kafka", "faststream", "pydantic",
                 "pydantic-core"):  # fmt: skip
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = "not installed"
    libs["librdkafka"] = confluent_kafka.libversion()[0]
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": libs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="100-byte rows, small counts (3-4 min)"
    )
    parser.add_argument("--only", choices=["redis", "kafka"], help="one transport's rows only")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, help="runs per side (default 3 quick, 5 full)")
    parser.add_argument(
        "--rows",
        metavar="TEXT",
        help="only rows whose case name contains TEXT (e.g. backfill, consume_ack); "
        "skips the latency and drain measurements",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    started = time.monotonic()
    facts = machine_facts()
    results: list[RowResult] = []
    metrics: list[Metric] = []
    with servers(args.only) as (redis_url, kafka_url, server_facts):
        facts.update(server_facts)
        env = Env(quick=args.quick, redis_url=redis_url, kafka_url=kafka_url)
        env.facts = facts
        _print_facts(facts)
        try:
            plan = _plan(env, args.only)
            if args.rows:
                plan = [(b, size) for b, size in plan if args.rows in _case(b)]
            for builder, size in plan:
                results.append(_measure(builder, env, size, repeats))
            for transport, url in (("redis", redis_url), ("kafka", kafka_url)):
                if url is not None and not args.rows:
                    print(f"-- latency and drain on {transport}", file=sys.stderr, flush=True)
                    metrics.extend(latency.latency_metrics(env, transport, url))
                    metrics.append(latency.drain_metric(env, transport, url))
        finally:
            env.close()
    facts["seconds"] = round(time.monotonic() - started, 1)
    facts["mode"] = "quick" if args.quick else "full"
    facts["repeats"] = repeats
    print()
    print(render(results, metrics))
    print()
    print(render_targets(results, metrics))
    print(f"\n{facts['mode']} run, {repeats} runs per side, {facts['seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "facts": facts,
                    "rows": [r.to_json() for r in results],
                    "measurements": [m.to_json() for m in metrics],
                    "table": render(results, metrics),
                    "targets": render_targets(results, metrics),
                },
                f,
                indent=2,
            )
        print(f"wrote {args.json}")
    return 0


def _plan(env: Env, only: str | None) -> list[tuple[Builder, int]]:
    builders: list[Builder] = [memory_cases.publish_many]
    if env.redis_url is not None:
        builders += REDIS_ROWS
    if env.kafka_url is not None:
        builders += KAFKA_ROWS
    plan = [(b, size) for b in builders for size in env.payloads]
    for transport, url in (("redis", env.redis_url), ("kafka", env.kafka_url)):
        if url is not None:
            plan += [(b, 100) for b in SUSTAINED_ROWS[transport]]
    if env.redis_url is not None and env.kafka_url is not None:
        plan += [(b, 100) for b in MIGRATION_ROWS]
    return plan


def _case(builder: Builder) -> str:
    return f"{builder.__module__.rsplit('.', 1)[-1]}.{builder.__name__}"


def _measure(builder: Builder, env: Env, size: int, repeats: int) -> RowResult:
    label = f"{_case(builder)} {size} B"
    print(f"-- {label}", file=sys.stderr, flush=True)
    try:
        with builder(env, size) as row:
            return measure(row, repeats)
    except Exception as exc:  # one broken row must not lose the others
        traceback.print_exc()
        stub = Row(label, label, "?", size, 0, [])
        return RowResult(stub, [], [], [], error=repr(exc)[:300])


def _print_facts(facts: dict[str, Any]) -> None:
    for key, value in facts.items():
        print(f"{key}: {value}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
