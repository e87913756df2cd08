"""``eventbus doctor``, and failures every command must handle: bad URLs, unreachable servers
(fast, no hang), refused credentials (never echoed). Some run as a subprocess."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from eventbus.testing import servers
from tests.cli.clihelp import eventbus_subprocess, ok, ok_json, run

PASSWORD = "Sup3r-s3cret-pw"
WRONG = "Wr0ng-pa55word-xyz"


def test_doctor_on_memory(mem_url: str, name: str) -> None:
    ok(["topics", "create", name, "-p", "2", "--url", mem_url])
    report = ok_json(["doctor", "--url", mem_url])
    assert report["ok"] is True
    assert report["url"] == mem_url
    assert report["capabilities"]["transport"] == "memory"
    assert report["capabilities"]["timestamp_replay"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["connect"]["status"] == "ok"
    assert checks["topics"]["detail"] == "1 topic(s)"
    assert checks["dead-letter partitions"]["status"] == "ok"
    assert "server version" in checks
    table = ok(["doctor", "--url", mem_url]).stdout
    assert "capabilities" in table and "ordering_scope" in table


def test_doctor_flags_dead_letter_partitions(bus_url: str, name: str) -> None:
    ok(["topics", "create", name, "-p", "3", "--url", bus_url])
    ok(["topics", "create", f"{name}.dlq", "-p", "1", "--url", bus_url])
    report = ok_json(["doctor", "--url", bus_url])
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["dead-letter partitions"]["status"] == "warn"
    assert f"{name} has 3, {name}.dlq has 1" in checks["dead-letter partitions"]["detail"]
    strict = run(["doctor", "--strict", "--url", bus_url, "-o", "json"])
    assert strict.exit_code == 1
    assert json.loads(strict.stdout)["ok"] is False
    assert "dead-letter partitions" in strict.stderr


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("foo://x", "Known schemes"),
        ("memry://x", "memory://"),
        ("redis://127.0.0.1:notaport/0", "malformed URL"),
        ("no-scheme", "not of the form scheme://"),
    ],
)
def test_bad_urls(url: str, needle: str) -> None:
    for args in (["topics", "list"], ["doctor"], ["produce", "t", "--data", "1"]):
        result = run([*args, "--url", url])
        assert result.exit_code == 2, (args, result.stdout)  # the URL is a usage error
        assert needle in result.stderr + result.stdout, (args, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"redis://:{PASSWORD}@127.0.0.1:1/0", id="redis"),
        pytest.param(f"kafka://user:{PASSWORD}@127.0.0.1:1", id="kafka"),
    ],
)
@pytest.mark.parametrize("args", [["topics", "list"], ["doctor", "-o", "json"]], ids=str)
def test_unreachable_server_fails_fast(url: str, args: list[str]) -> None:
    started = time.monotonic()
    result = eventbus_subprocess(*args, "--url", url, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert elapsed < 30, f"took {elapsed:.1f}s to report an unreachable server"
    assert "127.0.0.1:1" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[int]:
    """Port of a redis-server that requires PASSWORD (``requirepass``, set once it answers:
    the harness's readiness probe PINGs without credentials)."""
    import redis

    try:
        server = servers.start_redis()
    except servers.ServerError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"cannot start redis-server for the credentials test: {exc}")
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        client.config_set("requirepass", PASSWORD)
        client.close()
        yield server.port
    finally:
        server.stop()


@pytest.mark.redis
@pytest.mark.parametrize(
    "args",
    [
        ["topics", "list"],
        ["doctor"],
        ["produce", "t", "--data", "1"],
        ["tail", "t", "--from-beginning", "-o", "json"],
        ["groups", "list", "-o", "json"],
    ],
    ids=lambda a: a[0] if a[0] != "topics" else "topics-list",
)
def test_wrong_password_is_never_echoed(secured_redis: int, args: list[str]) -> None:
    url = f"redis://:{WRONG}@127.0.0.1:{secured_redis}/0"
    result = eventbus_subprocess(*args, "--url", url, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert WRONG not in result.stdout + result.stderr
    assert "error" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    in_process = run([*args, "--url", url])
    assert in_process.exit_code == 1
    assert WRONG not in in_process.stdout + in_process.stderr


@pytest.mark.redis
def test_right_password_works(secured_redis: int, name: str) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{secured_redis}/0"
    ok(["topics", "create", name, "--url", url])
    report = ok_json(["doctor", "--url", url])
    assert report["ok"] is True and PASSWORD not in json.dumps(report)
    assert report["url"] == f"redis://:***@127.0.0.1:{secured_redis}/0"
