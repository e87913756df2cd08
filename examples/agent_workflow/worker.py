"""The consumers: workers in one consumer group, each running eventbus's runner.

The runner acks a task after the handler returns, retries a failing handler in place with
backoff (so the workflow's later steps wait: per-key order holds), and after the last attempt
writes the task to the dead-letter topic with the reason in its headers, then goes on.
"""

from __future__ import annotations

import eventbus
from examples.agent_workflow.models import TaskCompleted, TaskRequested
from examples.agent_workflow.names import Names
from examples.agent_workflow.planner import STEPS


class TaskRefused(Exception):
    """The worker does not do this kind of task (no retry can change that)."""


async def perform(task: TaskRequested) -> str:
    """Do the agent's work for one task. A real worker would call a model or a tool here."""
    if task.kind not in STEPS:
        raise TaskRefused(f"task kind {task.kind!r} is not allowed for agents")
    return f"{task.kind} done: {task.prompt}"


class Worker:
    """One member of the workers' group: handles tasks and publishes their results."""

    def __init__(
        self,
        bus: eventbus.AsyncEventBus,
        names: Names,
        name: str,
        *,
        concurrency: int = 4,
        max_attempts: int = 3,
        backoff: float = 0.05,
    ) -> None:
        self.bus = bus
        self.names = names
        self.name = name
        self.runner = bus.runner(
            self.handle,
            names.tasks,
            group=names.group,
            consumer=name,
            model=TaskRequested,  # payloads that do not validate go to the DLQ at once
            concurrency=concurrency,  # tasks of different workflows run side by side
            max_attempts=max_attempts,
            backoff=backoff,
            dead_letter=names.dead_letters,
        )

    async def handle(self, delivery: eventbus.AsyncDelivery) -> None:
        task = delivery.event.data
        assert isinstance(task, TaskRequested)
        output = await perform(task)  # raises: the runner retries, then dead-letters
        done = TaskCompleted(
            task_id=task.task_id,
            workflow=task.workflow,
            step=task.step,
            kind=task.kind,
            worker=self.name,
            attempt=delivery.attempt,
            output=output,
        )
        await self.bus.publish(self.names.results, done, key=task.workflow)

    async def run(self) -> eventbus.RunnerStats:
        """Handle tasks until :meth:`stop`; returns the runner's counts."""
        return await self.runner.run()

    def stop(self) -> None:
        """Stop gracefully (from any thread): in-flight tasks finish and are acked."""
        self.runner.stop()
