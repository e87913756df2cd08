"""``eventbus migrate``: the staged migration from one transport to another.

Every command names the migration (``--name``), its source (``--from``, env
``EVENTBUS_MIGRATE_FROM``) and target (``--to``, env ``EVENTBUS_MIGRATE_TO``); services use
``migrate://NAME?source=...&target=...`` meanwhile. See docs/migration.md for the runbook.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from eventbus.cli._common import (
    Output,
    OutputOption,
    YesOption,
    confirm_or_refuse,
    console,
    emit_json,
    errors_to_exit,
    fail,
    remember_secret,
)
from eventbus.migration import Migration
from eventbus.migration.control import STAGES, GroupMigration, MigrationState, VerifyReport

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="Migrate topics and consumer groups from one transport to another, live.",
    no_args_is_help=True,
)

NameOption = Annotated[
    str, typer.Option("--name", "-n", envvar="EVENTBUS_MIGRATION", help="Migration name.")
]
FromOption = Annotated[
    str,
    typer.Option(
        "--from", envvar="EVENTBUS_MIGRATE_FROM", help="Source URL (where the control record is)."
    ),
]
ToOption = Annotated[str, typer.Option("--to", envvar="EVENTBUS_MIGRATE_TO", help="Target URL.")]
TopicArg = Annotated[str, typer.Argument(help="The topic to act on.")]
EXAMPLE = (
    "Example:  eventbus migrate {cmd} --name orders-move --from redis://localhost:6379/0 "
    "--to kafka://localhost:9092{extra}"
)


def _example(cmd: str, extra: str = "") -> str:
    return EXAMPLE.format(cmd=cmd, extra=extra)


def _run(name: str, source: str, target: str, job: Callable[[Migration], Awaitable[T]]) -> T:
    """Open the migration, run ``job``, close; eventbus errors end the command cleanly."""
    remember_secret(source)
    remember_secret(target)

    async def main() -> T:
        migration = await Migration.open(name, source, target)
        try:
            return await job(migration)
        finally:
            await migration.close()

    with errors_to_exit():
        return asyncio.run(main())
    raise AssertionError("unreachable")  # errors_to_exit exits on errors


def _state_json(state: MigrationState) -> dict[str, Any]:
    return {
        "name": state.name,
        "version": state.version,
        "topics": {
            t: {"stage": m.stage, "generation": m.generation, "backfill_done": m.backfill_done}
            for t, m in state.topics.items()
        },
        "groups": {
            g: {"topic": m.topic, "topics": m.topics or [m.topic], "status": m.status}
            for g, m in state.groups.items()
        },
    }


def _print_state(state: MigrationState, output: Output, what: str) -> None:
    if output is Output.json:
        emit_json(_state_json(state))
        return
    console().print(what)
    for topic, mig in state.topics.items():
        console().print(f"  {topic}: {mig.stage} (generation {mig.generation})")


@app.command(epilog=_example("init", " --topic orders"))
def init(
    name: NameOption,
    source: FromOption,
    target: ToOption,
    topic: Annotated[list[str], typer.Option("--topic", "-t", help="Topics to migrate.")],
    output: OutputOption = Output.table,
) -> None:
    """Start a migration (or add topics to it): creates the target topics with the source's
    partitions and settings and records every topic at stage source-only."""
    state = _run(name, source, target, lambda m: m.init(list(topic)))
    _print_state(state, output, f"migration {name} initialised")


@app.command(epilog=_example("status"))
def status(
    name: NameOption, source: FromOption, target: ToOption, output: OutputOption = Output.table
) -> None:
    """Per topic: stage, journal backlog, last verification, what blocks the next stage, and
    every group reading it with its side and its backlog on both sides."""
    report = _run(name, source, target, lambda m: m.status())
    if output is Output.json:
        emit_json(report)
        return
    from rich.table import Table

    table = Table(title=f"migration {name} (version {report['version']})")
    for col in (
        "topic",
        "stage",
        "backfill",
        "journal",
        "verify",
        "producers",
        "next stage blocked by",
    ):
        table.add_column(col)
    for topic, t in report["topics"].items():
        verify = t["verify"]
        table.add_row(
            topic,
            t["stage"],
            "done" if t["backfill_done"] else "-",
            str(t["journal_backlog"]),
            "-" if verify is None else ("ok" if verify["ok"] else "DIFFERENT"),
            str(len(t["producers"])),
            "; ".join(t["blocks"]) or "-",
        )
    console().print(table)
    groups = Table(title="groups per topic (backlog: events not yet finished)")
    for col in ("topic", "group", "on", "source backlog", "target backlog"):
        groups.add_column(col)
    for topic, t in report["topics"].items():
        for group, g in t["groups"].items():
            groups.add_row(
                topic,
                group,
                g["side"],
                "-" if g["source_backlog"] is None else str(g["source_backlog"]),
                "-" if g["target_backlog"] is None else str(g["target_backlog"]),
            )
    console().print(groups)


@app.command(epilog=_example("advance", " orders --yes"))
def advance(
    topic: TopicArg,
    name: NameOption,
    source: FromOption,
    target: ToOption,
    wait: Annotated[float, typer.Option(help="Seconds to wait for producers.")] = 30.0,
    abandon: Annotated[
        list[str] | None,
        typer.Option(
            "--abandon-group",
            help="To target-only: leave this group behind on the source on purpose "
            "(it gets nothing new). Repeatable.",
        ),
    ] = None,
    ignore_legacy_writers: Annotated[
        bool,
        typer.Option(
            "--ignore-legacy-writers",
            help="To target-only: go on although a service outside eventbus wrote to the "
            "source within the last minute (what it writes from now on stays there).",
        ),
    ] = False,
    yes: YesOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run the checks only; change nothing.")
    ] = False,
    output: OutputOption = Output.table,
) -> None:
    """Move a topic to its next stage once every live producer follows the current one and
    the next stage's checks pass (backfill done and verified; every group that reads it cut
    over, or abandoned with --abandon-group; journal empty). Shows the move and asks first;
    --yes skips the question, --dry-run stops after the checks."""

    async def job(m: Migration) -> tuple[MigrationState, bool]:
        state = await m.advance(
            topic,
            wait=wait,
            abandon=abandon or [],
            dry_run=True,
            ignore_legacy_writers=ignore_legacy_writers,
        )
        step = _step(state, topic, +1)
        if dry_run:
            return state, False
        if output is Output.table:
            console().print(f"will move {step}")
        confirm_or_refuse(f"move {step}?", yes=yes, what="advance the topic")
        moved = await m.advance(
            topic,
            wait=wait,
            abandon=abandon or [],
            ignore_legacy_writers=ignore_legacy_writers,
        )
        return moved, True

    state, changed = _run(name, source, target, job)
    if not changed:
        _print_state(state, output, f"{topic}: checks passed (dry run, nothing changed)")
        return
    _print_state(state, output, f"{topic} advanced")


@app.command(epilog=_example("rollback", " orders --yes"))
def rollback(
    topic: TopicArg,
    name: NameOption,
    source: FromOption,
    target: ToOption,
    wait: Annotated[float, typer.Option(help="Seconds to wait for producers.")] = 30.0,
    yes: YesOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run the checks only; change nothing.")
    ] = False,
    output: OutputOption = Output.table,
) -> None:
    """Move a topic back one stage (groups go back first: cutover --to-side source). Shows
    the move and asks first; --yes skips the question, --dry-run stops after the checks."""

    async def job(m: Migration) -> tuple[MigrationState, bool]:
        state = await m.rollback(topic, wait=wait, dry_run=True)
        step = _step(state, topic, -1)
        if dry_run:
            return state, False
        if output is Output.table:
            console().print(f"will move {step}")
        confirm_or_refuse(f"move {step}?", yes=yes, what="roll the topic back")
        return await m.rollback(topic, wait=wait), True

    state, changed = _run(name, source, target, job)
    if not changed:
        _print_state(state, output, f"{topic}: checks passed (dry run, nothing changed)")
        return
    _print_state(state, output, f"{topic} rolled back")


def _step(state: MigrationState, topic: str, by: int) -> str:
    """'<topic> (and its .dlq) from <stage> to <stage>', for the confirmation."""
    mig = state.topic(topic)
    nxt = STAGES[STAGES.index(mig.stage) + by]
    dlq = state.topics.get(f"{topic}.dlq")
    with_dlq = f" (with {topic}.dlq)" if dlq is not None and dlq.stage == mig.stage else ""
    return f"{topic}{with_dlq} from {mig.stage} to {nxt}"


@app.command(epilog=_example("backfill", " orders"))
def backfill(
    topic: TopicArg,
    name: NameOption,
    source: FromOption,
    target: ToOption,
    output: OutputOption = Output.table,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="After the history, keep copying what services outside eventbus write to "
            "the source (a legacy producer's XADD), in both dual stages, until Ctrl-C/SIGTERM "
            "or the topic leaves them.",
        ),
    ] = False,
    interval: Annotated[
        float,
        typer.Option(help="With --follow: seconds between looks for new events.", min=0.05),
    ] = 1.0,
) -> None:
    """Copy the source's history into the target, in order, resumably (run it again after
    any interruption: each event ends up on the target exactly once). On a terminal it shows
    its progress (source records read of the total, rate, time left); at the end it says
    how many it copied, in how long."""
    began = time.monotonic()

    async def job(m: Migration) -> int:
        total = 0
        state = await m.control.require()
        for t in (topic, f"{topic}.dlq"):
            if t in state.topics:
                total += (await m.source.describe_topic(t)).count
        if follow:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await m.follow(topic, interval=interval, stop=stop)
        with _backfill_bar(topic, total, enabled=output is Output.table) as advance:
            return await m.backfill(topic, progress=advance)

    copied = _run(name, source, target, job)
    seconds = time.monotonic() - began
    rate = copied / seconds if seconds > 0 else 0.0
    if output is Output.json:
        emit_json(
            {
                "topic": topic,
                "copied": copied,
                "seconds": round(seconds, 3),
                "per_second": round(rate),
            }
        )
    else:
        console().print(
            f"{topic}: backfill copied {copied} events in {seconds:.1f} s ({rate:,.0f}/s)"
        )


@contextlib.contextmanager
def _backfill_bar(topic: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (a terminal only): read / total, rate, time left."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(f"backfill {topic}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console(stderr=True), transient=True) as bar:
        task = bar.add_task("backfill", total=total or None, rate="")

        def advance(n: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, advance=n, rate=f"{speed:,.0f}/s" if speed else "")

        yield advance


@app.command(epilog=_example("drain", " orders"))
def drain(
    topic: TopicArg,
    name: NameOption,
    source: FromOption,
    target: ToOption,
    output: OutputOption = Output.table,
) -> None:
    """Replay the dual-write journal to the secondary now (when no producer runs to do it)."""
    moved = _run(name, source, target, lambda m: m.drain(topic))
    if output is Output.json:
        emit_json({"topic": topic, "moved": moved})
    else:
        console().print(f"{topic}: moved {moved} journaled events")


@app.command(epilog=_example("verify", " orders"))
def verify(
    topic: TopicArg,
    name: NameOption,
    source: FromOption,
    target: ToOption,
    output: OutputOption = Output.table,
) -> None:
    """Compare both sides per partition (counts, event ids, per-key order, payload hashes);
    exit 1 and say exactly what differs when anything does."""
    report: VerifyReport = _run(name, source, target, lambda m: m.verify(topic))
    if output is Output.json:
        emit_json({"ok": report.ok, **report.model_dump(mode="json")})
    else:
        console().print(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command(epilog=_example("cutover", " orders --group workers --yes"))
def cutover(
    topic: TopicArg,
    name: NameOption,
    source: FromOption,
    target: ToOption,
    group: Annotated[str, typer.Option("--group", "-g", help="The consumer group to move.")],
    to: Annotated[str, typer.Option("--to-side", help="target, or source to roll back.")] = (
        "target"
    ),
    exact: Annotated[
        bool, typer.Option(help="Require no pending events (a clean prefix) after pausing.")
    ] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for members to pause.")] = 60.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and show the move; change nothing.")
    ] = False,
    yes: YesOption = False,
    ignore: Annotated[
        list[str] | None,
        typer.Option(
            "--ignore-topic",
            help="A topic the old side still has positions of but the group no longer reads "
            "(refused if a live member reads it). Repeatable.",
        ),
    ] = None,
    output: OutputOption = Output.table,
) -> None:
    """Move a consumer group to the other side, with every topic it reads, at once: members
    pause, positions are translated per topic (never ahead of what the group finished),
    members resume there, skipping what they already handled. Refused, naming them, while a
    topic of the group is not ready."""
    if to not in ("target", "source"):
        fail("--to-side takes target or source")
    began = datetime.now(UTC)

    async def job(m: Migration) -> GroupMigration:
        options: dict[str, Any] = {"to": to, "exact": exact, "wait": wait, "ignore": ignore or []}
        plan = await m.cutover(group, topic, dry_run=True, **options)
        if dry_run or plan.status == to:  # a plan, or nothing to do
            return plan
        step = f"group {group} to the {to} with topics {', '.join(plan.topics)}"
        if output is Output.table:
            console().print(f"will move {step}")
        confirm_or_refuse(f"move {step}?", yes=yes, what="cut the group over")
        return await m.cutover(group, topic, **options)

    gm = _run(name, source, target, job)
    unchanged = not dry_run and (gm.switched_at is None or gm.switched_at < began)
    _show_cutover(gm, group, to, dry_run=dry_run, unchanged=unchanged, output=output)


def _show_cutover(
    gm: GroupMigration, group: str, to: str, *, dry_run: bool, unchanged: bool, output: Output
) -> None:
    """What ``migrate cutover`` did (or would do, or why it did nothing)."""
    if output is Output.json:
        emit_json(
            {
                "group": group,
                "dry_run": dry_run,
                "unchanged": unchanged,
                **gm.model_dump(mode="json"),
            }
        )
    elif dry_run:
        console().print(
            f"group {group} would move to the {to} with topics {', '.join(gm.topics)} "
            "(dry run, nothing changed)"
        )
    elif unchanged:
        since = (
            "never moved"
            if gm.switched_at is None
            else f"since {gm.switched_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        console().print(
            f"group {group} already reads {', '.join(gm.topics)} from the {gm.status} "
            f"({since}); nothing to do"
        )
    else:
        for t, pos in gm.positions.items():
            console().print(
                f"group {group} now reads {t} from the {gm.status}; starts "
                f"{dict(sorted(pos.start.items()))}, {pos.skipped} already-handled events skipped"
            )
