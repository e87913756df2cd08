"""The ``eventbus`` command line (typer). Commands stay thin: they call the library and print.

To add a command group, write ``eventbus/cli/<name>.py`` with its own ``app = typer.Typer()`` and
add one line to ``_register()`` below.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="eventbus",
    help="Events over Redis Streams, Kafka/Redpanda and memory: inspect, provision, migrate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"eventbus {version('eventbus')}")
        except PackageNotFoundError:
            typer.echo("eventbus (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """eventbus: one API for events on Redis Streams, Kafka/Redpanda and memory."""


def _register() -> None:
    from eventbus.cli import dev

    app.add_typer(dev.app, name="dev")


_register()


def main() -> None:
    """Console-script entry point (``eventbus``)."""
    app()
