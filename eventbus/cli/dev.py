"""``eventbus dev``: local Redis and Apache Kafka servers for development, in the background.

The logic lives in :mod:`eventbus.testing.servers`; these commands only parse and print.
"""

from __future__ import annotations

import enum
import json
import shlex
from typing import Annotated, NoReturn

import typer

from eventbus.testing import servers

__all__ = ["app"]

app = typer.Typer(
    help="Run local Redis and Apache Kafka servers in the background for development and tests.",
    no_args_is_help=True,
)


class Output(enum.StrEnum):
    table = "table"
    json = "json"
    env = "env"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output", "-o", help="table, json, or env (shell `export` lines for eval).",
        case_sensitive=False,
    ),
]  # fmt: skip
RedisOnly = Annotated[bool, typer.Option("--redis-only", help="Only Redis.")]
KafkaOnly = Annotated[bool, typer.Option("--kafka-only", help="Only Kafka.")]


def _kinds(redis_only: bool, kafka_only: bool) -> tuple[str, ...]:
    if redis_only and kafka_only:
        _fail("--redis-only and --kafka-only exclude each other")
    if redis_only:
        return ("redis",)
    if kafka_only:
        return ("kafka",)
    return servers.DEV_KINDS


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print(result: servers.DevServers, output: Output, title: str) -> None:
    data = result.to_json()
    if output is Output.json:
        typer.echo(json.dumps(data, indent=2))
        return
    if output is Output.env:
        for kind, var in (
            ("redis", "EVENTBUS_TEST_REDIS_URL"),
            ("kafka", "EVENTBUS_TEST_KAFKA_URL"),
        ):
            server = result.servers.get(kind)
            if server is not None and result.running.get(kind):
                typer.echo(f"export {var}={shlex.quote(server.url)}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("server", "url", "pid", "version", "state", "log"):
        table.add_column(column)
    for kind in servers.DEV_KINDS:
        server = result.servers.get(kind)
        if server is None:
            state = "stopped" if result.stopped.get(kind) else "not started"
            table.add_row(kind, "-", "-", "-", state, "-")
            continue
        state = "running" if result.running.get(kind) else "NOT RUNNING"
        if result.reused.get(kind):
            state += " (reused)"
        table.add_row(
            kind, server.url, str(server.pid), server.version, state, str(server.log_path)
        )
    Console().print(table)
    typer.echo(f"state: {data['state_file']}")


@app.command()
def up(
    output: OutputOption = Output.table,
    redis_only: RedisOnly = False,
    kafka_only: KafkaOnly = False,
    appendonly: Annotated[
        bool, typer.Option("--redis-aof", help="Start Redis with the append-only file on.")
    ] = False,
    kafka_brokers: Annotated[
        int,
        typer.Option(
            "--kafka-brokers",
            min=1,
            max=9,
            help="Kafka brokers: 1 is a single node; more start a replicated KRaft cluster "
            "(each node broker and controller; replication factor 3, min.insync.replicas 2).",
        ),
    ] = 1,
) -> None:
    """Start Redis and Kafka in the background (or reuse the running ones) and print their URLs."""
    kinds = _kinds(redis_only, kafka_only)
    try:
        result = servers.dev_up(kinds, redis_appendonly=appendonly, kafka_brokers=kafka_brokers)
    except servers.ServerError as exc:
        _fail(str(exc))
    _print(result, output, "eventbus dev servers")


@app.command()
def status(output: OutputOption = Output.table) -> None:
    """Show the recorded servers and whether they are running."""
    _print(servers.dev_status(), output, "eventbus dev servers")


@app.command()
def down(
    output: OutputOption = Output.table,
    redis_only: RedisOnly = False,
    kafka_only: KafkaOnly = False,
) -> None:
    """Stop the servers started by `eventbus dev up`."""
    kinds = _kinds(redis_only, kafka_only)
    try:
        result = servers.dev_down(kinds)
    except servers.ServerError as exc:
        _fail(str(exc))
    _print(result, output, "eventbus dev servers")
