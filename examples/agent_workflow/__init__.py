"""An agent-workflow service on eventbus, using only its public API.

A planner publishes typed tasks (``TaskRequested``) keyed by workflow; workers in one consumer
group run them with eventbus's runner (per-workflow order, retries with backoff, a dead-letter
topic) and publish ``TaskCompleted`` results. One task kind is always refused, to show the
dead-letter topic. Topics are declared in ``topics.yaml`` and applied with
``eventbus topics apply``. See README.md beside this file, or
``python -m examples.agent_workflow --help``.
"""

from examples.agent_workflow.models import TaskCompleted, TaskRequested
from examples.agent_workflow.names import TOPICS_FILE, Names, topics_yaml
from examples.agent_workflow.planner import FORBIDDEN_KIND, plan_tasks, publish_tasks
from examples.agent_workflow.report import DeadLetter, Report, collect
from examples.agent_workflow.worker import TaskRefused, Worker
from examples.agent_workflow.workflow import apply_topics, run_workflow, wait_settled

__all__ = [
    "FORBIDDEN_KIND",
    "TOPICS_FILE",
    "DeadLetter",
    "Names",
    "Report",
    "TaskCompleted",
    "TaskRefused",
    "TaskRequested",
    "Worker",
    "apply_topics",
    "collect",
    "plan_tasks",
    "publish_tasks",
    "run_workflow",
    "topics_yaml",
    "wait_settled",
]
