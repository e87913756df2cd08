"""``eventbus produce``, ``eventbus tail`` and ``eventbus replay``: events in and out.

These are top-level commands (registered in :mod:`eventbus.cli`), not a sub-app.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from eventbus.aio import Replayed
from eventbus.cli._common import (
    Output,
    OutputOption,
    UrlOption,
    console,
    emit_json,
    fail,
    jsonable,
    open_bus,
    parse_kv,
    parse_since,
    parse_start_option,
    progress,
    resolve_url,
    stdin_is_tty,
    usage_error,
)
from eventbus.errors import TopicNotFoundError
from eventbus.event import Event
from eventbus.sync import EventBus
from eventbus.transport import Position

__all__ = ["event_json", "produce", "replay", "tail"]

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)

BATCH = 500
"""Events per publish_many call when stdin is a pipe (and for replay copies)."""


def event_json(item: Replayed) -> dict[str, Any]:
    """One replayed event as JSON: id, key, type, source, partition, position, offset, time
    (ISO), timestamp_ms, headers and data (bytes that are not UTF-8 as ``{"base64": ...}``)."""
    ev = item.event
    return {
        "id": ev.id,
        "key": ev.key,
        "type": ev.type,
        "source": ev.source,
        "topic": item.topic,
        "partition": item.partition,
        "position": str(item.position),
        "offset": item.offset,
        "time": ev.time.isoformat(),
        "timestamp_ms": item.timestamp_ms,
        "headers": dict(ev.headers),
        "data": jsonable(ev.data),
    }


def _position_json(position: Position) -> dict[str, Any]:
    return {"partition": position.partition, "position": str(position), "offset": position.offset}


# produce ------------------------------------------------------------------------------------


def _stdin_lines() -> Iterator[tuple[int, str]]:
    for number, line in enumerate(sys.stdin, start=1):
        if line.strip():
            yield number, line


def _parse_line(number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        fail(
            f"line {number}: not valid JSON ({exc.msg} at column {exc.colno}); events before "
            "it were published, nothing after it. Give one JSON value per line"
        )


def _print_positions(positions: list[Position], output: Output) -> None:
    for position in positions:
        if output is Output.json:
            emit_json(_position_json(position), lines=True)
        else:
            typer.echo(str(position))


def produce(
    topic: Annotated[str, typer.Argument(help="Topic to publish to (must exist).")],
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="One event's data as JSON (not stdin).")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Event key (picks the partition).")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="Header KEY=VALUE; repeatable."),
    ] = None,
    event_type: Annotated[str | None, typer.Option("--type", "-t", help="Event type.")] = None,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Publish events: --data JSON for one, or one JSON value per line on stdin.

    Prints each event's position (PARTITION:OFFSET) once the server holds it; with -o json,
    one {"partition", "position", "offset"} object per line. Lines are published in order
    (in batches when stdin is a pipe). An invalid line stops the command with its line
    number and exit code 1: the lines before it are published, none after it."""
    headers = parse_kv(header, "--header", "origin=import")
    with open_bus(url) as bus:
        if data is not None:
            value = _parse_line(1, data)
            _print_positions(
                [bus.publish(topic, value, key=key, headers=headers, type=event_type)], output
            )
            return
        if not bus.capabilities.auto_create_topics:  # (?auto_create=true creates it)
            bus.describe_topic(topic)  # unknown topic: fail before reading stdin
        interactive = stdin_is_tty()
        if interactive:
            typer.echo("reading one JSON value per line; Ctrl-D to end", err=True)
        batch: list[Event] = []
        for number, line in _stdin_lines():
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                _flush(bus, topic, batch, output)
                _parse_line(number, line)  # fails with the line number
            batch.append(Event(data=value, key=key, headers=headers, type=event_type))
            if interactive or len(batch) >= BATCH:
                _flush(bus, topic, batch, output)
        _flush(bus, topic, batch, output)


def _flush(bus: EventBus, topic: str, batch: list[Event], output: Output) -> None:
    if batch:
        _print_positions(bus.publish_many(topic, batch), output)
        batch.clear()


# tail ---------------------------------------------------------------------------------------


def _tail_start(from_beginning: bool, since: str | None, start: str | None) -> Any:
    given = [n for n, v in (("--from-beginning", from_beginning), ("--since", since),
                            ("--from", start)) if v]  # fmt: skip
    if len(given) > 1:
        usage_error(f"{' and '.join(given)} exclude each other; give one")
    if from_beginning:
        return "earliest"
    if since is not None:
        return parse_since(since)
    if start is not None:
        return parse_start_option(start, "--from")
    return None


def _print_event(item: Replayed, output: Output, out: Any) -> None:
    if output is Output.json:
        emit_json(event_json(item), lines=True)
        return
    from rich.markup import escape

    ev = item.event
    data = json.dumps(jsonable(ev.data), ensure_ascii=False)
    meta = f"[dim]{item.position}  {ev.time.isoformat(timespec='milliseconds')}[/dim]"
    if ev.key is not None:
        meta += f"  key=[cyan]{escape(ev.key)}[/cyan]"
    if ev.type is not None:
        meta += f"  type=[magenta]{escape(ev.type)}[/magenta]"
    if ev.headers:
        meta += "  " + escape(" ".join(f"{k}={v}" for k, v in ev.headers.items()))
    out.print(f"{meta}  {escape(data)}", soft_wrap=True)


