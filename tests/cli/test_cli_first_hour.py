"""What a new user meets first (issue 20): no silent ``memory://`` default, URLs checked up
front, distinct exit codes, destructive commands that preview and ask alike, timeouts that
hold on every transport, and the small things (``-h``, help text, sizes, ``forever``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import eventbus
import eventbus.cli._common as common
from eventbus.testing import servers
from eventbus.topics import TopicSpec, parse_size
from tests.cli.clihelp import eventbus_subprocess, ok, ok_json, run

NO_URL_COMMANDS = [
    ["topics", "list"],
    ["topics", "create", "t"],
    ["topics", "plan", "-f", "topics.yaml"],
    ["produce", "t", "--data", "1"],
    ["tail", "t", "--from-beginning"],
    ["replay", "t", "--into", "u"],
    ["groups", "list"],
    ["groups", "reset", "g", "--topic", "t", "--to", "earliest", "--yes"],
    ["doctor"],
]


# -- 1. which server, when no URL is given ---------------------------------------------------


@pytest.mark.parametrize("args", NO_URL_COMMANDS, ids=" ".join)
def test_no_url_and_no_dev_servers_is_a_usage_error(args: list[str]) -> None:
    result = run(args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no server given")
    for hint in ("--url redis://", "EVENTBUS_URL", "eventbus dev up"):
        assert hint in line
    assert result.stdout == ""


def test_no_url_as_a_subprocess() -> None:
    # no eventbus dev state either: the autouse fixture points EVENTBUS_STATE_DIR at a new dir
    result = eventbus_subprocess("topics", "create", "tasks", "-p", "3")
    assert result.returncode == 2, result.stderr
    assert "error: no server given" in result.stderr and "Traceback" not in result.stderr


def test_explicit_memory_url_warns(mem_url: str, name: str) -> None:
    created = run(["topics", "create", name, "--url", mem_url])
    assert created.exit_code == 0, created.stderr
    assert "warning: memory://" in created.stderr and "outlives" in created.stderr
    listed = run(["topics", "list", "--url", mem_url, "-o", "json"])
    assert json.loads(listed.stdout)[0]["name"] == name  # stdout stays parseable
    assert "warning: memory://" in listed.stderr


def _record_dev_server(state_dir: Path, kind: str, url: str) -> subprocess.Popen[bytes]:
    """Write an ``eventbus dev`` state entry for ``url`` whose process is a sleeper running
    in the entry's workdir (what ``pid_alive(pid, workdir)`` checks)."""
    workdir = state_dir / f"eventbus-{kind}-fake"
    workdir.mkdir(parents=True, exist_ok=True)
    # a stand-in for the server's process, killed by the test: it waits for nothing
    stand_in = [sys.executable, "-c", "import time; time.sleep(300)"]  # allowed: see above
    sleeper = subprocess.Popen(stand_in, cwd=workdir)
    state_file = state_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    state[kind] = servers.ServerProcess(
        kind=kind, pid=sleeper.pid, port=port, url=url, workdir=workdir,
        log_path=workdir / "log", detached=True,
    ).to_json()  # fmt: skip
    state_file.write_text(json.dumps(state))
    return sleeper


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(10)


@pytest.mark.redis
@pytest.mark.kafka
def test_running_dev_servers_are_used_redis_first(
    _no_ambient_server: Path,
    sleepers: list[subprocess.Popen[bytes]],
    redis_url: str,
    kafka_url: str,
    name: str,
) -> None:
    sleepers.append(_record_dev_server(_no_ambient_server, "kafka", kafka_url))
    only_kafka = run(["topics", "create", name])
    assert only_kafka.exit_code == 0, only_kafka.stderr
    assert f"note: using {kafka_url}, the kafka server of `eventbus dev up`" in only_kafka.stderr
    assert name in [t["name"] for t in ok_json(["topics", "list", "--url", kafka_url])]

    sleepers.append(_record_dev_server(_no_ambient_server, "redis", redis_url))
    both = run(["topics", "create", name])
    assert both.exit_code == 0, both.stderr
    assert f"note: using {redis_url}, the redis server" in both.stderr
    assert name in [t["name"] for t in ok_json(["topics", "list", "--url", redis_url])]
    # --url and EVENTBUS_URL still win, without a note
    explicit = run(["topics", "describe", name, "--url", kafka_url, "-o", "json"])
    assert explicit.exit_code == 0 and "note:" not in explicit.stderr
    from_env = run(["topics", "describe", name, "-o", "json"], EVENTBUS_URL=kafka_url)
    assert from_env.exit_code == 0 and "note:" not in from_env.stderr


