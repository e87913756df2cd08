"""Declarative topic files (YAML, or TOML by the ``.toml`` extension) to TopicSpecs.

Format::

    topics:
      - name: tasks
        partitions: 6
        retention: 7d            # or retention_ms: 604800000; forever = keep until deleted
        retention_bytes: 1GiB    # KiB/MiB/GiB = 1024^n bytes, KB/MB/GB = 1000^n
        cleanup_policy: delete
        max_event_bytes: 1MiB
        layout: {type: type, data: payload, key: task_id}   # Redis streams shared with
                                                             # other services (StreamLayout)
        dead_letter: tasks.dlq
        groups: [workers, auditors]
        config: {segment.ms: "3600000"}

:func:`load_specs` raises :class:`SpecFileError` whose message names the file and the entry
(``topics[2] 'tasks'``) and says what to fix. It never touches a server.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eventbus.topics import TopicSpec

__all__ = ["SpecFile", "SpecFileError", "load_specs"]


class SpecFileError(ValueError):
    """A topic file that cannot be read or does not describe valid topics."""


@dataclass(frozen=True)
class SpecFile:
    """The topics a file declares, and the dead-letter topics they name but do not declare."""

    path: Path
    specs: tuple[TopicSpec, ...]
    dead_letters: tuple[TopicSpec, ...]
    """``TopicSpec(dlq, partitions=<source's>, max_event_bytes=<source's>)`` for each
    ``dead_letter`` not declared itself; created when missing, never altered."""


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot read it: {exc.strerror}") from None
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecFileError(f"{path}: not valid TOML: {exc}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecFileError(f"{path}: not valid YAML{where}: {problem}") from None


def _entry_spec(path: Path, index: int, entry: Any) -> TopicSpec:
    label = f"{path}: topics[{index}]"
    if not isinstance(entry, dict):
        raise SpecFileError(f"{label}: each topic must be a mapping with at least 'name'")
    fields = dict(entry)
    name = fields.get("name")
    if name is not None:
        label += f" {name!r}"
    if "retention" in fields:
        if "retention_ms" in fields:
            raise SpecFileError(f"{label}: give 'retention' or 'retention_ms', not both")
        fields["retention_ms"] = fields.pop("retention")
    if isinstance(fields.get("groups"), list):
        fields["groups"] = tuple(fields["groups"])
    try:
        return TopicSpec(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {_reason(err)}"
            for err in exc.errors()
        )
        raise SpecFileError(f"{label}: {problems}") from None
    except TypeError as exc:
        raise SpecFileError(f"{label}: {exc}") from None


def _reason(err: Any) -> str:
    if err.get("type") == "extra_forbidden" and err.get("loc", ())[:1] == ("layout",):
        return "unknown layout field; use type, data, key, id, time, time_format, extras_prefix"
    if err.get("type") == "extra_forbidden":
        return (
            "unknown field; use name, partitions, retention (or retention_ms), "
            "retention_bytes, cleanup_policy, max_event_bytes, dead_letter, groups, config, "
            "layout"
        )
    if err.get("type") == "missing":
        return "required"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def load_specs(path: Path) -> SpecFile:
    """Read and validate ``path``; raises SpecFileError naming the file and the entry."""
    data = _read(path)
    if not isinstance(data, dict) or "topics" not in data:
        raise SpecFileError(f"{path}: expected a top-level 'topics:' list of topic entries")
    unknown = sorted(set(data) - {"topics"})
    if unknown:
        raise SpecFileError(f"{path}: unknown top-level key(s) {unknown}; only 'topics' is read")
    entries = data["topics"]
    if not isinstance(entries, list):
        raise SpecFileError(f"{path}: 'topics' must be a list of topic entries")
    specs: list[TopicSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        spec = _entry_spec(path, index, entry)
        if spec.name in seen:
            raise SpecFileError(f"{path}: topics[{index}] {spec.name!r} is declared twice")
        seen.add(spec.name)
        specs.append(spec)
    dead: dict[str, TopicSpec] = {}
    for spec in specs:
        if spec.dead_letter and spec.dead_letter not in seen and spec.dead_letter not in dead:
            dead[spec.dead_letter] = TopicSpec(
                name=spec.dead_letter,
                partitions=spec.partitions,
                max_event_bytes=spec.max_event_bytes,
            )
    return SpecFile(path, tuple(specs), tuple(dead.values()))
