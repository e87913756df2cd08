"""``eventbus topics plan|apply -f FILE``: detailed exit codes, idempotence, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eventbus.cli._common as common
from tests.cli.clihelp import ok, ok_json, run

YAML = """\
topics:
  - name: {name}
    partitions: {partitions}
    retention: 7d
    retention_bytes: 1GiB
    cleanup_policy: delete
    max_event_bytes: 512KiB
    dead_letter: {name}.dlq
    groups: [workers, auditors]
    config: {{segment.ms: "3600000"}}
  - name: {name}-audit
    partitions: 1
    retention_ms: 3600000
"""

TOML = """\
[[topics]]
name = "{name}"
partitions = {partitions}
retention = "7d"
dead_letter = "{name}.dlq"
groups = ["workers"]

[[topics]]
name = "{name}-audit"
"""


def _write(tmp_path: Path, name: str, partitions: int, toml: bool = False) -> Path:
    path = tmp_path / ("topics.toml" if toml else "topics.yaml")
    path.write_text((TOML if toml else YAML).format(name=name, partitions=partitions))
    return path


def test_plan_apply_is_idempotent(bus_url: str, name: str, tmp_path: Path) -> None:
    path = _write(tmp_path, name, 3)
    planned = run(["topics", "plan", "-f", str(path), "--url", bus_url, "-o", "json"])
    assert planned.exit_code == 3, planned.stderr
    doc = json.loads(planned.stdout)
    assert doc["destructive"] is False
    by_topic = {c["topic"]: c for c in doc["changes"]}
    assert set(by_topic) == {name, f"{name}-audit", f"{name}.dlq"}
    assert all(c["action"] == "create" for c in doc["changes"])
    assert by_topic[name]["spec"]["retention_ms"] == 7 * 86_400_000
    if bus_url.startswith("redis"):  # Redis cannot retain by size: dropped with a warning
        assert by_topic[name]["spec"]["retention_bytes"] is None
        assert "retention_bytes ignored" in planned.stderr
    else:
        assert by_topic[name]["spec"]["retention_bytes"] == 1 << 30
    assert by_topic[name]["spec"]["max_event_bytes"] == 512 * 1024
    assert by_topic[name]["spec"]["groups"] == ["workers", "auditors"]
    assert by_topic[f"{name}.dlq"]["spec"]["partitions"] == 3  # the dead letter's partitions

    applied = ok_json(["topics", "apply", "-f", str(path), "--yes", "--url", bus_url])
    assert applied["applied"] is True
    assert {c["topic"] for c in applied["changes"]} == set(by_topic)

    info = ok_json(["topics", "describe", name, "--url", bus_url])
    assert len(info["partitions"]) == 3
    assert info["spec"]["retention_ms"] == 7 * 86_400_000
    assert len(ok_json(["topics", "describe", f"{name}.dlq", "--url", bus_url])["partitions"]) == 3

    again = run(["topics", "plan", "-f", str(path), "--url", bus_url])
    assert again.exit_code == 0, (again.stdout, again.stderr)
    assert "no changes" in again.stdout
    second = ok_json(["topics", "apply", "-f", str(path), "--yes", "--url", bus_url])
    assert second["changes"] == []


def test_adding_partitions_warns(bus_url: str, name: str, tmp_path: Path) -> None:
    ok(["topics", "apply", "-f", str(_write(tmp_path, name, 2)), "--yes", "--url", bus_url])
    grown = _write(tmp_path, name, 4)
    planned = run(["topics", "plan", "-f", str(grown), "--url", bus_url])
    assert planned.exit_code == 3
    assert "partitions" in planned.stdout and "moves existing keys" in planned.stderr
    applied = run(["topics", "apply", "-f", str(grown), "--yes", "--url", bus_url])
    assert applied.exit_code == 0, applied.stderr
    assert "moves existing keys" in applied.stderr
    assert len(ok_json(["topics", "describe", name, "--url", bus_url])["partitions"]) == 4
    # the existing dead-letter topic is left alone (the file does not declare it)
    assert len(ok_json(["topics", "describe", f"{name}.dlq", "--url", bus_url])["partitions"]) == 2


def test_destructive_changes_need_the_flag(mem_url: str, name: str, tmp_path: Path) -> None:
    ok(["topics", "apply", "-f", str(_write(tmp_path, name, 4)), "--yes", "--url", mem_url])
    shrunk = _write(tmp_path, name, 2)
    plan_json = run(["topics", "plan", "-f", str(shrunk), "--url", mem_url, "-o", "json"])
    assert plan_json.exit_code == 3
    assert '"destructive": true' in plan_json.stdout
    refused = run(["topics", "apply", "-f", str(shrunk), "--yes", "--url", mem_url])
    assert refused.exit_code == 1
    assert "--allow-destructive" in refused.stderr and "nothing was changed" in refused.stderr
    assert len(ok_json(["topics", "describe", name, "--url", mem_url])["partitions"]) == 4
    ok(["topics", "apply", "-f", str(shrunk), "--yes", "--allow-destructive", "--url", mem_url])
    assert len(ok_json(["topics", "describe", name, "--url", mem_url])["partitions"]) == 2


def test_apply_asks_or_refuses(
    mem_url: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, name, 1)
    refused = run(["topics", "apply", "-f", str(path), "--url", mem_url])
    assert refused.exit_code == 1 and "--yes" in refused.stderr
    assert run(["topics", "plan", "-f", str(path), "--url", mem_url]).exit_code == 3
    monkeypatch.setattr(common, "stdin_is_tty", lambda: True)
    assert run(["topics", "apply", "-f", str(path), "--url", mem_url], input="n\n").exit_code == 1
    ok(["topics", "apply", "-f", str(path), "--url", mem_url], input="y\n")
    assert run(["topics", "plan", "-f", str(path), "--url", mem_url]).exit_code == 0


def test_toml_file(mem_url: str, name: str, tmp_path: Path) -> None:
    path = _write(tmp_path, name, 2, toml=True)
    applied = ok_json(["topics", "apply", "-f", str(path), "--yes", "--url", mem_url])
    assert {c["topic"] for c in applied["changes"]} == {name, f"{name}-audit", f"{name}.dlq"}
    assert run(["topics", "plan", "-f", str(path), "--url", mem_url]).exit_code == 0


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("topics:\n  - name: a\n    partitions: [\n", ["not valid YAML", "line"]),
        ("tasks: []\n", ["top-level 'topics:'"]),
        ("topics: {a: 1}\n", ["must be a list"]),
        ("topics:\n  - name: ok\n  - nme: typo\n", ["topics[1]", "nme", "unknown field"]),
        ("topics:\n  - name: x\n    partitions: 0\n", ["topics[0] 'x'", "partitions"]),
        ("topics:\n  - name: x\n    retention: 7x\n", ["topics[0] 'x'", "duration"]),
        ("topics:\n  - name: x\n    retention: 7d\n    retention_ms: 5\n", ["not both"]),
        ("topics:\n  - name: 'bad name!'\n", ["not a valid topic name"]),
        ("topics:\n  - name: x\n  - name: x\n", ["declared twice"]),
        ("topics:\n  - just-a-string\n", ["topics[0]", "mapping"]),
    ],
)
def test_malformed_files(mem_url: str, tmp_path: Path, text: str, needles: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for args in (["plan"], ["apply", "--yes"]):
        result = run(["topics", *args, "-f", str(path), "--url", mem_url])
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        assert str(path) in result.stderr
        for needle in needles:
            assert needle in result.stderr, (needle, result.stderr)
        assert "Traceback" not in result.stderr
    assert ok_json(["topics", "list", "--url", mem_url]) == []


def test_missing_and_bad_toml_files(mem_url: str, tmp_path: Path) -> None:
    missing = run(["topics", "plan", "-f", str(tmp_path / "nope.yaml"), "--url", mem_url])
    assert missing.exit_code == 1 and "no such file" in missing.stderr
    bad = tmp_path / "t.toml"
    bad.write_text("[[topics]\nname = 1\n")
    result = run(["topics", "plan", "-f", str(bad), "--url", mem_url])
    assert result.exit_code == 1 and "not valid TOML" in result.stderr
