"""``eventbus topics``: list, describe, create, delete, plan/apply a declarative file, and
adopt a Redis stream other services write (a stream layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from eventbus.cli._common import (
    EXIT_CHANGES,
    Output,
    OutputOption,
    UrlOption,
    YesOption,
    confirm_or_refuse,
    console,
    emit_json,
    fail,
    open_bus,
    parse_kv,
    progress,
    resolve_url,
    usage_error,
    warn,
)
from eventbus.cli._specfile import SpecFileError, load_specs
from eventbus.errors import ConfigurationError
from eventbus.sync import EventBus
from eventbus.topics import FOREVER, Change, Plan, TopicSpec, parse_duration_ms
from eventbus.transport import TopicInfo

__all__ = ["app", "change_json", "topic_json"]

app = typer.Typer(
    help="List, inspect, create and delete topics; plan and apply a topics file; adopt a "
    "Redis stream other services write.",
    no_args_is_help=True,
)

FileOption = Annotated[
    Path,
    typer.Option(
        "--file", "-f", help="Topics file: YAML, or TOML when it ends in .toml.", dir_okay=False
    ),
]

EXIT_NO_CHANGES = 0
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Only show what would change; change nothing.")
]


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms % 1000 else f"{ms // 1000}s"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def topic_json(info: TopicInfo) -> dict[str, Any]:
    """A topic as JSON: name, spec fields, total count and per-partition first/last/count."""
    spec = info.spec.model_dump(mode="json")
    return {
        "name": info.name,
        "partitions": [
            {
                "partition": p.partition,
                "first": p.first,
                "last": p.last,
                "first_position": None if p.first is None else f"{p.partition}:{p.first}",
                "last_position": None if p.last is None else f"{p.partition}:{p.last}",
                "count": p.count,
            }
            for p in info.partitions
        ],
        "count": info.count,
        "spec": spec,
    }


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


def _list_epilog() -> str:
    return "Example:  eventbus topics list --url redis://localhost:6379/0 -o json"


@app.command("list", epilog=_list_epilog())
def list_topics(url: UrlOption = None, output: OutputOption = Output.table) -> None:
    """List topics with their partitions, event count and retention."""
    with open_bus(url) as bus:
        infos = [bus.describe_topic(name) for name in bus.list_topics()]
        if output is Output.json:
            emit_json(
                [
                    {
                        "name": i.name,
                        "partitions": len(i.partitions),
                        "count": i.count,
                        "retention_ms": i.spec.retention_ms,
                        "retention_bytes": i.spec.retention_bytes,
                        "cleanup_policy": i.spec.cleanup_policy,
                    }
                    for i in infos
                ]
            )
            return
        from rich.table import Table

        table = Table(title=f"topics ({len(infos)})")
        for col in ("topic", "partitions", "events", "retention", "retention bytes", "cleanup"):
            table.add_column(col, justify="right" if col in ("partitions", "events") else "left")
        for i in infos:
            table.add_row(
                i.name,
                str(len(i.partitions)),
                str(i.count),
                _fmt_ms(i.spec.retention_ms),
                _fmt_bytes(i.spec.retention_bytes),
                i.spec.cleanup_policy,
            )
        console().print(table)


@app.command(epilog="Example:  eventbus topics describe tasks -o json")
def describe(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Show a topic: settings, and per partition its first/last position and event count."""
    with open_bus(url) as bus:
        info = bus.describe_topic(name)
        if output is Output.json:
            emit_json(topic_json(info))
            return
        _print_topic(info)


