"""The producer: a planner that splits workflows into steps and publishes one task per step.

Each task is keyed by its workflow, so the steps of one workflow land on one partition and are
handled in order, while different workflows spread over the partitions and run in parallel.
One workflow also asks for a task kind the workers refuse: that task fails every attempt and
ends in the dead-letter topic, and the rest of its workflow goes on.
"""

from __future__ import annotations

import uuid

import eventbus
from examples.agent_workflow.models import TaskRequested
from examples.agent_workflow.names import Names

STEPS = ("search", "summarize", "review")
FORBIDDEN_KIND = "delete_everything"
"""The kind of task no worker accepts: it shows the retries and the dead-letter topic."""


def plan_tasks(workflows: int, run: str | None = None) -> list[TaskRequested]:
    """The tasks of ``workflows`` workflows, in step order; workflow 0 has one forbidden task
    in its middle."""
    run = run or uuid.uuid4().hex[:6]
    tasks: list[TaskRequested] = []
    for number in range(workflows):
        workflow = f"wf-{run}-{number}"
        kinds = list(STEPS)
        if number == 0:
            kinds.insert(1, FORBIDDEN_KIND)
        for step, kind in enumerate(kinds):
            tasks.append(
                TaskRequested(
                    task_id=f"{workflow}/{step}",
                    workflow=workflow,
                    step=step,
                    kind=kind,
                    prompt=f"{kind} for workflow {number}",
                )
            )
    return tasks


async def publish_tasks(
    bus: eventbus.AsyncEventBus, names: Names, tasks: list[TaskRequested]
) -> list[eventbus.Position]:
    """Publish ``tasks`` in one batch, each keyed by its workflow; returns their positions."""
    events = [
        eventbus.Event(data=task, key=task.workflow, type="TaskRequested", source="planner")
        for task in tasks
    ]
    return await bus.publish_many(names.tasks, events)
