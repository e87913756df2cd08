"""``eventbus groups``: list, describe and reset consumer groups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from eventbus.cli._common import (
    Output,
    OutputOption,
    UrlOption,
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
    """A group as JSON: state, members, per-partition committed/lag/pending, total lag."""
    return {
        "group": info.group,
        "state": info.state,
        "lag": info.lag,
        "pending": info.pending,
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
            }
            for p in info.partitions
        ],
    }


@app.command("list", epilog="Example:  eventbus groups list --url kafka://localhost:9092")
def list_groups(url: UrlOption = "memory://", output: OutputOption = Output.table) -> None:
    """List consumer groups with their state, member count, total lag and pending."""
    with open_bus(url) as bus:
        infos = []
        for name in bus.list_groups():
            try:
                infos.append(bus.describe_group(name))
            except GroupNotFoundError:  # deleted while we listed
                continue
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
                    }
                    for i in infos
                ]
            )
            return
        from rich.table import Table

        table = Table(title=f"consumer groups ({len(infos)})")
        for col in ("group", "state", "members", "topics", "lag", "pending"):
            table.add_column(
                col, justify="right" if col in ("members", "lag", "pending") else "left"
            )
        for i in infos:
            table.add_row(
                i.group,
                i.state,
                str(len(i.members)),
                ", ".join(sorted({p.topic for p in i.partitions})),
                str(i.lag),
                str(i.pending),
            )
        console().print(table)


@app.command(epilog="Example:  eventbus groups describe workers -o json")
def describe(
    group: Annotated[str, typer.Argument(help="Consumer group name.")],
    url: UrlOption = "memory://",
    output: OutputOption = Output.table,
) -> None:
    """Show a group: members and what they own, and per partition the committed position,
    lag (events not yet delivered) and pending (delivered, not acked)."""
    with open_bus(url) as bus:
        info = bus.describe_group(group)
        if output is Output.json:
            emit_json(group_json(info))
            return
        from rich.table import Table

        out = console()
        out.print(
            f"group [bold]{info.group}[/bold]  state {info.state}  lag {info.lag}  "
            f"pending {info.pending}"
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
        for col in ("topic", "partition", "committed", "lag", "pending"):
            parts.add_column(col, justify="left" if col == "topic" else "right")
        for p in info.partitions:
            parts.add_row(
                p.topic,
                str(p.partition),
                "-" if p.committed is None else str(p.committed),
                "-" if p.lag is None else str(p.lag),
                str(p.pending),
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
    "eventbus groups reset workers --topic tasks --to 2026-01-31T12:00:00Z\n\n"
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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
    url: UrlOption = "memory://",
    output: OutputOption = Output.table,
) -> None:
    """Move a group's positions on a topic; prints each partition's position before and after.

    Stop the group's consumers first where the transport needs it (Kafka). With --dry-run,
    prints the current position and the first event the group would read next."""
    target = parse_start_option(to, "--to")
    with open_bus(url) as bus:
        info = bus.describe_topic(topic)
        before = _committed(bus, group, topic)
        if dry_run:
            nxt = _next_read(bus, topic, info, target)
            rows = [
                {"partition": p, "before": before.get(p), "after": None, "next": n}
                for p, n in sorted(nxt.items())
            ]
        else:
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
        _print_reset(group, topic, to, dry_run, rows)


def _print_reset(
    group: str, topic: str, to: str, dry_run: bool, rows: list[dict[str, Any]]
) -> None:
    from rich.table import Table

    title = f"{'DRY RUN: ' if dry_run else ''}reset {group} on {topic} to {to}"
    table = Table(title=title)
    table.add_column("partition", justify="right")
    table.add_column("before")
    table.add_column("would read next from" if dry_run else "after")
    for row in rows:
        after = row["next"] if dry_run else row["after"]
        table.add_row(
            str(row["partition"]),
            "-" if row["before"] is None else str(row["before"]),
            ("only new events" if dry_run else "-") if after is None else str(after),
        )
    console().print(table)
    if dry_run:
        typer.echo("dry run: nothing was changed")