def tail(
    topic: Annotated[str, typer.Argument(help="Topic to read.")],
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the earliest retained event.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="Start this long ago (30s, 10m, 2h, 7d) or at an ISO time.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="Start at PARTITION:POSITION (that partition only)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new events (Ctrl-C stops).")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Stop after N shown events.")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Only events with this key.")
    ] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", "-t", help="Only events of this type.")
    ] = None,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Print a topic's events, without joining a group (nothing is acked or committed).

    With --from-beginning, --since or --from: prints from there to the current end and stops
    (add --follow to keep waiting). With none of them: like `tail -f`, waits for and prints
    only new events until Ctrl-C or --limit. -o json prints one object per line with id,
    key, type, source, topic, partition, position, offset, time, timestamp_ms, headers, data.
    """
    begin = _tail_start(from_beginning, since, start)
    if begin is None:
        begin, follow = "latest", True
    shown = 0
    with open_bus(url) as bus:
        out = console()
        # follow: an end far in the future, as replay's default end (the last event present
        # when it began) also ends a followed replay (core issue, reported)
        end = _FAR_FUTURE if follow else None
        for item in bus.replay(topic, start=begin, end=end, follow=follow):
            if key is not None and item.event.key != key:
                continue
            if event_type is not None and item.event.type != event_type:
                continue
            _print_event(item, output, out)
            sys.stdout.flush()
            shown += 1
            if limit is not None and shown >= limit:
                break


# replay -------------------------------------------------------------------------------------


def _range(
    since: str | None, start: str | None, until: str | None, end: str | None
) -> tuple[Any, Any]:
    if since and start:
        usage_error("--since and --from exclude each other; give one")
    if until and end:
        usage_error("--until and --to exclude each other; give one")
    begin: Any = "earliest"
    if since is not None:
        begin = parse_since(since)
    elif start is not None:
        begin = parse_start_option(start, "--from")
    stop: Any = None
    if until is not None:
        stop = parse_since(until, option="--until")
    elif end is not None:
        stop = parse_start_option(end, "--to")
        if isinstance(stop, str):  # earliest / latest
            if stop == "earliest":
                usage_error("--to earliest makes an empty range")
            stop = None
    return begin, stop


def _copy(
    source: EventBus, topic: str, target: EventBus, into: str, begin: Any, stop: Any, bar: Any
) -> int:
    copied = 0
    batch: list[Event] = []
    for item in source.replay(topic, start=begin, end=stop):
        batch.append(item.event)
        if len(batch) >= BATCH:
            target.publish_many(into, batch)
            copied += len(batch)
            bar.advance(len(batch))
            batch.clear()
    if batch:
        target.publish_many(into, batch)
        copied += len(batch)
        bar.advance(len(batch))
    return copied


def replay(
    topic: Annotated[str, typer.Argument(help="Topic to copy from.")],
    into: Annotated[str, typer.Option("--into", help="Topic to copy into.")],
    into_url: Annotated[
        str | None,
        typer.Option("--into-url", help="Server of --into (default: the same as --url)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="From this long ago (10m, 2h, 7d) or an ISO time.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="From earliest, PARTITION:POSITION or an ISO time."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to this long ago (10m) or an ISO time, inclusive.")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Up to PARTITION:POSITION, inclusive.")
    ] = None,
    create: Annotated[
        bool,
        typer.Option("--create", help="Create --into with the source's settings if missing."),
    ] = False,
    url: UrlOption = None,
    output: OutputOption = Output.table,
) -> None:
    """Copy a range of events into another topic, on this server or another one.

    Works across transports (for example Redis to Kafka). Events keep their id, key, headers,
    type and time, and events of one key keep their order. Without --since/--from it copies
    from the earliest event; without --until/--to up to the last event present when it
    starts. Prints the count copied."""
    begin, stop = _range(since, start, until, end)
    url = resolve_url(url)
    with open_bus(url, resolved=True) as source:
        info = source.describe_topic(topic)
        if into_url is None or into_url == url:
            _run_copy(source, source, topic, into, info, begin, stop, create, output, into_url)
            return
        with open_bus(into_url) as target:
            _run_copy(source, target, topic, into, info, begin, stop, create, output, into_url)


def _run_copy(
    source: EventBus,
    target: EventBus,
    topic: str,
    into: str,
    info: Any,
    begin: Any,
    stop: Any,
    create: bool,
    output: Output,
    into_url: str | None,
) -> None:
    from eventbus._urls import redact

    if source is target and into == topic:
        fail("--into names the source topic; copy into another topic (or use --into-url)")
    try:
        target.describe_topic(into)
    except TopicNotFoundError:
        if not create:
            fail(f"topic {into!r} does not exist on the target: create it, or pass --create")
        target.create_topic(info.spec.model_copy(update={"name": into}))
    total = info.count if begin == "earliest" and stop is None else None
    started = datetime.now()
    with progress(f"copying {topic} -> {into}", total, enabled=output is Output.table) as bar:
        copied = _copy(source, topic, target, into, begin, stop, bar)
    seconds = (datetime.now() - started).total_seconds()
    if output is Output.json:
        emit_json(
            {
                "copied": copied,
                "from": topic,
                "into": into,
                "into_url": redact(into_url) if into_url else None,
                "seconds": round(seconds, 3),
            }
        )
    else:
        typer.echo(f"copied {copied} event(s) from {topic} to {into} in {seconds:.1f}s")
