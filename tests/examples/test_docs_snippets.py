"""The code the docs show is the code that runs: the quickstart page's program, and the
example page's copy of the topics file."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml

from examples.agent_workflow import TOPICS_FILE

DOCS = Path(__file__).resolve().parents[2] / "docs"


def blocks(page: str, language: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def test_quickstart_program_runs(capsys: pytest.CaptureFixture[str]) -> None:
    [program] = blocks("index.md", "python")
    assert 'eventbus.connect("memory://")' in program
    # a broker of its own: other tests of this process may use the default one
    program = program.replace('"memory://"', f'"memory://docs-{uuid.uuid4().hex[:8]}"')
    exec(compile(program, "docs/index.md", "exec"), {"__name__": "docs_index"})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[-1] == "0", lines  # six replayed events, then lag 0
    assert all(" TaskCreated " in line for line in lines[:6])


def test_example_page_shows_the_topics_file() -> None:
    [shown] = blocks("example.md", "yaml")
    assert yaml.safe_load(shown) == yaml.safe_load(TOPICS_FILE.read_text(encoding="utf-8"))
