"""``eventbus doctor``: can we reach the server, what can its transport do, is the setup sane.

Checks, in order: the URL (scheme known, driver installed), connecting (with a deadline, so an
unreachable server fails fast), the server version where the transport reports one, the
transport's capabilities, and configuration sanity (each ``<topic>.dlq`` has as many partitions
as its topic). Exit code 1 when a check fails, or when one warns and ``--strict`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer

from eventbus._urls import redact
from eventbus.aio import AsyncEventBus, connect_async
from eventbus.cli._common import (
    EXIT_USAGE,
    Output,
    OutputOption,
    UrlOption,
    console,
    emit_json,
    resolve_url,
    scrub,
    usage_error,
)
from eventbus.errors import ConfigurationError, EventBusError, UnknownTransportError

__all__ = ["doctor"]

Status = Literal["ok", "warn", "fail", "info"]


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str


@dataclass
class Report:
    url: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    capabilities: dict[str, Any] | None = None
    server_version: str | None = None
    bad_url: bool = False
    """The URL itself is unusable (unknown scheme, malformed, unknown option): exit 2."""

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, scrub(detail)))

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    @property
    def warned(self) -> bool:
        return any(c.status == "warn" for c in self.checks)


def _drivers(report: Report) -> None:
    for dist in ("redis", "confluent-kafka"):
        try:
            report.add(f"driver {dist}", "info", importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            report.add(f"driver {dist}", "info", "not installed")


async def _server_version(bus: AsyncEventBus) -> str | None:
    """The transport's ``server_version()`` if it has one (not part of the contract yet)."""
    getter = getattr(bus.transport, "server_version", None)
    if getter is None:
        return None
    value = getter()
    if asyncio.iscoroutine(value):
        value = await value
    return None if value is None else str(value)


async def _sanity(bus: AsyncEventBus, report: Report) -> None:
    names = await bus.list_topics()
    report.add("topics", "ok", f"{len(names)} topic(s)")
    partitions = {n: len((await bus.describe_topic(n)).partitions) for n in names}
    bad = [
        f"{n} has {partitions[n]}, {n}.dlq has {partitions[f'{n}.dlq']}"
        for n in names
        if f"{n}.dlq" in partitions and partitions[f"{n}.dlq"] != partitions[n]
    ]
    if bad:
        report.add(
            "dead-letter partitions",
            "warn",
            "partition counts differ (dead-lettered events of one key land on other "
            "partitions than their source; give both the same partitions): " + "; ".join(bad),
        )
    else:
        report.add("dead-letter partitions", "ok", "every <topic>.dlq matches its topic")
    groups = await bus.list_groups()
    report.add("groups", "ok", f"{len(groups)} group(s)")


DEFAULT_TIMEOUT = 10.0

# The transport setting that bounds connecting, per URL scheme: --timeout sets it, so a
# driver that connects in a thread (Kafka) gives up when the command does.
_TIMEOUT_OPTIONS = {
    "kafka": ("connect_timeout",),
    "redpanda": ("connect_timeout",),
    "redis": ("socket_connect_timeout", "socket_timeout"),
    "rediss": ("socket_connect_timeout", "socket_timeout"),
    "redis+sentinel": ("socket_connect_timeout", "socket_timeout"),
}


def timeout_options(url: str, timeout: float | None) -> dict[str, Any]:
    """Transport options that make ``url``'s transport honour ``timeout`` seconds (none when
    ``timeout`` is None: the URL's own settings stand)."""
    if timeout is None:
        return {}
    scheme = url.partition("://")[0].lower()
    return dict.fromkeys(_TIMEOUT_OPTIONS.get(scheme, ()), timeout)


async def _run(url: str, timeout: float | None, report: Report) -> None:
    options = timeout_options(url, timeout)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    try:
        bus = connect_async(url, options=options)
    except EventBusError as exc:
        report.add("url", "fail", str(exc))
        report.bad_url = isinstance(exc, ConfigurationError | UnknownTransportError)
        return
    report.add("url", "ok", f"{redact(url)} -> transport {bus.capabilities.transport}")
    report.capabilities = dataclasses.asdict(bus.capabilities)
    started = time.monotonic()
    try:
        await asyncio.wait_for(bus.connect(), timeout)
    except TimeoutError:
        report.add("connect", "fail", f"no answer within {timeout:g}s: is the server up?")
        return
    except EventBusError as exc:
        report.add("connect", "fail", str(exc))
        return
    try:
        report.add("connect", "ok", f"answered in {(time.monotonic() - started) * 1000:.0f} ms")
        report.server_version = await _server_version(bus)
        report.add(
            "server version", "info", report.server_version or "not reported by this transport"
        )
        await _sanity(bus, report)
    except EventBusError as exc:
        report.add("inspect", "fail", str(exc))
    finally:
        with contextlib.suppress(TimeoutError, EventBusError):
            await asyncio.wait_for(bus.close(), timeout)


_MARK = {"ok": "[green]ok[/green]", "warn": "[yellow]WARN[/yellow]", "fail": "[red]FAIL[/red]",
         "info": "[dim]info[/dim]"}  # fmt: skip


def _print(report: Report) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    checks = Table(title=f"eventbus doctor: {escape(report.url)}")
    for col in ("check", "status", "detail"):
        checks.add_column(col)
    for c in report.checks:
        checks.add_row(c.name, _MARK[c.status], escape(c.detail))
    out.print(checks)
    if report.capabilities:
        caps = Table(title="capabilities")
        caps.add_column("capability")
        caps.add_column("value")
        for key, value in report.capabilities.items():
            caps.add_row(key, str(value))
        out.print(caps)


def doctor(
    url: UrlOption = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait for the server to answer, on every transport (sets the "
            "URL's connect timeout). Default: 10, or the URL's own connect timeout if shorter.",
            min=0.1,
            max=3600,
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    output: OutputOption = Output.table,
) -> None:
    """Check connectivity, show the transport's capabilities and flag risky configuration.

    Exit code 0 when all is well, 1 when a check fails (unreachable server, refused
    credentials, missing driver) or with --strict when one warns, 2 for a URL eventbus cannot
    use (unknown scheme, malformed, unknown option)."""
    if timeout is not None and math.isnan(timeout):  # click's range check lets NaN through
        usage_error("--timeout nan is not a number of seconds")
    url = resolve_url(url)
    report = Report(redact(url))
    _drivers(report)
    asyncio.run(_run(url, timeout, report))
    if output is Output.json:
        emit_json(
            {
                "url": report.url,
                "ok": not report.failed and not (strict and report.warned),
                "server_version": report.server_version,
                "capabilities": report.capabilities,
                "checks": [dataclasses.asdict(c) for c in report.checks],
            }
        )
    else:
        _print(report)
    if report.failed or (strict and report.warned):
        for c in report.checks:
            if c.status == "fail" or (strict and c.status == "warn"):
                typer.echo(f"error: {c.name}: {c.detail}", err=True)
        raise typer.Exit(EXIT_USAGE if report.bad_url else 1)
