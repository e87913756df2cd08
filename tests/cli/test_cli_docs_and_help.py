"""docs/cli.md matches the CLI's --help; every command's help has an example; the CLI runs
as a subprocess (``python -m eventbus.cli``) against the real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from eventbus.cli import app
from eventbus.cli._docs import _paths, render_markdown
from tests.cli.clihelp import eventbus_subprocess, json_lines, ok

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
COMMANDS = [p[1:] for p in _paths(typer.main.get_command(app), ("eventbus",))]


def test_docs_are_up_to_date() -> None:
    assert DOCS.read_text(encoding="utf-8") == render_markdown(), (
        "docs/cli.md is out of date: run python scripts/gen_cli_docs.py"
    )


@pytest.mark.parametrize("path", [p for p in COMMANDS if p and p[0] != "dev"], ids=" ".join)
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = ok([*path, "--help"])
    is_group = len(path) == 1 and path[0] in ("topics", "groups", "migrate")
    if not is_group:
        assert "Example" in result.stdout, path
    # migrate and demo name two servers (--from, --to) instead of one --url
    server = "--from" if path[0] in ("migrate", "demo") else "--url"
    assert server in result.stdout or is_group


def test_version_and_completion_as_subprocess() -> None:
    version = eventbus_subprocess("--version")
    assert version.returncode == 0 and version.stdout.startswith("eventbus ")
    completion = eventbus_subprocess("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert completion.returncode == 0 and "complete" in completion.stdout


@pytest.mark.parametrize("server", [pytest.param("redis", marks=pytest.mark.redis),
                                    pytest.param("kafka", marks=pytest.mark.kafka)])  # fmt: skip
def test_subprocess_round_trip(server: str, request: pytest.FixtureRequest, name: str) -> None:
    url: str = request.getfixturevalue(f"{server}_url")
    env = {"EVENTBUS_URL": url}
    created = eventbus_subprocess("topics", "create", name, "-p", "2", env=env)
    assert created.returncode == 0, created.stderr
    produced = eventbus_subprocess(
        "produce", name, "--key", "k", "-o", "json", input='{"a": 1}\n{"a": 2}\n', env=env
    )
    assert produced.returncode == 0, produced.stderr
    positions = json_lines(produced.stdout)
    assert [p["partition"] for p in positions] == [positions[0]["partition"]] * 2
    tailed = eventbus_subprocess("tail", name, "--from-beginning", "-o", "json", env=env)
    assert tailed.returncode == 0, tailed.stderr
    events = json_lines(tailed.stdout)
    assert [e["data"] for e in events] == [{"a": 1}, {"a": 2}]
    assert [e["position"] for e in events] == [p["position"] for p in positions]
    doctor = eventbus_subprocess("doctor", "-o", "json", env=env)
    assert doctor.returncode == 0, doctor.stderr
    assert json.loads(doctor.stdout)["capabilities"]["transport"] == server
    deleted = eventbus_subprocess("topics", "delete", name, env=env)  # no TTY, no --yes
    assert deleted.returncode == 1 and "--yes" in deleted.stderr
