"""Helpers every ``eventbus`` command shares: options, opening the bus, errors, output.

Contracts:

* Exit codes: 0 done; 1 the command ran and failed (server unreachable, topic missing,
  confirmation refused); 2 the command line is wrong (click's usage errors, no URL to use, a
  URL or option value eventbus cannot parse); 3 ``topics plan`` found changes.
* :func:`resolve_url` picks the server: ``--url`` / ``EVENTBUS_URL``, else a running
  ``eventbus dev up`` (said on stderr), else exit 2 saying how to give one. ``memory://`` is
  allowed with a warning: nothing in it outlives the command.
* :func:`open_bus` connects to that URL and turns every expected failure into one line on
  stderr (``error: ...``) and exit code 1 (2 for a URL it cannot use); no traceback, no
  credentials (the URL's password is scrubbed from any message even if an adapter forgot to
  redact it).
* :func:`emit_json` writes one JSON document (or one line in ``lines`` mode) to stdout; tables
  and progress bars go through :func:`console` and are used only in table mode.
* :func:`parse_kv`, :func:`parse_since` and :func:`parse_start_option` raise
  :class:`typer.BadParameter`-free errors: they call :func:`fail` with what to type instead
  and exit code 2.
* :func:`confirm_or_refuse` is the one gate of destructive commands: ``--yes`` skips it, a
  person on a terminal is asked, and without a terminal the command refuses (exit 1).
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
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import click
import typer

from eventbus._urls import redact
from eventbus.errors import ConfigurationError, EventBusError, UnknownTransportError
from eventbus.sync import EventBus, connect
from eventbus.topics import parse_duration_ms
from eventbus.transport import Position

__all__ = [
    "EXIT_CHANGES",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "NO_URL_MESSAGE",
    "Output",
    "OutputOption",
    "UrlOption",
    "YesOption",
    "confirm_or_refuse",
    "console",
    "emit_json",
    "errors_to_exit",
    "fmt_bytes",
    "fmt_ms",
    "fail",
    "jsonable",
    "open_bus",
    "parse_kv",
    "parse_since",
    "parse_start_option",
    "progress",
    "remember_secret",
    "resolve_url",
    "rich_help",
    "scrub",
    "stdin_is_tty",
    "stdout_is_tty",
    "usage_error",
    "warn",
]

EXIT_ERROR = 1
"""The command ran and failed."""
EXIT_USAGE = 2
"""The command line is wrong (click uses 2 for its own usage errors too)."""
EXIT_CHANGES = 3
"""``topics plan``: the server differs from the file (terraform's ``-detailed-exitcode``
uses 2, which click already uses for usage errors)."""

NO_URL_MESSAGE = (
    "no server given: pass --url redis://HOST:PORT/0 (or kafka://HOST:PORT), set "
    "EVENTBUS_URL, or start local servers with `eventbus dev up`"
)


def rich_help(text: str) -> str:
    """``text`` for a help string: ``[name]`` escaped when typer renders help with rich (whose
    markup would eat it), unchanged for the plain renderer (``TYPER_USE_RICH=0``, docs)."""
    import typer.core

    # typer 0.12 has no HAS_RICH: it renders with rich whenever rich is importable
    if not getattr(typer.core, "HAS_RICH", getattr(typer.core, "rich", None) is not None):
        return text
    from rich.markup import escape

    return escape(text)


class Output(enum.StrEnum):
    """How a command prints: a rich table for people, JSON for scripts."""

    table = "table"
    json = "json"


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        "-u",
        envvar="EVENTBUS_URL",
        show_envvar=True,
        help=rich_help(
            "Server URL: redis://[:pw@]host:port/db, rediss://..., kafka://host:port, "
            "redpanda://host:port, memory://[name] (this process only). Without it: the "
            "servers of a running `eventbus dev up` (Redis first), else exit 2. Passwords are "
            "never printed."
        ),
    ),
]
OutputOption = Annotated[
    Output,
    typer.Option("--output", "-o", case_sensitive=False, help="table (for people) or json."),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

_SECRETS: set[str] = set()


def remember_secret(url: str, _depth: int = 0) -> None:
    """Remember ``url``'s password (and those of URLs in its query, as ``migrate://`` nests
    them) so that :func:`scrub` hides them in anything printed."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        password = parts.password
        if password:
            _SECRETS.update({password, unquote(password), quote(unquote(password), safe="")})
        if _depth < 3:
            for _, value in parse_qsl(parts.query):
                if "://" in value:
                    remember_secret(value, _depth + 1)


