"""What ``eventbus topics plan`` and ``topics apply`` do with a topics file: the specs it wants
(adapted to the transport), the plan shown as a table or JSON, and applying the plan one topic
at a time. The commands themselves (options, help) stay in :mod:`eventbus.cli.topics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from eventbus.cli._common import (
    Output,
    confirm_or_refuse,
    console,
    emit_json,
    fail,
    fmt_ms,
    progress,
    warn,
)
from eventbus.cli._specfile import SpecFileError, load_specs
from eventbus.errors import ConfigurationError
from eventbus.sync import EventBus
from eventbus.topics import Change, Plan, TopicSpec

__all__ = [
    "apply_file",
    "change_json",
    "plan_json",
    "plan_or_fail",
    "print_plan",
    "wanted",
    "warn_changes",
]


def change_json(change: Change) -> dict[str, Any]:
    """One plan change as JSON: action, topic, fields {name: {from, to}}, flags, warnings."""
    return {
        "action": change.action,
        "topic": change.topic,
        "fields": {k: {"from": a, "to": b} for k, (a, b) in change.fields.items()},
        "destructive": change.destructive,
        "warnings": list(change.warnings),
        "spec": change.spec.model_dump(mode="json") if change.spec is not None else None,
    }


def _load(path: Path) -> Any:
    try:
        return load_specs(path)
    except SpecFileError as exc:
        fail(str(exc))


def wanted(bus: EventBus, path: Path) -> list[TopicSpec]:
    """The file's specs, plus its dead-letter topics that do not exist yet, adapted to the
    transport: a per-partition size limit is dropped (with a warning) where the transport
    cannot retain by size, so one file serves Redis and Kafka alike."""
    spec_file = _load(path)
    existing = set(bus.list_topics())
    specs = [*spec_file.specs, *(d for d in spec_file.dead_letters if d.name not in existing)]
    caps = bus.capabilities
    if caps.retention_by_size:
        return specs
    adapted = []
    for spec in specs:
        if spec.retention_bytes is not None:
            warn(
                f"{spec.name}: retention_bytes ignored on {caps.transport} (capability "
                "retention_by_size is false); retention by time still applies"
            )
            spec = spec.model_copy(update={"retention_bytes": None})
        adapted.append(spec)
    return adapted


def plan_or_fail(bus: EventBus, specs: list[TopicSpec]) -> Plan:
    """The plan for ``specs``; a name given twice fails the command."""
    try:
        return bus.plan(specs)
    except ValueError as exc:  # a name given twice
        fail(str(exc))


def warn_changes(the_plan: Plan) -> None:
    """Each change's warnings (adding partitions moves keys, ...) on stderr."""
    for change in the_plan.changes:
        for message in change.warnings:
            warn(message)


def print_plan(the_plan: Plan, title: str) -> None:
    """The plan as a table and a one-line count (or that there is nothing to change)."""
    from rich.table import Table
    from rich.text import Text

    if the_plan.empty:
        typer.echo("no changes: the server matches the file")
        return
    table = Table(title=title)
    for col in ("action", "topic", "changes", "destructive"):
        table.add_column(col)
    for change in the_plan.changes:
        if change.action == "create" and change.spec is not None:
            s = change.spec
            detail = f"partitions={s.partitions}"
            if s.retention_ms is not None:
                detail += f" retention={fmt_ms(s.retention_ms)}"
        else:
            detail = "\n".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in change.fields.items())
        style = {"create": "green", "update": "yellow", "delete": "red"}[change.action]
        table.add_row(
            Text(change.action, style=style),
            change.topic,
            detail,
            Text("YES", style="bold red") if change.destructive else "no",
        )
    console().print(table)
    counts = {a: sum(c.action == a for c in the_plan.changes) for a in ("create", "update")}
    typer.echo(
        f"plan: {counts['create']} to create, {counts['update']} to update"
        + (", DESTRUCTIVE changes present" if the_plan.destructive else "")
    )


def plan_json(the_plan: Plan, **extra: Any) -> dict[str, Any]:
    """The plan as JSON, with ``extra`` keys (``applied``)."""
    return {
        "changes": [change_json(c) for c in the_plan.changes],
        "destructive": the_plan.destructive,
        **extra,
    }


def apply_file(
    bus: EventBus,
    file: Path,
    *,
    yes: bool,
    dry_run: bool,
    allow_destructive: bool,
    output: Output,
) -> None:
    """``topics apply``: show the plan, stop there when empty or a dry run, refuse destructive
    changes unless allowed, ask, then apply."""
    specs = wanted(bus, file)
    the_plan = plan_or_fail(bus, specs)
    if the_plan.empty:
        if output is Output.json:
            emit_json(plan_json(the_plan, applied=not dry_run))
        else:
            typer.echo("no changes: the server matches the file")
        return
    if output is Output.table:
        print_plan(the_plan, f"changes for {file}")
    warn_changes(the_plan)
    if dry_run:
        if output is Output.json:
            emit_json(plan_json(the_plan, applied=False))
        else:
            typer.echo("dry run: nothing was changed")
        return
    if the_plan.destructive and not allow_destructive:
        destructive = "; ".join(c.describe() for c in the_plan.changes if c.destructive)
        fail(
            f"the plan has destructive changes ({destructive}); nothing was changed. Review "
            "them and pass --allow-destructive to apply"
        )
    confirm_or_refuse("Apply these changes?", yes=yes, what="apply changes")
    done = _apply_each(bus, specs, the_plan, allow_destructive, output)
    if output is Output.json:
        emit_json(plan_json(Plan(tuple(done)), applied=True))
    else:
        typer.echo(f"applied {len(done)} change(s)")


def _apply_each(
    bus: EventBus, specs: list[TopicSpec], the_plan: Plan, allow_destructive: bool, output: Output
) -> list[Change]:
    by_name = {s.name: s for s in specs}
    changed = [by_name[c.topic] for c in the_plan.changes if c.topic in by_name]
    done: list[Change] = []
    with progress("applying", len(changed), enabled=output is Output.table) as bar:
        for spec in changed:  # one at a time, for progress; plans are per topic anyway
            try:
                done.extend(bus.apply([spec], allow_destructive=allow_destructive).changes)
            except ConfigurationError as exc:
                fail(f"{spec.name}: {exc} (applied before it: {len(done)} change(s))")
            bar.advance()
    return done
