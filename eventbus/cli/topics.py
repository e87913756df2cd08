"""``eventbus topics``: list, describe, create, delete, plan/apply a declarative file, and
adopt a Redis stream other services write (a stream layout).

The commands' options and help live here; what plan/apply do with a topics file is in
:mod:`eventbus.cli._provision`, the steps of adopt in :mod:`eventbus.cli._adopting`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from eventbus.cli._adopting import NONE_FIELD, run_adopt
from eventbus.cli._common import (
    EXIT_CHANGES,
    Output,
    OutputOption,
    UrlOption,
    YesOption,
    confirm_or_refuse,
    console,
    emit_json,
    fmt_bytes,
    fmt_ms,
    open_bus,
    parse_kv,
    usage_error,
)
from eventbus.cli._provision import (
    apply_file,
    change_json,
    plan_json,
    plan_or_fail,
    print_plan,
    wanted,
    warn_changes,
)
from eventbus.topics import FOREVER, TopicSpec, parse_duration_ms
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


def _list_epilog() -> str:
    return "Example:  eventbus topics list --url redis://localhost:6379/0 -o json"


@app.command("list", epilog=_list_epilog())
def list_topics(url: UrlOption = None, output: OutputOption = Output.table) -> None:
    """List topics with their partitions, event count and retention."""
    with open_bus(url) as bus:
        infos = bus.describe_topics()
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
                fmt_ms(i.spec.retention_ms),
                fmt_bytes(i.spec.retention_bytes),
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
    settings.add_row("retention", fmt_ms(spec.retention_ms))
    settings.add_row("retention bytes (per partition)", fmt_bytes(spec.retention_bytes))
    settings.add_row("max event bytes", fmt_bytes(spec.max_event_bytes))
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
                f"{fmt_ms(created.retention_ms)})"
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
        the_plan = plan_or_fail(bus, wanted(bus, file))
        if output is Output.json:
            emit_json(plan_json(the_plan))
        else:
            print_plan(the_plan, f"plan for {file}")
            warn_changes(the_plan)
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
        apply_file(
            bus,
            file,
            yes=yes,
            dry_run=dry_run,
            allow_destructive=allow_destructive,
            output=output,
        )


# adopt --------------------------------------------------------------------------------------


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
    run_adopt(
        name,
        url,
        overrides={
            "type": type_field,
            "data": data_field,
            "key": key_field,
            "id": id_field,
            "time": time_field,
        },
        sample=sample,
        time_format=time_format,
        extras_prefix=extras_prefix,
        yes=yes,
        dry_run=dry_run,
        output=output,
    )
