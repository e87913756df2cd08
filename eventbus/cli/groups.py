"""``eventbus groups``: list, describe and reset consumer groups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from eventbus.cli._common import (
    Output,
    OutputOption,
    UrlOption,
    YesOption,
    confirm_or_refuse,
    console,
    emit_json,
    fail,
    open_bus,
    parse_start_option,
)
from eventbus.errors import GroupNotFoundError
from eventbus.sync import EventBus
from eventbus.transport import GroupInfo, Offset, Position, TopicInfo

__all__ = ["app", "group_json"]

app = typer.Typer(help="List, inspect and reset consumer groups.", no_args_is_help=True)


def group_json(info: GroupInfo) -> dict[str, Any]:
    """A group as JSON: state, members, per-partition committed/lag/pending/backlog, totals."""
    return {
        "group": info.group,
        "state": info.state,
        "lag": info.lag,
        "pending": info.pending,
        "backlog": info.backlog,
        "members": [
            {
                "name": m.name,
                "assignments": [f"{t}:{p}" for t, p in m.assignments],
                "idle_ms": m.idle_ms,
                "pending": m.pending,
            }
            for m in info.members
        ],
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "lag": p.lag,
                "pending": p.pending,
                "backlog": p.backlog,
            }
            for p in info.partitions
        ],
    }


@app.command("list", epilog="Example:  eventbus groups list --url kafka://localhost:9092")
def list_groups(url: UrlOption = None, output: OutputOption = Output.table) -> None:
    """List consumer groups with their state, member count, total lag, pending and backlog
    (events not finished: the same number on every transport)."""
    with open_bus(url) as bus:
        infos = bus.describe_groups()
        if output is Output.json:
            emit_json(
                [
                    {
                        "group": i.group,
                        "state": i.state,
                        "members": len(i.members),
                        "topics": sorted({p.topic for p in i.partitions}),
                        "lag": i.lag,
                        "pending": i.pending,
                        "backlog": i.backlog,
                    }
                    for i in infos
                ]
            )
            return
        from rich.table import Table

        table = Table(title=f"consumer groups ({len(infos)})")
        for col in ("group", "state", "members", "topics", "lag", "pending", "backlog"):
            table.add_column(
                col, justify="left" if col in ("group", "state", "topics") else "right"
            )
        for i in infos:
            table.add_row(
                i.group,
                i.state,
                str(len(i.members)),
                ", ".join(sorted({p.topic for p in i.partitions})),
                str(i.lag),
                str(i.pending),
                str(i.backlog),
            )
        console().print(table)


@app.command(epilog="Example:  eventbus groups describe workers -o json")
def describe(
    group: Annotated[str, typer.Argument(help="Consumer group name.")],
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Show a group: members and what they own, and per partition the committed position,
    lag, pending and backlog.

    backlog = events the group has not finished (not yet delivered, or delivered and not
    acked): the same number on every transport, the one to autoscale on. lag and pending are
    the transport's own: on memory and Redis lag = not yet delivered and pending = delivered,
    not acked (backlog = lag + pending); on Kafka lag = end offset - committed offset, which
    already counts delivered, un-acked records, and pending is 0."""
    with open_bus(url) as bus:
        info = bus.describe_group(group)
        if output is Output.json:
            emit_json(group_json(info))
            return
        from rich.table import Table

        out = console()
        out.print(
            f"group [bold]{info.group}[/bold]  state {info.state}  lag {info.lag}  "
            f"pending {info.pending}  backlog {info.backlog}"
        )
        members = Table(title=f"members ({len(info.members)})")
        for col in ("member", "assignments", "idle ms", "pending"):
            members.add_column(col)
        for m in info.members:
            members.add_row(
                m.name,
                ", ".join(f"{t}:{p}" for t, p in m.assignments) or "-",
                "-" if m.idle_ms is None else str(m.idle_ms),
                str(m.pending),
            )
        parts = Table(title="partitions")
        for col in ("topic", "partition", "committed", "lag", "pending", "backlog"):
            parts.add_column(col, justify="left" if col == "topic" else "right")
        for p in info.partitions:
            parts.add_row(
                p.topic,
                str(p.partition),
                "-" if p.committed is None else str(p.committed),
                "-" if p.lag is None else str(p.lag),
                str(p.pending),
                "-" if p.backlog is None else str(p.backlog),
            )
        out.print(members)
        out.print(parts)


