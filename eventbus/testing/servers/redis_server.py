"""Redis for tests and development: Debian's ``redis-server`` on a free loopback port."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from eventbus.testing.servers._process import (
    LOOPBACK,
    ServerError,
    ServerProcess,
    free_port,
    require_tool,
    spawn,
    track,
    wait_until,
)


def redis_answers(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """True if a Redis server on ``host:port`` answers PING with PONG (no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    # "-LOADING ..." while the AOF/RDB loads, "-NOAUTH" with a password: not ready for us
    return reply.startswith(b"+PONG")


def redis_server_version() -> str:
    """Version of ``redis-server`` on PATH, e.g. ``7.0.15``."""
    exe = require_tool("redis-server", "to run a local Redis for tests and `eventbus dev`")
    out = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    for token in out.split():
        if token.startswith("v="):
            return token[2:]
    return out.strip()


def _redis_workdir(data_dir: Path | None, base_dir: Path | None) -> Path:
    if data_dir is None:
        return Path(tempfile.mkdtemp(prefix="eventbus-redis-", dir=base_dir))
    workdir = data_dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _redis_argv(
    exe: str, port: int, workdir: Path, appendonly: bool, appendfsync: str, extra: Sequence[str]
) -> list[str]:
    return [
        exe,
        "--port", str(port),
        "--bind", LOOPBACK,
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--dir", str(workdir),
        "--logfile", str(workdir / "redis.log"),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync,
        *extra,
    ]  # fmt: skip


def _wait_redis(server: ServerProcess, timeout: float) -> str | None:
    """None once the server answers PING, else why it did not."""

    def died() -> str | None:
        return None if server.alive() else "redis-server exited"

    answers = functools.partial(redis_answers, server.port)
    try:
        if wait_until(answers, timeout=timeout, give_up=died):
            return None
        return f"redis-server did not answer PING within {timeout:.0f}s"
    except ServerError as exc:
        return str(exc)


def start_redis(
    *,
    appendonly: bool = False,
    appendfsync: str = "everysec",
    port: int | None = None,
    data_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    detached: bool = False,
    base_dir: Path | None = None,
    timeout: float = 30.0,
) -> ServerProcess:
    """Start ``redis-server`` on 127.0.0.1 and wait until it answers PING.

    No persistence by default (``--save "" --appendonly no``). ``appendonly=True`` turns on the
    AOF with ``appendfsync``. Pass ``data_dir`` (kept on stop) and ``port`` to restart a server on
    the same data, e.g. to check what survives a crash. ``base_dir`` is where the temp dir goes.
    """
    exe = require_tool("redis-server", "to run a local Redis for tests and `eventbus dev`")
    version = redis_server_version()
    keep = data_dir is not None
    workdir = _redis_workdir(data_dir, base_dir)
    last_error = ""
    for _ in range(1 if port is not None else 3):
        chosen = port if port is not None else free_port()
        argv = _redis_argv(exe, chosen, workdir, appendonly, appendfsync, extra_args)
        pid, popen = spawn(argv, cwd=workdir, out_path=workdir / "redis.out", detached=detached)
        server = ServerProcess(
            kind="redis",
            pid=pid,
            port=chosen,
            url=f"redis://{LOOPBACK}:{chosen}/0",
            workdir=workdir,
            log_path=workdir / "redis.log",
            version=version,
            keep_workdir=keep,
            detached=detached,
            extra={"appendonly": appendonly},
            _popen=popen,
        )
        if not detached:
            track(server)
        error = _wait_redis(server, timeout)
        if error is None:
            return server
        log = server.log_tail()
        server.keep_workdir = True  # keep the log until we have read it
        server.stop(timeout=5)
        last_error = f"{error} (port {chosen}); log tail:\n{log}"
        if "Address already in use" not in log:
            break
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    raise ServerError(last_error)
