"""What happened: results per task (replayed without a group) and the dead letters with their
reasons.

The runner writes why a task was dead-lettered into reserved ``eb-dlq-*`` headers
(``eb-dlq-reason``, ``eb-dlq-attempts``, ``eb-dlq-source``, ...). ``Event.headers`` holds only
user headers, so the dead letters are read as records through the transport contract
(``AsyncEventBus.transport.read``, documented in ``eventbus.transport``), which keeps them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pydantic import ValidationError

import eventbus
from eventbus.errors import TopicNotFoundError
from eventbus.transport import Offset
from examples.agent_workflow.models import TaskCompleted, TaskRequested
from examples.agent_workflow.names import Names


@dataclass(frozen=True)
class DeadLetter:
    """A task that failed every attempt, and why."""

    task: TaskRequested | None
    """None when the dead-lettered payload is not a valid TaskRequested."""
    reason: str
    attempts: int
    source: str
    """Where the original sat: ``topic/partition/offset``."""


@dataclass
class Report:
    """Results and dead letters found on the server."""

    completed: Counter[str] = field(default_factory=Counter)
    """Task id -> how many results it has (1 each in a clean run)."""
    steps: dict[str, list[int]] = field(default_factory=dict)
    """Workflow -> the steps of its results in the order they were written."""
    workers: Counter[str] = field(default_factory=Counter)
    dead: list[DeadLetter] = field(default_factory=list)

    @property
    def dead_ids(self) -> set[str]:
        return {d.task.task_id for d in self.dead if d.task is not None}

    def missing(self, task_ids: list[str]) -> list[str]:
        """Tasks with neither a result nor a dead letter."""
        return [t for t in task_ids if t not in self.completed and t not in self.dead_ids]

    def duplicates(self) -> list[str]:
        """Tasks with more than one result (possible after a crash: at-least-once)."""
        return sorted(t for t, n in self.completed.items() if n > 1)

    def out_of_order(self) -> list[str]:
        """Workflows whose results were not written in step order."""
        return sorted(w for w, steps in self.steps.items() if steps != sorted(steps))

    def lines(self) -> list[str]:
        out = [
            f"results: {sum(self.completed.values())} for {len(self.completed)} tasks, "
            f"{len(self.steps)} workflows; by worker: "
            + ", ".join(f"{w} {n}" for w, n in sorted(self.workers.items()))
        ]
        for letter in self.dead:
            what = letter.task.task_id if letter.task else "(unreadable task)"
            out.append(
                f"dead letter: {what} after {letter.attempts} attempts from {letter.source}: "
                f"{letter.reason}"
            )
        return out


async def collect(bus: eventbus.AsyncEventBus, names: Names) -> Report:
    """Read the results topic and the dead-letter topic from the beginning to their end."""
    report = Report()
    try:
        async for item in bus.replay(names.results, model=TaskCompleted):
            done = item.event.data
            assert isinstance(done, TaskCompleted)
            report.completed[done.task_id] += 1
            report.steps.setdefault(done.workflow, []).append(done.step)
            report.workers[done.worker] += 1
    except TopicNotFoundError:
        pass
    report.dead = await dead_letters(bus, names.dead_letters)
    return report


async def dead_letters(bus: eventbus.AsyncEventBus, topic: str) -> list[DeadLetter]:
    """Every record of the dead-letter ``topic`` with the reason headers the runner wrote."""
    try:
        info = await bus.describe_topic(topic)
    except TopicNotFoundError:
        return []  # nothing was dead-lettered (and the topics file was not applied)
    found: list[DeadLetter] = []
    for part in info.partitions:
        start: Offset | None = None
        while True:
            records = await bus.transport.read(
                topic, part.partition, start, inclusive=start is None, limit=500
            )
            if not records:
                break
            for record in records:
                headers = {k: v.decode("utf-8", "replace") for k, v in record.headers.items()}
                try:
                    task: TaskRequested | None = TaskRequested.model_validate_json(record.value)
                except ValidationError:
                    task = None
                found.append(
                    DeadLetter(
                        task=task,
                        reason=headers.get("eb-dlq-reason", ""),
                        attempts=int(headers.get("eb-dlq-attempts", "0") or 0),
                        source=headers.get("eb-dlq-source", ""),
                    )
                )
            start = records[-1].offset
    return found
