"""Command line of the agent workflow example.

    python -m examples.agent_workflow run --apply-topics          # all in one process, memory://
    python -m examples.agent_workflow work --url URL --name worker-1     # a worker, until Ctrl-C
    python -m examples.agent_workflow plan --url URL --workflows 5       # publish tasks
    python -m examples.agent_workflow report --url URL                   # results, dead letters

URLs are never printed (they may hold credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import eventbus
from examples.agent_workflow.names import Names
from examples.agent_workflow.planner import plan_tasks, publish_tasks
from examples.agent_workflow.report import collect
from examples.agent_workflow.worker import Worker
from examples.agent_workflow.workflow import apply_topics, run_workflow


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default="memory://", help="server URL (memory://, redis://, kafka://, ...)"
    )
    common.add_argument("--prefix", default="", help="prefix for every topic and group name")
    parser = argparse.ArgumentParser(
        prog="python -m examples.agent_workflow",
        description="A planner and workers on eventbus, with retries and a dead-letter topic.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common], help="planner and workers in one process")
    run.add_argument("--workflows", type=int, default=4)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--timeout", type=float, default=60.0)
    run.add_argument(
        "--apply-topics",
        action="store_true",
        help="run `eventbus topics apply` on topics.yaml first (needed for memory://)",
    )
    plan = commands.add_parser("plan", parents=[common], help="publish the tasks of workflows")
    plan.add_argument("--workflows", type=int, default=4)
    work = commands.add_parser("work", parents=[common], help="run one worker until Ctrl-C")
    work.add_argument("--name", default="worker-1", help="member name in the group")
    work.add_argument("--concurrency", type=int, default=4)
    commands.add_parser("report", parents=[common], help="print results and dead letters")
    return parser


async def _run(args: argparse.Namespace) -> int:
    if args.apply_topics:
        apply_topics(args.url, args.prefix)
    tasks, report = await run_workflow(
        args.url,
        workflows=args.workflows,
        workers=args.workers,
        prefix=args.prefix,
        timeout=args.timeout,
    )
    for line in report.lines():
        print(line)
    ids = [task.task_id for task in tasks]
    missing, twice = report.missing(ids), report.duplicates()
    print(
        f"tasks {len(ids)}: completed {len(report.completed)}, dead-lettered "
        f"{len(report.dead_ids)}, missing {len(missing)}, handled twice {len(twice)}"
    )
    return 1 if missing or twice else 0


async def _plan(args: argparse.Namespace) -> int:
    async with eventbus.connect_async(args.url, source="planner") as bus:
        tasks = plan_tasks(args.workflows)
        positions = await publish_tasks(bus, Names(args.prefix), tasks)
    for task, position in zip(tasks, positions, strict=True):
        print(f"{position}  {task.task_id}  {task.kind}")
    return 0


async def _work(args: argparse.Namespace) -> int:
    async with eventbus.connect_async(args.url) as bus:
        worker = Worker(bus, Names(args.prefix), args.name, concurrency=args.concurrency)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, worker.stop)
        print(f"{args.name}: handling tasks until Ctrl-C")
        stats = await worker.run()
    print(f"{args.name}: handled {stats.handled}, dead-lettered {stats.dead_lettered}")
    return 0


async def _report(args: argparse.Namespace) -> int:
    async with eventbus.connect_async(args.url) as bus:
        report = await collect(bus, Names(args.prefix))
    for line in report.lines():
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the runner logs each failed attempt (WARNING) and each dead letter (ERROR)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    command = {"run": _run, "plan": _plan, "work": _work, "report": _report}[args.command]
    try:
        return asyncio.run(command(args))
    except eventbus.EventBusError as exc:  # messages never hold credentials
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