def _committed(bus: EventBus, group: str, topic: str) -> dict[int, Offset | None]:
    try:
        info = bus.describe_group(group)
    except GroupNotFoundError:
        return {}
    return {p.partition: p.committed for p in info.partitions if p.topic == topic}


def _next_read(bus: EventBus, topic: str, info: TopicInfo, target: Any) -> dict[int, str | None]:
    """Per partition, the position of the first event a group reset to ``target`` would read
    (None: only events published later). Reads with replay; changes nothing."""
    parts = [p.partition for p in info.partitions]
    if isinstance(target, Position):
        if target.partition not in parts:
            fail(f"topic {topic!r} has no partition {target.partition}")
        found = next(iter(bus.replay(topic, start=target)), None)
        return {target.partition: None if found is None else str(found.position)}
    out: dict[int, str | None] = dict.fromkeys(parts)
    if target == "earliest":
        for part in info.partitions:
            if part.first is not None:
                out[part.partition] = f"{part.partition}:{part.first}"
    elif isinstance(target, datetime):
        # replay yields in time order: the first event seen per partition is its answer
        wanted = {p.partition for p in info.partitions if p.count}
        for item in bus.replay(topic, start=target):
            if out[item.partition] is None:
                out[item.partition] = str(item.position)
                wanted.discard(item.partition)
                if not wanted:
                    break
    return out


@app.command(
    epilog="Examples:  eventbus groups reset workers --topic tasks --to earliest --dry-run\n\n"
    "eventbus groups reset workers --topic tasks --to 2026-01-31T12:00:00Z --yes\n\n"
    "eventbus groups reset workers --topic tasks --to 0:42"
)
def reset(
    group: Annotated[str, typer.Argument(help="Consumer group name (created if missing).")],
    topic: Annotated[str, typer.Option("--topic", "-t", help="The topic to move the group on.")],
    to: Annotated[
        str,
        typer.Option(
            "--to", help="earliest, latest, an ISO time, or PARTITION:POSITION (that partition)."
        ),
    ],
    yes: YesOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would change; change nothing.")
    ] = False,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Move a group's positions on a topic; prints each partition's position before and after.

    Shows each partition's current position and the first event the group would read next,
    and asks first; --yes skips the question, --dry-run stops after showing. Without a
    terminal to ask on, refuses unless --yes. Stop the group's consumers first where the
    transport needs it (Kafka)."""
    target = parse_start_option(to, "--to")
    with open_bus(url) as bus:
        info = bus.describe_topic(topic)
        before = _committed(bus, group, topic)
        preview = []
        if dry_run or not yes:  # with --yes nobody reads the preview
            preview = [
                {"partition": p, "before": before.get(p), "after": None, "next": n}
                for p, n in sorted(_next_read(bus, topic, info, target).items())
            ]
        if dry_run:
            rows = preview
        else:
            if not yes and output is Output.table:
                _print_reset(group, topic, to, "preview", preview)
            confirm_or_refuse(
                f"Reset group {group!r} on topic {topic!r} to {to}?", yes=yes, what="reset"
            )
            result = bus.reset_group(group, topic, to)
            rows = [
                {"partition": p, "before": b, "after": a, "next": None}
                for p, (b, a) in sorted(result.items())
            ]
        if output is Output.json:
            emit_json(
                {"group": group, "topic": topic, "to": to, "dry_run": dry_run, "partitions": rows}
            )
            return
        _print_reset(group, topic, to, "dry-run" if dry_run else "done", rows)


def _print_reset(group: str, topic: str, to: str, mode: str, rows: list[dict[str, Any]]) -> None:
    """``mode``: ``dry-run`` or ``preview`` (before/next read; nothing changed yet) or
    ``done`` (before/after)."""
    from rich.markup import escape
    from rich.table import Table

    title = {"dry-run": "DRY RUN: reset", "preview": "will reset", "done": "reset"}[mode]
    table = Table(title=escape(f"{title} {group} on {topic} to {to}"))
    table.add_column("partition", justify="right")
    table.add_column("before")
    table.add_column("after" if mode == "done" else "would read next from")
    for row in rows:
        after = row["after"] if mode == "done" else row["next"]
        table.add_row(
            str(row["partition"]),
            "-" if row["before"] is None else str(row["before"]),
            ("-" if mode == "done" else "only new events") if after is None else str(after),
        )
    console().print(table)
    if mode == "dry-run":
        typer.echo("dry run: nothing was changed")