def _print_topic(info: TopicInfo) -> None:
    from rich.table import Table

    spec = info.spec
    settings = Table(title=f"topic {info.name}", show_header=False)
    settings.add_column("setting")
    settings.add_column("value")
    settings.add_row("partitions", str(len(info.partitions)))
    settings.add_row("events", str(info.count))
    settings.add_row("retention", _fmt_ms(spec.retention_ms))
    settings.add_row("retention bytes (per partition)", _fmt_bytes(spec.retention_bytes))
    settings.add_row("max event bytes", _fmt_bytes(spec.max_event_bytes))
    settings.add_row("cleanup policy", spec.cleanup_policy)
    for key, value in sorted(spec.config.items()):
        settings.add_row(f"config {key}", value)
    if spec.layout is not None:
        mapped = ", ".join(f"{k}={v}" for k, v in spec.layout.model_dump().items() if v)
        settings.add_row("stream layout", mapped + ("" if spec.layout.data else ", flat data"))
    parts = Table(title="partitions")
    for col in ("partition", "first", "last", "events"):
        parts.add_column(col, justify="right")
    for p in info.partitions:
        parts.add_row(
            str(p.partition),
            "-" if p.first is None else str(p.first),
            "-" if p.last is None else str(p.last),
            str(p.count),
        )
    out = console()
    out.print(settings)
    out.print(parts)