def test_dead_dev_servers_are_not_used(
    _no_ambient_server: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    sleeper = _record_dev_server(_no_ambient_server, "redis", "redis://127.0.0.1:1/0")
    sleeper.kill()
    sleeper.wait(10)
    result = run(["topics", "list"])
    assert result.exit_code == 2 and "no server given" in result.stderr


# -- 2. URL options checked up front ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("redis://127.0.0.1:6379/0?connect_timeout=1",
         ["connect_timeout", "socket_connect_timeout", "Valid options"]),
        ("redis://:pw-Secr3t@127.0.0.1:6379/0?bogus=1", ["bogus", "Valid options"]),
        ("redis://127.0.0.1:6379/0?redis_options=x", ["redis_options", "Valid options"]),
        ("redis://127.0.0.1:6379/0?max_connections=1e400", ["finite"]),
        ("redis://127.0.0.1:6379/0?ssl_cert_reqs=maybe", ["none, optional or required"]),
        ("kafka://127.0.0.1:9092?connect_timeout=nan", ["positive"]),
        ("migrate://m?source=memory://a&target=memory://b&poll_interval=soon", ["poll_interval"]),
    ],
)  # fmt: skip
def test_bad_url_options_are_usage_errors(url: str, needles: list[str]) -> None:
    for args in (["topics", "list"], ["doctor"], ["groups", "list", "-o", "json"]):
        result = run([*args, "--url", url])
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors, result.stderr
        for needle in needles:
            assert needle in result.stderr, (needle, result.stderr)
        assert "Traceback" not in result.stderr and "Secr3t" not in result.stderr


def test_the_library_rejects_unknown_redis_options_too() -> None:
    with pytest.raises(eventbus.errors.ConfigurationError, match="socket_connect_timeout"):
        eventbus.connect("redis://127.0.0.1:1/0?connect_timeout=1")


