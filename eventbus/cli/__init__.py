"""The ``eventbus`` command line (typer). Commands stay thin: they call the library and print.

To add a command group, write ``eventbus/cli/<name>.py`` with its own ``app = typer.Typer()`` and
add one line to ``_register()`` below. Shared options, output and error handling live in
:mod:`eventbus.cli._common`; every command takes ``--url`` (env ``EVENTBUS_URL``; without
either, a running ``eventbus dev up``, else exit 2) and ``--output table|json``, prints errors as
``error: ...`` on stderr and exits 1 (2 for a wrong command line, 3 for ``topics plan`` with
changes). ``-h`` is ``--help`` everywhere.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="eventbus",
    help="Events over Redis Streams, Kafka/Redpanda and memory: inspect, provision, migrate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # inherited by every sub-command's context
    context_settings={"help_option_names": ["-h", "--help"]},
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
    from eventbus.cli import demo, dev, doctor, events, groups, migrate, topics

    app.add_typer(topics.app, name="topics")
    app.add_typer(groups.app, name="groups")
    app.command(epilog=_PRODUCE_EXAMPLES)(events.produce)
    app.command(epilog=_TAIL_EXAMPLES)(events.tail)
    app.command(epilog=_REPLAY_EXAMPLES)(events.replay)
    app.command(epilog=_DOCTOR_EXAMPLES)(doctor.doctor)
    app.add_typer(migrate.app, name="migrate")
    app.command(epilog=_DEMO_EXAMPLES)(demo.demo)
    app.add_typer(dev.app, name="dev")


_DEMO_EXAMPLES = (
    "Examples:  eventbus demo\n\n"
    "eventbus demo --output json\n\n"
    "eventbus demo --from redis://localhost:6379/0 --to kafka://localhost:9092"
)
_PRODUCE_EXAMPLES = (
    "Examples:  eventbus produce tasks --key task-1 --data '{\"id\": 1}'\n\n"
    "cat events.jsonl | eventbus produce tasks --type TaskCreated -H origin=import -o json"
)
_TAIL_EXAMPLES = (
    "Examples:  eventbus tail tasks  (new events, until Ctrl-C)\n\n"
    "eventbus tail tasks --since 10m --key task-1 -o json\n\n"
    "eventbus tail tasks --from-beginning --limit 20"
)
_REPLAY_EXAMPLES = (
    "Example:  eventbus replay tasks --since 2h --into tasks --url redis://localhost:6379/0 "
    "--into-url kafka://localhost:9092 --create"
)
_DOCTOR_EXAMPLES = "Example:  EVENTBUS_URL=kafka://localhost:9092 eventbus doctor --strict"


_register()


def main() -> None:
    """Console-script entry point (``eventbus``).

    A last resort: an exception no command expected (a bug) ends in one ``error:`` line with
    the password of any URL scrubbed, and exit code 1; ``EVENTBUS_DEBUG=1`` re-raises it for
    the traceback."""
    try:
        app()
    except Exception as exc:  # commands handle what they expect; this is a bug's exit
        if os.environ.get("EVENTBUS_DEBUG"):
            raise
        from eventbus.cli._common import scrub

        text = scrub(f"{type(exc).__name__}: {exc}").splitlines() or [""]
        print(
            f"error: unexpected {text[0]} (a bug in eventbus; EVENTBUS_DEBUG=1 shows the "
            "traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
