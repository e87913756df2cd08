"""examples/agent_workflow end to end on memory, a real Redis and a real Kafka: the topics file
applied through the CLI, two workers, every task handled once, the refused one dead-lettered
with its reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import eventbus
from eventbus.cli import app
from examples.agent_workflow import FORBIDDEN_KIND, Names, run_workflow, topics_yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    """A fresh memory broker, or the session's real Redis / Kafka server."""
    if request.param == "memory":
        return f"memory://agent-{uuid.uuid4().hex[:10]}"
    server_url: str = request.getfixturevalue(f"{request.param}_url")
    return server_url


@pytest.fixture
def names(url: str, topic_name: str) -> Iterator[Names]:
    """Topic and group names unique to the test; its topics are deleted afterwards."""
    chosen = Names(prefix=f"{topic_name}.")
    yield chosen
    with eventbus.connect(url) as bus:
        existing = set(bus.list_topics())
        for topic in (chosen.tasks, chosen.dead_letters, chosen.results):
            if topic in existing:
                bus.delete_topic(topic)


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unexpected exception: {result.exception!r}\n{result.stderr}")
    return result.exit_code, result.stdout, result.stderr


def test_workflow_end_to_end(url: str, names: Names, tmp_path: Path) -> None:
    topics_file = tmp_path / "topics.yaml"
    topics_file.write_text(topics_yaml(names.prefix), encoding="utf-8")
    code, out, err = cli("topics", "apply", "-f", str(topics_file), "--url", url, "--yes",
                         "-o", "json")  # fmt: skip
    assert code == 0, err
    created = {c["topic"]: c["spec"] for c in json.loads(out)["changes"]}
    assert set(created) == {names.tasks, names.dead_letters, names.results}
    assert created[names.tasks]["partitions"] == 6
    assert created[names.tasks]["dead_letter"] == names.dead_letters
    code, _, err = cli("topics", "plan", "-f", str(topics_file), "--url", url)
    assert code == 0, err  # applied: nothing left to change

    tasks, report = asyncio.run(
        run_workflow(url, workflows=4, workers=2, prefix=names.prefix, timeout=90, echo=print)
    )

    ids = [task.task_id for task in tasks]
    refused = [task.task_id for task in tasks if task.kind == FORBIDDEN_KIND]
    assert len(ids) == 13 and len(refused) == 1
    assert report.completed == Counter({i: 1 for i in ids if i not in refused})
    assert report.missing(ids) == [] and report.duplicates() == []
    assert report.out_of_order() == [], report.steps  # each workflow's steps in order
    assert sum(report.workers.values()) == 12
    [letter] = report.dead
    assert letter.task is not None and letter.task.task_id == refused[0]
    assert letter.task.kind == FORBIDDEN_KIND
    assert letter.reason.startswith("TaskRefused: ") and FORBIDDEN_KIND in letter.reason
    assert letter.attempts == 3
    assert letter.source.startswith(f"{names.tasks}/")


def test_command_line_runs_the_whole_service_on_memory() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "examples.agent_workflow", "run", "--apply-topics",
         "--workflows", "2", "--timeout", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tasks 7: completed 6, dead-lettered 1, missing 0, handled twice 0" in done.stdout
    assert f"TaskRefused: task kind '{FORBIDDEN_KIND}' is not allowed" in done.stdout
