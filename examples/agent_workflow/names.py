"""Topic and group names of the example, and its topics file.

``topics.yaml`` (beside this module) declares the topics. A prefix puts a whole copy of the
workflow under other names on a shared server (one per developer, or per test): every name in
the file and in the code gets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TOPICS_FILE = Path(__file__).resolve().parent / "topics.yaml"


@dataclass(frozen=True)
class Names:
    """Where the workflow's events go, and its consumer group."""

    prefix: str = ""

    @property
    def tasks(self) -> str:
        return f"{self.prefix}agent.tasks"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}agent.tasks.dlq"

    @property
    def results(self) -> str:
        return f"{self.prefix}agent.results"

    @property
    def group(self) -> str:
        return f"{self.prefix}agent-workers"


def topics_yaml(prefix: str = "") -> str:
    """The topics file's text, with ``prefix`` before every topic and group name."""
    text = TOPICS_FILE.read_text(encoding="utf-8")
    if not prefix:
        return text
    doc: dict[str, Any] = yaml.safe_load(text)
    for entry in doc["topics"]:
        entry["name"] = prefix + entry["name"]
        if entry.get("dead_letter"):
            entry["dead_letter"] = prefix + entry["dead_letter"]
        entry["groups"] = [prefix + group for group in entry.get("groups", [])]
    return yaml.safe_dump(doc, sort_keys=False)
