"""Helpers every ``eventbus`` command shares: options, opening the bus, errors, output.

Contracts:

* :func:`open_bus` connects to ``--url`` and turns every expected failure into one line on
  stderr (``error: ...``) and exit code 1; no traceback, no credentials (the URL's password is
  scrubbed from any message even if an adapter forgot to redact it).
* :func:`emit_json` writes one JSON document (or one line in ``lines`` mode) to stdout; tables
  and progress bars go through :func:`console` and are used only in table mode.
* :func:`parse_kv`, :func:`parse_since` and :func:`parse_start_option` raise
  :class:`typer.BadParameter`-free errors: they call :func:`fail` with what to type instead.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn
from urllib.parse import unquote, urlsplit

import typer

from eventbus._urls import redact
from eventbus.errors import EventBusError
from eventbus.sync import EventBus, connect
from eventbus.topics import parse_duration_ms
from eventbus.transport import Position

__all__ = [
    "DEFAULT_URL",
    "Output",
    "OutputOption",
    "UrlOption",
    "YesOption",
    "confirm_or_refuse",
    "console",
    "emit_json",
    "errors_to_exit",
    "fail",
    "jsonable",
    "open_bus",
    "parse_kv",
    "parse_since",
    "parse_start_option",
    "progress",
    "remember_secret",
    "scrub",
    "stdin_is_tty",
    "stdout_is_tty",
    "warn",
]

DEFAULT_URL = "memory://"


class Output(enum.StrEnum):
    """How a command prints: a rich table for people, JSON for scripts."""

    table = "table"
    json = "json"


UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        "-u",
        envvar="EVENTBUS_URL",
        show_envvar=True,
        help="Server URL: memory://[name], redis://[:pw@]host:port/db, rediss://..., "
        "kafka://host:port, redpanda://host:port. Passwords are never printed.",
    ),
]
OutputOption = Annotated[
    Output,
    typer.Option("--output", "-o", case_sensitive=False, help="table (for people) or json."),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

_SECRETS: set[str] = set()


def remember_secret(url: str) -> None:
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password:
            _SECRETS.update({password, unquote(password)})


def scrub(text: str) -> str:
    """``text`` with every password seen in a URL this process opened replaced by ``***``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (1 unless told)."""
    typer.echo(f"error: {scrub(message)}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr (both output modes; stdout stays parseable)."""
    typer.echo(f"warning: {scrub(message)}", err=True)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn expected errors (EventBusError, ValueError from parsing, a closed pipe, Ctrl-C)
    into a message on stderr and an exit code, never a traceback."""
    try:
        yield
    except EventBusError as exc:
        fail(f"{exc}")
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:  # `eventbus tail ... | head`
        with contextlib.suppress(Exception):
            sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - silence the final flush
        raise typer.Exit(0) from None


@contextlib.contextmanager
def open_bus(url: str) -> Iterator[EventBus]:
    """Connect to ``url`` and close afterwards; every EventBusError (including the ones the
    body raises) ends the command with ``error: ...`` on stderr and exit code 1."""
    remember_secret(url)
    with errors_to_exit():
        try:
            bus = connect(url)
        except EventBusError as exc:
            message = str(exc)
            fail(message if redact(url) in message else f"{redact(url)}: {message}")
        try:
            yield bus
        finally:
            with contextlib.suppress(EventBusError):
                bus.close()


def stdin_is_tty() -> bool:
    """True when a person can answer a prompt (tests monkeypatch this)."""
    return sys.stdin.isatty()


def stdout_is_tty() -> bool:
    """True when stdout is a terminal: progress bars are shown only then."""
    return sys.stdout.isatty()


def confirm_or_refuse(question: str, *, yes: bool, what: str) -> None:
    """Return when the user agreed (or ``yes``); exit 1 when they declined, or when nobody
    can answer (no TTY on stdin) and ``--yes`` was not given."""
    if yes:
        return
    if not stdin_is_tty():
        fail(f"refusing to {what} without confirmation: stdin is not a terminal; pass --yes")
    if not typer.confirm(question, default=False, err=True):
        fail("aborted; nothing was changed")


def console(stderr: bool = False) -> Any:
    """A rich Console for tables and progress (imported lazily: rich is a CLI extra)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


@contextlib.contextmanager
def progress(description: str, total: int | None, *, enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr when ``enabled`` and stderr is a terminal; otherwise a
    no-op object with the same ``advance(n)`` method. Yields an object with ``advance``."""
    if not enabled or not sys.stderr.isatty():
        yield _NoProgress()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield _Progress(bar, task)


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        """Nothing to show."""


class _Progress:
    def __init__(self, bar: Any, task: Any) -> None:
        self._bar = bar
        self._task = task

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)


def jsonable(value: Any) -> Any:
    """``value`` made JSON-ready: pydantic models dumped, datetimes ISO, bytes as UTF-8 text
    (base64 in ``{"base64": ...}`` when not UTF-8), tuples as lists."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json"))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, Position):
        return str(value)
    return value


def emit_json(value: Any, *, lines: bool = False) -> None:
    """Print ``value`` as JSON on stdout: indented, or compact on one line when ``lines``."""
    text = json.dumps(jsonable(value), indent=None if lines else 2, ensure_ascii=False)
    typer.echo(text)


def parse_kv(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` to ``{"a": "1", "b": "x=y"}``; exits 1 naming the bad item."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{what} {item!r} is not KEY=VALUE (for example {what} segment.ms=3600000)")
        out[key.strip()] = value
    return out


def parse_since(text: str, *, now: datetime | None = None, option: str = "--since") -> datetime:
    """``"10m"``, ``"2h"``, ``"7d"`` (that long ago) or an ISO time, as an aware datetime."""
    text = text.strip()
    try:
        ms = parse_duration_ms(text)
    except ValueError:
        pass
    else:
        return (now or datetime.now(UTC)) - timedelta(milliseconds=ms)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(
            f"{option} {text!r} is neither a duration (30s, 10m, 2h, 7d) nor an ISO time "
            "(2026-01-31T12:00:00Z)"
        )
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_start_option(text: str, option: str) -> Any:
    """``earliest``, ``latest``, ``PARTITION:OFFSET`` or an ISO time, for ``--from``/``--to``;
    exits 1 with the accepted forms."""
    from eventbus.aio import parse_start

    try:
        return parse_start(text)
    except EventBusError as exc:
        fail(f"{option}: {exc}")
