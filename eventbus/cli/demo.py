"""``eventbus demo``: the main job, live, on embedded transports or real servers."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from eventbus.cli._common import Output, OutputOption, emit_json, errors_to_exit, remember_secret

__all__ = ["demo"]


def _positive_rate(value: float) -> float:
    if not (0 < value < math.inf):  # also refuses NaN
        raise typer.BadParameter(f"{value:g} is not a positive rate; give tasks per second > 0")
    return value


def demo(
    source: Annotated[
        str | None, typer.Option("--from", help="Source URL (default: an embedded 'redis').")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--to", help="Target URL (default: an embedded 'kafka').")
    ] = None,
    rate: Annotated[
        float,
        typer.Option(help="Tasks the planner publishes per second (> 0).", callback=_positive_rate),
    ] = 200.0,
    output: OutputOption = Output.table,
) -> None:
    """Migrate a running agent workflow from Redis to Kafka, stage by stage, and tally it:
    published, handled, lost (0), handled twice (0). No server needed by default."""
    from eventbus.demo import run_demo

    for url in (source, target):
        if url:
            remember_secret(url)
    quiet = output is Output.json
    with errors_to_exit():
        tally = run_demo(source, target, rate=rate, say=(lambda _: None) if quiet else typer.echo)
    if quiet:
        emit_json(tally.as_dict())
    if tally.lost or tally.handled_twice:
        raise typer.Exit(1)
