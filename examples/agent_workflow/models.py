"""The events of the agent workflow: typed pydantic models, one per event type.

Published with ``bus.publish(topic, model, key=...)``; the event's ``type`` header is the
class name. Consumers pass ``model=`` to the runner, so a payload that does not validate is
dead-lettered at once instead of reaching a handler.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class TaskRequested(BaseModel):
    """The planner asks an agent to do one step of a workflow."""

    task_id: str
    """Unique per task: ``<run>-<workflow>/<step>``."""
    workflow: str
    """The workflow the step belongs to; also the event key, so a workflow's steps stay in
    order (one key, one partition, one handler at a time)."""
    step: int = Field(ge=0)
    kind: str
    """What to do: ``search``, ``summarize``, ``review``; workers refuse anything else."""
    prompt: str


class TaskCompleted(BaseModel):
    """A worker finished a task; published to the results topic with the workflow as key."""

    task_id: str
    workflow: str
    step: int
    kind: str
    worker: str
    """The worker (group member) that handled it."""
    attempt: int
    """Which delivery of the task succeeded (1 unless a try failed before)."""
    output: str
