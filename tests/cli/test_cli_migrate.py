"""``eventbus migrate``: the whole runbook through the CLI, Redis to Kafka and memory to memory,
plus a rollback drill from every stage (in the library, on memory)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import eventbus
from eventbus.migration import STAGES, Migration
from eventbus.testing.conformance import drain
from tests.cli.clihelp import ok_json, run
from tests.migration.scenario import migrate_url


def _sides(request: pytest.FixtureRequest, kind: str) -> tuple[str, str]:
    if kind == "memory":
        return f"memory://msrc-{uuid.uuid4().hex[:6]}", f"memory://mdst-{uuid.uuid4().hex[:6]}"
    return request.getfixturevalue("redis_url"), request.getfixturevalue("kafka_url")


@pytest.mark.parametrize(
    "kind", ["memory", pytest.param("redis-kafka", marks=[pytest.mark.redis, pytest.mark.kafka])]
)
def test_runbook_through_the_cli(request: pytest.FixtureRequest, kind: str) -> None:
    source, target = _sides(request, kind)
    topic, name = f"mig-{uuid.uuid4().hex[:6]}", f"m{uuid.uuid4().hex[:6]}"
    group = f"workers-{uuid.uuid4().hex[:6]}"  # a group of its own: it moves with all it reads
    with eventbus.connect(source) as bus:
        bus.create_topic(topic, partitions=2)
        bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i}") for i in range(40)])
        handled: set[int] = set()
        with bus.subscribe(topic, group=group) as sub:  # the group handles 15 on the source
            while len(handled) < 15:
                batch = sub.fetch(15 - len(handled), timeout=1.0)
                sub.ack(batch)
                handled |= {d.event.data for d in batch}
    common = ["--name", name, "--from", source, "--to", target, "-o", "json"]
    state = ok_json(["migrate", "init", "--topic", topic, *common])
    assert state["topics"][topic]["stage"] == "source-only"
    assert ok_json(["migrate", "advance", topic, "--yes", *common])["topics"][topic]["stage"] == (
        "dual-source-primary"
    )
    assert ok_json(["migrate", "backfill", topic, *common])["copied"] == 40
    assert ok_json(["migrate", "backfill", topic, *common])["copied"] == 0  # idempotent
    report = ok_json(["migrate", "verify", topic, *common])
    assert report["ok"] is True
    ok_json(["migrate", "advance", topic, "--yes", *common])
    plan = ok_json(["migrate", "cutover", topic, "--group", group, "--dry-run", *common])
    assert plan["dry_run"] is True and plan["topics"] == [topic]
    moved = ok_json(["migrate", "cutover", topic, "--group", group, "--yes", *common])
    assert moved["status"] == "target"
    status = ok_json(["migrate", "status", *common])
    assert status["topics"][topic]["stage"] == "dual-target-primary"
    assert status["groups"][group]["status"] == "target"
    # Kafka's lag counts offsets, and the fenced backfill's transaction leaves one commit
    # marker per partition (2 here); 40 where lag counts skipped events too
    markers = 2 if kind == "redis-kafka" else 0
    assert status["groups"][group]["target_lag"] - markers in (25, 40)
    ok_json(["migrate", "advance", topic, "--yes", *common])
    # through migrate:// the group now reads exactly the 25 events it had not handled
    url = migrate_url(name, source, target)
    with eventbus.connect(url) as bus, bus.subscribe(topic, group=group) as sub:
        got = drain(sub, 25, 60)
        assert sub.fetch(10, timeout=1.0) == []
    assert {d.event.data for d in got} == set(range(40)) - handled


def test_verify_exits_1_and_says_what_differs() -> None:
    source, target = f"memory://vs-{uuid.uuid4().hex[:6]}", f"memory://vt-{uuid.uuid4().hex[:6]}"
    topic, name = f"v-{uuid.uuid4().hex[:6]}", f"m{uuid.uuid4().hex[:6]}"
    with eventbus.connect(source) as bus:
        bus.create_topic(topic)
        bus.publish_many(topic, ["a", "b"])
    common = ["--name", name, "--from", source, "--to", target]
    ok_json(["migrate", "init", "--topic", topic, *common, "-o", "json"])
    result = run(["migrate", "verify", topic, *common])
    assert result.exit_code == 1
    assert "missing 2" in result.output


def test_unknown_migration_is_a_clear_error() -> None:
    result = run(
        ["migrate", "status", "--name", "nope", "--from", "memory://x1", "--to", "memory://x2"]
    )
    assert result.exit_code == 1
    assert "eventbus migrate init" in result.output


def test_rollback_drill_from_every_stage() -> None:
    async def drill() -> list[str]:
        source, target = (
            f"memory://rs-{uuid.uuid4().hex[:6]}",
            f"memory://rt-{uuid.uuid4().hex[:6]}",
        )
        topic = f"r-{uuid.uuid4().hex[:6]}"
        async with eventbus.connect_async(source) as bus:
            await bus.create_topic(topic)
            await bus.publish_many(topic, list(range(10)))
        m = await Migration.open(f"m{uuid.uuid4().hex[:6]}", source, target)
        seen: list[str] = []
        try:
            await m.init([topic])
            for depth in range(1, len(STAGES)):
                # go up to stage `depth`, then roll all the way back down
                for _ in range(depth):
                    stage = (await m.control.require()).topics[topic].stage
                    if stage == "dual-source-primary":
                        await m.backfill(topic)
                        assert (await m.verify(topic)).ok
                    if stage == "dual-target-primary":
                        await m.cutover("g", topic)
                    await m.advance(topic)
                while (state := await m.control.require()).topics[topic].stage != "source-only":
                    seen.append(state.topics[topic].stage)
                    if state.topics[topic].stage == "dual-source-primary":
                        await m.cutover("g", topic, to="source")
                    await m.rollback(topic)
        finally:
            await m.close()
        return seen

    seen = asyncio.run(drill())
    assert seen.count("target-only") == 1
    assert seen.count("dual-target-primary") == 2
    assert seen.count("dual-source-primary") == 3


def test_status_shows_groups_per_topic_and_what_blocks() -> None:
    """``migrate status`` lists, per topic, every group reading it (here one that read on
    the source and was never cut over) with its side and backlog, and what blocks the next
    stage; the table says the same."""
    source, target = f"memory://ss-{uuid.uuid4().hex[:6]}", f"memory://st-{uuid.uuid4().hex[:6]}"
    topic, name = f"s-{uuid.uuid4().hex[:6]}", f"m{uuid.uuid4().hex[:6]}"
    with eventbus.connect(source) as bus:
        bus.create_topic(topic)
        bus.publish_many(topic, ["a", "b", "c"])
        with bus.subscribe(topic, group="audit") as sub:
            sub.ack(sub.fetch(1, timeout=1.0))
    common = ["--name", name, "--from", source, "--to", target]
    ok_json(["migrate", "init", "--topic", topic, *common, "-o", "json"])
    refused = run(["migrate", "advance", topic, *common])  # no terminal, no --yes
    assert refused.exit_code == 1 and "--yes" in refused.output
    ok_json(["migrate", "advance", topic, "--yes", *common, "-o", "json"])
    status = ok_json(["migrate", "status", *common, "-o", "json"])
    t = status["topics"][topic]
    assert t["groups"]["audit"] == {"side": "source", "source_backlog": 2, "target_backlog": None}
    assert t["blocks"] == ["backfill not done", "no passing verify"]
    table = run(["migrate", "status", *common])
    assert table.exit_code == 0 and "audit" in table.output and "backfill" in table.output
    # advance and rollback have a dry run that changes nothing
    dry = ok_json(["migrate", "advance", topic, "--dry-run", *common, "-o", "json"])
    assert dry["topics"][topic]["stage"] == "dual-source-primary"
    dry = ok_json(["migrate", "rollback", topic, "--dry-run", *common, "-o", "json"])
    assert dry["topics"][topic]["stage"] == "dual-source-primary"
