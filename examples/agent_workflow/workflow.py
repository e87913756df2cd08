"""The whole service in one process: apply the topics, start the workers, plan, wait, report.

Each worker has its own bus (as separate processes would); on ``memory://`` they share the
process's in-memory broker, so the example runs without any server.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import eventbus
from examples.agent_workflow.models import TaskRequested
from examples.agent_workflow.names import TOPICS_FILE, Names, topics_yaml
from examples.agent_workflow.planner import plan_tasks, publish_tasks
from examples.agent_workflow.report import Report, collect
from examples.agent_workflow.worker import Worker


def apply_topics(url: str, prefix: str = "") -> None:
    """Run ``eventbus topics apply -f topics.yaml --url URL --yes`` in this process (so that
    it also works for ``memory://``, whose broker lives in the process)."""
    from eventbus.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        path = TOPICS_FILE
        if prefix:
            path = Path(tmp) / "topics.yaml"
            path.write_text(topics_yaml(prefix), encoding="utf-8")
        args = ["topics", "apply", "-f", str(path), "--url", url, "--yes"]
        code = app(args, standalone_mode=False)
    if code:
        raise SystemExit(f"eventbus topics apply failed (exit code {code})")


async def wait_settled(
    bus: eventbus.AsyncEventBus,
    names: Names,
    task_ids: list[str],
    *,
    timeout: float,
    workers: Sequence[asyncio.Task[eventbus.RunnerStats]] = (),
) -> Report:
    """Poll until every task has a result or a dead letter; TimeoutError after ``timeout`` s.
    A worker that stopped with an error raises that error here."""
    deadline = time.monotonic() + timeout
    while True:
        for task in workers:
            if task.done():
                task.result()  # raises the worker's error
        report = await collect(bus, names)
        missing = report.missing(task_ids)
        if not missing:
            return report
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} task(s) still unhandled after {timeout}s")
        await asyncio.sleep(0.2)


async def _joined(
    crew: Sequence[Worker], running: Sequence[asyncio.Task[eventbus.RunnerStats]], timeout: float
) -> None:
    """Wait until every worker has joined the group (or one failed, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not all(worker.runner.started.is_set() for worker in crew):
        for task in running:
            if task.done():
                task.result()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers did not join their group within {timeout}s")
        await asyncio.sleep(0.05)


async def run_workflow(
    url: str = "memory://",
    *,
    workflows: int = 4,
    workers: int = 2,
    prefix: str = "",
    timeout: float = 60.0,
    echo: Callable[[str], None] = print,
) -> tuple[list[TaskRequested], Report]:
    """Start ``workers`` workers, publish the tasks of ``workflows`` workflows, wait until each
    is done or dead-lettered, stop the workers. Returns the tasks and the report."""
    names = Names(prefix)
    tasks = plan_tasks(workflows)
    async with contextlib.AsyncExitStack() as stack:
        planner = await stack.enter_async_context(eventbus.connect_async(url, source="planner"))
        crew: list[Worker] = []
        for number in range(1, workers + 1):
            bus = await stack.enter_async_context(eventbus.connect_async(url))
            crew.append(Worker(bus, names, f"worker-{number}"))
        running = [asyncio.create_task(worker.run()) for worker in crew]
        try:
            await _joined(crew, running, timeout)  # so the first tasks are shared out
            positions = await publish_tasks(planner, names, tasks)
            echo(f"planner: published {len(positions)} tasks of {workflows} workflows")
            ids = [task.task_id for task in tasks]
            report = await wait_settled(planner, names, ids, timeout=timeout, workers=running)
        finally:
            for worker in crew:
                worker.stop()
            stats = await asyncio.gather(*running, return_exceptions=True)
        for worker, result in zip(crew, stats, strict=True):
            if isinstance(result, BaseException):
                raise result
            echo(
                f"{worker.name}: handled {result.handled}, failed attempts "
                f"{result.failed_attempts}, dead-lettered {result.dead_lettered}"
            )
    return tasks, report