def scrub(text: str) -> str:
    """``text`` with every password seen in a URL this process opened replaced by ``***``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (1 unless told)."""
    typer.echo(f"error: {scrub(message)}", err=True)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    """A command-line value eventbus cannot use: ``error: message`` and exit code 2."""
    fail(message, EXIT_USAGE)


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


def _scheme(url: str) -> str:
    return url.partition("://")[0].strip().lower() if "://" in url else ""


def resolve_url(url: str | None) -> str:
    """The server URL a command uses.

    ``url`` (from ``--url`` or ``EVENTBUS_URL``) when given; a ``memory://`` URL is used with a
    warning on stderr, since its broker dies with the command. Otherwise the Redis server of a
    running ``eventbus dev up``, else its Kafka server, named on stderr. Otherwise exits 2 with
    :data:`NO_URL_MESSAGE`. Never returns an empty string."""
    if url is not None and url.strip():
        remember_secret(url)
        if _scheme(url) == "memory":
            warn(
                "memory:// keeps events inside this process only: nothing created here "
                "outlives this command (use --url redis://... or kafka://... for a server)"
            )
        return url
    from eventbus.testing.servers import dev_urls

    found = dev_urls()
    for kind in ("redis", "kafka"):
        if kind in found:
            typer.echo(
                f"note: using {redact(found[kind])}, the {kind} server of `eventbus dev up` "
                "(no --url or EVENTBUS_URL given)",
                err=True,
            )
            remember_secret(found[kind])
            return found[kind]
    usage_error(NO_URL_MESSAGE)


@contextlib.contextmanager
def open_bus(url: str | None, *, resolved: bool = False) -> Iterator[EventBus]:
    """Connect to :func:`resolve_url` of ``url`` (``url`` itself when ``resolved``) and close
    afterwards; every EventBusError (including the ones the body raises) ends the command with
    ``error: ...`` on stderr and exit code 1, or 2 when the URL itself is unusable (unknown
    scheme, malformed, unknown option)."""
    url = url if resolved and url else resolve_url(url)
    with errors_to_exit():
        try:
            bus = connect(url)
        except EventBusError as exc:
            message = str(exc)
            code = EXIT_USAGE if isinstance(exc, ConfigurationError | UnknownTransportError) else 1
            fail(message if redact(url) in message else f"{redact(url)}: {message}", code)
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
    can answer (no TTY on stdin) and ``--yes`` was not given. Callers show the preview (what
    will change) first, and offer ``--dry-run`` to stop after it."""
    if yes:
        return
    if not stdin_is_tty():
        fail(
            f"refusing to {what} without confirmation: stdin is not a terminal; pass --yes "
            "(or --dry-run to only see what would change); nothing was changed"
        )
    try:
        agreed = typer.confirm(question, default=False, err=True)
    except click.exceptions.Abort:  # Ctrl-D / Ctrl-C at the prompt
        agreed = False
    if not agreed:
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


def fmt_ms(ms: int | None) -> str:
    """A duration in milliseconds the way an operator writes it (7d, 12h, 30m, 5s); - for none."""
    if ms is None:
        return "-"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms % 1000 else f"{ms // 1000}s"


def fmt_bytes(n: int | None) -> str:
    """A size in binary units when it is a whole number of them (1GiB, 512MiB); - for none."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def parse_kv(items: Sequence[str] | None, what: str, example: str) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` to ``{"a": "1", "b": "x=y"}``; exits 2 naming the bad item and
    showing ``example`` (a KEY=VALUE that fits the option)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            usage_error(f"{what} {item!r} is not KEY=VALUE (for example {what} {example})")
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
        try:
            return (now or datetime.now(UTC)) - timedelta(milliseconds=ms)
        except OverflowError:
            usage_error(f"{option} {text!r} reaches back before the year 1")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        usage_error(
            f"{option} {text!r} is neither a duration (30s, 10m, 2h, 7d) nor an ISO time "
            "(2026-01-31T12:00:00Z)"
        )
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_start_option(text: str, option: str) -> Any:
    """``earliest``, ``latest``, ``PARTITION:OFFSET`` or an ISO time, for ``--from``/``--to``;
    exits 2 with the accepted forms."""
    from eventbus.aio import parse_start

    try:
        return parse_start(text)
    except EventBusError as exc:
        usage_error(f"{option}: {exc}")
