"""The steps of ``eventbus topics adopt``: check the URL is Redis, sample the stream, propose a
layout (:mod:`eventbus.cli._adopt`) with the operator's ``--*-field`` overrides, show it, and
store it on the topic once confirmed. The command itself (options, help) stays in
:mod:`eventbus.cli.topics`."""

from __future__ import annotations

from typing import Any

import typer

from eventbus.cli._adopt import Proposal, fits, propose
from eventbus.cli._common import (
    Output,
    confirm_or_refuse,
    console,
    emit_json,
    fail,
    open_bus,
    resolve_url,
    usage_error,
    warn,
)
from eventbus.transport import TopicInfo

__all__ = ["NONE_FIELD", "run_adopt"]

NONE_FIELD = "-"


def run_adopt(
    name: str,
    url: str | None,
    *,
    overrides: dict[str, str | None],
    sample: int,
    time_format: str | None,
    extras_prefix: str | None,
    yes: bool,
    dry_run: bool,
    output: Output,
) -> None:
    """Propose, show, and (unless a dry run or nothing changes) store the layout."""
    resolved = _redis_url(url)
    if time_format is not None and time_format not in ("iso", "ms"):
        usage_error(f"--time-format: {time_format!r} is not iso or ms")
    with open_bus(resolved, resolved=True) as bus:
        info = bus.describe_topic(name)  # unknown topic: clear error before anything else
        entries = [fields for _, fields in bus.sample_entries(name, sample)]
        proposal = _proposal(name, info, entries, overrides, time_format, extras_prefix)
        current = info.spec.layout
        if output is Output.table:
            _print_proposal(name, proposal, entries, current)
        if dry_run or current == proposal.layout:
            if output is Output.json:
                emit_json(_adopt_json(name, proposal, entries, current, applied=False))
            elif dry_run:
                typer.echo("dry run: nothing was changed")
            else:
                typer.echo(f"topic {name} already has this layout; nothing to change")
            return
        confirm_or_refuse(
            f"Store this layout on topic {name!r}? eventbus will read and write its entries "
            "in these fields",
            yes=yes,
            what="store a layout",
        )
        bus.alter_topic(info.spec.model_copy(update={"layout": proposal.layout}))
        if output is Output.json:
            emit_json(_adopt_json(name, proposal, entries, current, applied=True))
        else:
            typer.echo(f"stored the layout on topic {name}")


def _redis_url(url: str | None) -> str:
    resolved = resolve_url(url)
    scheme = resolved.partition("://")[0].lower()
    if scheme not in ("redis", "rediss", "redis+sentinel"):
        usage_error(
            f"topics adopt works on Redis streams (redis:// or rediss:// URLs), not {scheme}://: "
            "Kafka records carry their key and envelope themselves, and memory topics have no "
            "other writers"
        )
    return resolved


def _proposal(
    name: str,
    info: TopicInfo,
    entries: list[dict[bytes, bytes]],
    overrides: dict[str, str | None],
    time_format: str | None,
    extras_prefix: str | None,
) -> Proposal:
    """The proposal learnt from ``entries``, its layout overridden by the operator's fields;
    fails when there is nothing to learn from and nothing named."""
    layout = info.spec.layout
    prefix = extras_prefix or (layout.extras_prefix if layout else None)
    proposal = propose(entries, **({"extras_prefix": prefix} if prefix else {}))
    if not proposal.sampled and all(v is None for v in overrides.values()):
        fail(
            f"stream {name!r} has no entries written by other services to learn from: "
            "name the fields with --type-field, --data-field (- for flat), --key-field, "
            "--id-field, --time-field"
        )
    proposal.layout = _overridden(proposal.layout, overrides, time_format)
    return proposal


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