@app.command(
    epilog="Example:  eventbus topics create tasks --partitions 6 --retention 7d "
    "--config segment.ms=3600000"
)
def create(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    partitions: Annotated[int, typer.Option("--partitions", "-p", min=1)] = 1,
    retention: Annotated[
        str | None,
        typer.Option(help="Keep events this long: 30m, 12h, 7d, or forever (the default)."),
    ] = None,
    retention_bytes: Annotated[
        str | None,
        typer.Option(
            help="Keep at most this much per partition: 512MiB, 1GiB (binary: 1GiB = 2^30 "
            "bytes; decimal: 1GB = 10^9 bytes)."
        ),
    ] = None,
    max_event_bytes: Annotated[
        str | None,
        typer.Option(help="Largest encoded event accepted, as --retention-bytes (default 1MiB)."),
    ] = None,
    cleanup_policy: Annotated[
        str, typer.Option(help="delete or compact (compact needs a transport that has it).")
    ] = "delete",
    config: Annotated[
        list[str] | None,
        typer.Option("--config", "-c", help="Transport setting KEY=VALUE; repeatable."),
    ] = None,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Create a topic. Fails (exit 1) if it exists."""
    fields: dict[str, Any] = {
        "name": name,
        "partitions": partitions,
        "cleanup_policy": cleanup_policy,
        "config": parse_kv(config, "--config", "segment.ms=3600000"),
    }
    if retention is not None and retention.strip().lower() != FOREVER:
        try:
            fields["retention_ms"] = parse_duration_ms(retention)
        except ValueError as exc:
            usage_error(f"--retention: {exc}, or forever")
    if retention_bytes is not None:
        fields["retention_bytes"] = retention_bytes
    if max_event_bytes is not None:
        fields["max_event_bytes"] = max_event_bytes
    spec = _spec_or_fail(fields)
    with open_bus(url) as bus:
        created = bus.create_topic(spec)
        if output is Output.json:
            emit_json({"created": created.name, "spec": created.model_dump(mode="json")})
        else:
            typer.echo(
                f"created topic {created.name} ({created.partitions} partition"
                f"{'s' if created.partitions != 1 else ''}, retention "
                f"{_fmt_ms(created.retention_ms)})"
            )


def _spec_or_fail(fields: dict[str, Any]) -> TopicSpec:
    from pydantic import ValidationError

    try:
        return TopicSpec(**fields)
    except ValidationError as exc:
        usage_error(
            "; ".join(
                f"--{str(e['loc'][0]).replace('_', '-')}: "
                f"{str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()
            )
        )


@app.command(
    epilog="Examples:  eventbus topics delete tasks --dry-run\n\neventbus topics delete tasks --yes"
)
def delete(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Delete a topic and all its events.

    Shows what will be deleted (partitions, events) and asks first; --yes skips the question,
    --dry-run stops after showing. Without a terminal to ask on, refuses unless --yes."""
    with open_bus(url) as bus:
        info = bus.describe_topic(name)  # unknown topic: clear error before any question
        preview = {
            "topic": name,
            "partitions": len(info.partitions),
            "count": info.count,
            "dry_run": dry_run,
        }
        if output is Output.table:
            typer.echo(
                f"{'would delete' if dry_run else 'will delete'} topic {name}: "
                f"{len(info.partitions)} partition(s), {info.count} event(s)"
            )
        if dry_run:
            if output is Output.json:
                emit_json(preview)
            else:
                typer.echo("dry run: nothing was changed")
            return
        confirm_or_refuse(
            f"Delete topic {name!r} and its {info.count} event(s)?", yes=yes, what="delete"
        )
        bus.delete_topic(name)
        if output is Output.json:
            emit_json({"deleted": name, "count": info.count})
        else:
            typer.echo(f"deleted topic {name}")


# plan / apply -------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    try:
        return load_specs(path)
    except SpecFileError as exc:
        fail(str(exc))


def _wanted(bus: EventBus, path: Path) -> list[TopicSpec]:
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


def _plan(bus: EventBus, specs: list[TopicSpec]) -> Plan:
    try:
        return bus.plan(specs)
    except ValueError as exc:  # a name given twice
        fail(str(exc))


def _print_plan(the_plan: Plan, title: str) -> None:
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
                detail += f" retention={_fmt_ms(s.retention_ms)}"
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


def _plan_json(the_plan: Plan, **extra: Any) -> dict[str, Any]:
    return {
        "changes": [change_json(c) for c in the_plan.changes],
        "destructive": the_plan.destructive,
        **extra,
    }


@app.command(
    epilog="Example:  eventbus topics plan -f topics.yaml --url kafka://localhost:9092\n\n"
    "Exit codes: 0 no changes, 3 changes to apply, 1 error, 2 usage error (as terraform's "
    "-detailed-exitcode, with 3 for changes since 2 means a usage error)."
)
def plan(
    file: FileOption,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Show what `apply` would change to make the server match the file; changes nothing.

    Dead-letter topics the file names (dead_letter: X) are created too when missing, with the
    partitions of their topic."""
    with open_bus(url) as bus:
        the_plan = _plan(bus, _wanted(bus, file))
        if output is Output.json:
            emit_json(_plan_json(the_plan))
        else:
            _print_plan(the_plan, f"plan for {file}")
            for change in the_plan.changes:
                for message in change.warnings:
                    warn(message)
    raise typer.Exit(EXIT_CHANGES if the_plan else EXIT_NO_CHANGES)


@app.command(
    epilog="Example:  eventbus topics apply -f topics.yaml --url redis://localhost:6379/0 --yes"
)
def apply(
    file: FileOption,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    allow_destructive: Annotated[
        bool,
        typer.Option(
            "--allow-destructive",
            help="Allow fewer partitions (recreates the topic, deleting its events) and "
            "cleanup policy changes.",
        ),
    ] = False,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Make the server match the file: create missing topics, update changed ones.

    Idempotent (a second run changes nothing). Shows the changes and asks before making
    them; --yes skips the question, --dry-run stops after showing (exit 0; `topics plan` has
    the detailed exit code). Refuses destructive changes without --allow-destructive, and
    warns that adding partitions moves existing keys."""
    with open_bus(url) as bus:
        wanted = _wanted(bus, file)
        the_plan = _plan(bus, wanted)
        if the_plan.empty:
            if output is Output.json:
                emit_json(_plan_json(the_plan, applied=not dry_run))
            else:
                typer.echo("no changes: the server matches the file")
            return
        if output is Output.table:
            _print_plan(the_plan, f"changes for {file}")
        for change in the_plan.changes:
            for message in change.warnings:
                warn(message)
        if dry_run:
            if output is Output.json:
                emit_json(_plan_json(the_plan, applied=False))
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
        by_name = {s.name: s for s in wanted}
        changed = [by_name[c.topic] for c in the_plan.changes if c.topic in by_name]
        done: list[Change] = []
        with progress("applying", len(changed), enabled=output is Output.table) as bar:
            for spec in changed:  # one at a time, for progress; plans are per topic anyway
                try:
                    done.extend(bus.apply([spec], allow_destructive=allow_destructive).changes)
                except ConfigurationError as exc:
                    fail(f"{spec.name}: {exc} (applied before it: {len(done)} change(s))")
                bar.advance()
        result = Plan(tuple(done))
        if output is Output.json:
            emit_json(_plan_json(result, applied=True))
        else:
            typer.echo(f"applied {len(done)} change(s)")


# adopt --------------------------------------------------------------------------------------

NONE_FIELD = "-"


def _field_option(setting: str, what: str, none: str = "none") -> Any:
    return typer.Option(
        f"--{setting}-field",
        help=f"Entry field holding {what} (instead of the proposal's); {NONE_FIELD} for {none}.",
        show_default=False,
    )


@app.command(
    epilog="Examples:  eventbus topics adopt tasks --dry-run\n\n"
    "eventbus topics adopt tasks --type-field type --data-field payload --key-field task_id "
    "--yes\n\nExit codes: 0 written (or --dry-run), 1 error or not confirmed, 2 usage error "
    "(also: not a Redis URL)."
)
def adopt(
    name: Annotated[str, typer.Argument(help="The Redis stream (topic) other services write.")],
    sample: Annotated[
        int, typer.Option("--sample", min=1, max=100_000, help="Newest entries to look at.")
    ] = 200,
    type_field: Annotated[str | None, _field_option("type", "the event type")] = None,
    data_field: Annotated[
        str | None, _field_option("data", "the data as JSON", "flat data")
    ] = None,
    key_field: Annotated[str | None, _field_option("key", "the key")] = None,
    id_field: Annotated[str | None, _field_option("id", "the event id")] = None,
    time_field: Annotated[str | None, _field_option("time", "the time")] = None,
    time_format: Annotated[
        str | None,
        typer.Option(help="How eventbus writes the time field: iso or ms (epoch milliseconds)."),
    ] = None,
    extras_prefix: Annotated[
        str | None,
        typer.Option(help="Prefix of the fields eventbus keeps for itself (default _eb.)."),
    ] = None,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Declare how a Redis stream written by other services maps to events.

    Looks at the stream's newest entries, proposes a stream layout (which field holds the
    type, the data as JSON, the key, the id, the time) and, once confirmed, stores it on the
    topic (one partition: the stream itself). Then eventbus reads those services' entries as
    events and writes its own in their fields. --*-field options override the proposal;
    --yes skips the question, --dry-run stops after showing. Redis only."""
    from eventbus.cli._adopt import propose

    resolved = resolve_url(url)
    scheme = resolved.partition("://")[0].lower()
    if scheme not in ("redis", "rediss"):
        usage_error(
            f"topics adopt works on Redis streams (redis:// or rediss:// URLs), not {scheme}://: "
            "Kafka records carry their key and envelope themselves, and memory topics have no "
            "other writers"
        )
    overrides = {
        "type": type_field,
        "data": data_field,
        "key": key_field,
        "id": id_field,
        "time": time_field,
    }
    if time_format is not None and time_format not in ("iso", "ms"):
        usage_error(f"--time-format: {time_format!r} is not iso or ms")
    with open_bus(resolved, resolved=True) as bus:
        info = bus.describe_topic(name)  # unknown topic: clear error before anything else
        entries = [fields for _, fields in bus.sample_entries(name, sample)]
        prefix = extras_prefix or (info.spec.layout.extras_prefix if info.spec.layout else None)
        proposal = propose(entries, **({"extras_prefix": prefix} if prefix else {}))
        if not proposal.sampled and all(v is None for v in overrides.values()):
            fail(
                f"stream {name!r} has no entries written by other services to learn from: "
                "name the fields with --type-field, --data-field (- for flat), --key-field, "
                "--id-field, --time-field"
            )
        layout = _overridden(proposal.layout, overrides, time_format)
        proposal.layout = layout
        current = info.spec.layout
        if output is Output.table:
            _print_proposal(name, proposal, entries, current)
        if dry_run:
            if output is Output.json:
                emit_json(_adopt_json(name, proposal, entries, current, applied=False))
            else:
                typer.echo("dry run: nothing was changed")
            return
        if current == layout:
            if output is Output.json:
                emit_json(_adopt_json(name, proposal, entries, current, applied=False))
            else:
                typer.echo(f"topic {name} already has this layout; nothing to change")
            return
        confirm_or_refuse(
            f"Store this layout on topic {name!r}? eventbus will read and write its entries "
            "in these fields",
            yes=yes,
            what="store a layout",
        )
        bus.alter_topic(info.spec.model_copy(update={"layout": layout}))
        if output is Output.json:
            emit_json(_adopt_json(name, proposal, entries, current, applied=True))
        else:
            typer.echo(f"stored the layout on topic {name}")


def _overridden(proposed: Any, overrides: dict[str, str | None], time_format: str | None) -> Any:
    from pydantic import ValidationError

    from eventbus.topics import StreamLayout

    fields = proposed.model_dump()
    for setting, value in overrides.items():
        if value is not None:
            fields[setting] = None if value == NONE_FIELD else value
    if time_format is not None:
        fields["time_format"] = time_format
    try:
        return StreamLayout(**fields)
    except ValidationError as exc:
        usage_error(
            "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            + " (check the --*-field options)"
        )


def _misfits(layout: Any, entries: list[dict[bytes, bytes]]) -> dict[str, int]:
    from eventbus.cli._adopt import fits

    out: dict[str, int] = {}
    for fields in entries:
        reason = fits(layout, fields)
        if reason is not None:
            out[reason] = out.get(reason, 0) + 1
    return out


def _adopt_json(
    name: str, proposal: Any, entries: list[dict[bytes, bytes]], current: Any, *, applied: bool
) -> dict[str, Any]:
    return {
        "topic": name,
        **proposal.as_json(),
        "current_layout": None if current is None else current.model_dump(),
        "misfits": _misfits(proposal.layout, entries),
        "applied": applied,
    }


def _print_proposal(
    name: str, proposal: Any, entries: list[dict[bytes, bytes]], current: Any
) -> None:
    from rich.markup import escape
    from rich.table import Table

    fields = Table(title=f"fields of {name} ({proposal.sampled} entries sampled)")
    for col in ("field", "present", "JSON object", "role", "example"):
        fields.add_column(col, justify="right" if col in ("present", "JSON object") else "left")
    roles = proposal.roles()
    for f in proposal.fields:
        fields.add_row(
            escape(f.name),
            str(f.present),
            str(f.json_objects),
            roles.get(f.name, ""),
            escape(f.example),
        )
    layout = Table(title="proposed layout", show_header=False)
    layout.add_column("setting")
    layout.add_column("field")
    for setting, value in proposal.layout.model_dump().items():
        shown = "(flat: the other fields)" if setting == "data" and value is None else value
        layout.add_row(setting, escape("-" if shown is None else str(shown)))
    out = console()
    out.print(fields)
    out.print(layout)
    if proposal.native:
        typer.echo(f"{proposal.native} sampled entries are eventbus's own (readable as they are)")
    if current is not None:
        typer.echo(f"current layout: {current.model_dump()}")
    for reason, count in _misfits(proposal.layout, entries).items():
        warn(f"{count} sampled entries do not fit ({reason}): they would be dead-lettered")
    for note in proposal.notes:
        typer.echo(f"note: {note}")