def test_unknown_redis_option_as_a_subprocess() -> None:
    result = eventbus_subprocess(
        "topics", "list", "--url", "redis://127.0.0.1:6379/0?connect_timeout=1"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown URL option" in result.stderr


# -- 3. exit codes ---------------------------------------------------------------------------


def test_exit_codes_tell_changes_from_usage_errors(mem_url: str, tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  - name: a\n")
    assert run(["topics", "plan", "-f", str(path), "--url", mem_url]).exit_code == 3
    assert run(["topics", "plan", "--url", mem_url]).exit_code == 2  # click: -f missing
    assert run(["topics", "plan", "-f", str(path), "--bogus"]).exit_code == 2
    assert run(["topics", "plna", "-f", str(path)]).exit_code == 2
    missing = run(["topics", "plan", "-f", str(tmp_path / "nope.yaml"), "--url", mem_url])
    assert missing.exit_code == 1
    ok(["topics", "apply", "-f", str(path), "--yes", "--url", mem_url])
    assert run(["topics", "plan", "-f", str(path), "--url", mem_url]).exit_code == 0


# -- 4. destructive commands alike -----------------------------------------------------------


def _group_at_end(url: str, topic: str, group: str) -> None:
    ok(["topics", "create", topic, "-p", "2", "--url", url])
    ok(["produce", topic, "--url", url], input="1\n2\n3\n")
    ok(["groups", "reset", group, "--topic", topic, "--to", "latest", "--yes", "--url", url])


def _lag(url: str, group: str) -> int:
    lag: int = ok_json(["groups", "describe", group, "--url", url])["lag"]
    return lag


def test_groups_reset_refuses_without_a_terminal(mem_url: str, name: str) -> None:
    _group_at_end(mem_url, name, "g")
    refused = run(["groups", "reset", "g", "--topic", name, "--to", "earliest", "--url", mem_url])
    assert refused.exit_code == 1
    assert "--yes" in refused.stderr and "nothing was changed" in refused.stderr
    assert "would read next from" in refused.stdout  # the preview came first
    assert _lag(mem_url, "g") == 0


def test_groups_reset_asks_on_a_terminal(
    mem_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _group_at_end(mem_url, name, "g")
    monkeypatch.setattr(common, "stdin_is_tty", lambda: True)
    args = ["groups", "reset", "g", "--topic", name, "--to", "earliest", "--url", mem_url]
    declined = run(args, input="n\n")
    assert declined.exit_code == 1 and "aborted" in declined.stderr
    assert "would read next from" in declined.stdout
    assert _lag(mem_url, "g") == 0
    accepted = run(args, input="y\n")
    assert accepted.exit_code == 0, accepted.stderr
    assert _lag(mem_url, "g") == 3


def test_dry_run_previews_every_destructive_command(
    mem_url: str, name: str, tmp_path: Path
) -> None:
    _group_at_end(mem_url, name, "g")
    reset = ok_json(["groups", "reset", "g", "--topic", name, "--to", "earliest", "--dry-run",
                     "--url", mem_url])  # fmt: skip
    assert reset["dry_run"] is True and _lag(mem_url, "g") == 0

    deleted = ok(["topics", "delete", name, "--dry-run", "--url", mem_url])
    assert f"would delete topic {name}: 2 partition(s), 3 event(s)" in deleted.stdout
    assert "dry run: nothing was changed" in deleted.stdout
    assert ok_json(["topics", "delete", name, "--dry-run", "--url", mem_url]) == {
        "topic": name, "partitions": 2, "count": 3, "dry_run": True,
    }  # fmt: skip
    ok(["topics", "describe", name, "--url", mem_url])

    path = tmp_path / "topics.yaml"
    path.write_text(f"topics:\n  - name: {name}\n    partitions: 1\n")  # fewer: destructive
    applied = ok(["topics", "apply", "-f", str(path), "--dry-run", "--url", mem_url])
    assert "DESTRUCTIVE" in applied.stdout and "dry run: nothing was changed" in applied.stdout
    as_json = ok_json(["topics", "apply", "-f", str(path), "--dry-run", "--url", mem_url])
    assert as_json["applied"] is False and as_json["destructive"] is True
    assert len(ok_json(["topics", "describe", name, "--url", mem_url])["partitions"]) == 2
    refused = run(["topics", "apply", "-f", str(path), "--allow-destructive", "--url", mem_url])
    assert refused.exit_code == 1 and "--yes" in refused.stderr


# -- 5. timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["kafka://127.0.0.1:1", "redis://127.0.0.1:1/0"])
def test_doctor_timeout_holds_on_every_transport(url: str) -> None:
    started = time.monotonic()
    result = run(["doctor", "--timeout", "1", "--url", url, "-o", "json"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert elapsed < 3.5, f"doctor --timeout 1 took {elapsed:.1f}s on {url}"
    assert json.loads(result.stdout)["ok"] is False


def test_doctor_timeout_must_be_a_number() -> None:
    for value in ("nan", "0", "-1", "soon"):
        result = run(["doctor", "--timeout", value, "--url", "memory://"])
        assert result.exit_code == 2, (value, result.stderr)


# -- 6. the small things ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [[], ["topics"], ["topics", "list"], ["groups", "reset"], ["migrate", "cutover"]]
)
def test_dash_h_is_help(path: list[str]) -> None:
    short, long = ok([*path, "-h"]), ok([*path, "--help"])
    assert short.stdout == long.stdout and "Usage" in short.stdout


def test_rich_help_keeps_brackets() -> None:
    env = {"TYPER_USE_RICH": "1", "COLUMNS": "200"}
    result = eventbus_subprocess("topics", "list", "--help", env=env)
    assert "memory://[name]" in result.stdout, result.stdout


def test_rollback_help_names_the_real_flag() -> None:
    text = ok(["migrate", "rollback", "--help"]).stdout
    assert "--to-side source" in text
    assert "cutover" in ok(["migrate", "cutover", "--help"]).stdout


def test_produce_from_stdin_honours_auto_create(name: str) -> None:
    url = f"memory://cli-auto-{name}?auto_create=true"
    produced = run(["produce", name, "--url", url], input='{"n": 1}\n{"n": 2}\n')
    assert produced.exit_code == 0, produced.stderr
    assert ok_json(["topics", "describe", name, "--url", url])["count"] == 2


def test_retention_forever(mem_url: str, name: str, tmp_path: Path) -> None:
    created = ok_json(["topics", "create", name, "--retention", "forever", "--url", mem_url])
    assert created["spec"]["retention_ms"] is None
    path = tmp_path / "topics.yaml"
    path.write_text(f"topics:\n  - name: {name}\n    retention: forever\n")
    assert run(["topics", "plan", "-f", str(path), "--url", mem_url]).exit_code == 0


@pytest.mark.parametrize("rate", ["-5", "0", "nan", "inf"])
def test_demo_rejects_a_rate_that_is_not_positive(rate: str) -> None:
    result = run(["demo", "--rate", rate])
    assert result.exit_code == 2 and "--rate" in result.stderr


def test_sizes_binary_and_decimal(mem_url: str, name: str) -> None:
    assert parse_size("1GiB") == parse_size("1Gi") == 1 << 30
    assert parse_size("1GB") == parse_size("1G") == parse_size("1gb") == 10**9
    assert parse_size("512KiB") == 512 * 1024 and parse_size("512KB") == 512_000
    assert parse_size("7") == parse_size("7B") == 7
    with pytest.raises(ValueError, match="KiB, MiB, GiB"):
        parse_size("1GiiB")
    spec = TopicSpec.model_validate({"name": "x", "retention_bytes": "2MB"})
    assert spec.retention_bytes == 2_000_000
    decimal = ok_json(["topics", "create", name, "--retention-bytes", "1GB", "--url", mem_url])
    assert decimal["spec"]["retention_bytes"] == 10**9
    binary = ok_json(["topics", "create", name + "b", "--max-event-bytes", "1MiB",
                      "--url", mem_url])  # fmt: skip
    assert binary["spec"]["max_event_bytes"] == 1 << 20


def test_last_resort_handler_scrubs_and_exits_1(tmp_path: Path) -> None:
    code = (
        "import sys; import eventbus.cli as cli; from eventbus.cli import _common\n"
        "_common.remember_secret('redis://:Hush-99@h:1/0')\n"
        "def boom(*a, **k): raise RuntimeError('broke with Hush-99')\n"
        "cli.app = boom\n"
        "cli.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_DEBUG"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: unexpected RuntimeError: broke with ***")
    assert "Traceback" not in result.stderr and "Hush-99" not in result.stderr
