"""Child processes of the dev/test servers: tools on PATH, ports, PIDs, waiting, the
:class:`ServerProcess` handle, and stopping whatever is still running at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


_DEBIAN_PACKAGES = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "java": "openjdk-17-jre-headless",
    "mvn": "maven",
    "kcat": "kcat",
}


class ServerError(RuntimeError):
    """A local server could not be fetched, started, checked or stopped."""


class MissingToolError(ServerError):
    """A program we need is not on PATH; the message names the Debian package to install."""

    def __init__(self, tool: str, purpose: str) -> None:
        package = _DEBIAN_PACKAGES.get(tool, tool)
        super().__init__(
            f"{tool!r} was not found on PATH; it is needed {purpose}. "
            f"On Debian/Ubuntu install it with: apt-get install {package}"
        )
        self.tool = tool
        self.package = package


def cache_dir() -> Path:
    """Cache root: ``$EVENTBUS_CACHE_DIR`` or ``~/.cache/eventbus``."""
    env = os.environ.get("EVENTBUS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eventbus"


def state_dir() -> Path:
    """Folder for ``eventbus dev`` state (``$EVENTBUS_STATE_DIR`` or ``<cache>/dev``)."""
    env = os.environ.get("EVENTBUS_STATE_DIR")
    return Path(env).expanduser() if env else cache_dir() / "dev"


def missing_tools() -> dict[str, str]:
    """The programs the tests and ``eventbus dev up`` need that are not on PATH, each with the
    Debian package that brings it."""
    return {t: p for t, p in _DEBIAN_PACKAGES.items() if shutil.which(t) is None}


def require_tool(tool: str, purpose: str) -> str:
    """Return the full path of ``tool`` or raise :class:`MissingToolError`."""
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(tool, purpose)
    return path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    max_interval: float = 0.5,
    give_up: Callable[[], str | None] | None = None,
) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; True if it became true.

    ``give_up`` is checked between polls; when it returns a message, waiting stops early and
    :class:`ServerError` is raised with it (e.g. the process died).
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        if condition():
            return True
        if give_up is not None:
            reason = give_up()
            if reason is not None:
                raise ServerError(reason)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, max_interval)


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_state(pid: int) -> str | None:
    """Single-letter state from /proc/<pid>/stat ('Z' = zombie), None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parens: the state is the first field after the last ')'
    return stat.rsplit(")", 1)[-1].split()[0]


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child (avoids zombies); otherwise do nothing."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie; with ``marker``, its command line must contain it.

    The marker (our server's temp dir) guards against a recycled PID belonging to someone else.
    """
    if pid <= 0:
        return False
    _reap(pid)
    state = _proc_state(pid)
    if state is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return marker is None
        return marker is None
    if state in ("Z", "X"):
        return False
    if marker is not None:
        return _owned_by(pid, marker)
    return True


def _owned_by(pid: int, marker: str) -> bool:
    """True if the process's command line or working dir mentions ``marker`` (its temp dir).

    redis-server rewrites its command line (process title), so the working dir, which we set to
    the server's temp dir, is the check that works for both servers.
    """
    try:
        if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
            return True
    except OSError:
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == marker or cwd.startswith(marker.rstrip("/") + "/")


def stop_pid(pid: int, *, marker: str | None = None, timeout: float = 20.0) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL. False if it was not running.

    With ``marker``, the process is only signalled if its command line contains the marker.
    """
    if not pid_alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(pid), timeout=timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), timeout=10.0)
    return True


_LIVE: set[ServerProcess] = set()


_LIVE_LOCK = threading.Lock()


def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all_at_exit)


@dataclass(eq=False)
class ServerProcess:
    """A server we started: how to reach it and how to stop it.

    ``workdir`` is the server's own temp dir (config, logs, data); it is removed on stop unless
    ``keep_workdir`` (set when the caller passed its own data dir).
    """

    kind: str  # "redis" | "kafka"
    pid: int
    port: int
    url: str
    workdir: Path
    log_path: Path
    version: str = ""
    host: str = LOOPBACK
    keep_workdir: bool = False
    detached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` (what Kafka clients call bootstrap servers)."""
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self.pid, str(self.workdir))

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``) and remove the temp dir."""
        try:
            if self._popen is not None:
                if self._popen.poll() is None:
                    self._popen.terminate()
                    try:
                        self._popen.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self._popen.kill()
                        self._popen.wait(10)
            else:
                stop_pid(self.pid, marker=str(self.workdir), timeout=timeout)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def to_json(self) -> dict[str, Any]:
        """State-file form (no process handle)."""
        data = asdict(self)
        data.pop("_popen", None)
        data["workdir"] = str(self.workdir)
        data["log_path"] = str(self.log_path)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerProcess:
        return cls(
            kind=str(data["kind"]),
            pid=int(data["pid"]),
            port=int(data["port"]),
            url=str(data["url"]),
            workdir=Path(data["workdir"]),
            log_path=Path(data["log_path"]),
            version=str(data.get("version", "")),
            host=str(data.get("host", LOOPBACK)),
            keep_workdir=bool(data.get("keep_workdir", False)),
            detached=bool(data.get("detached", True)),
            extra=dict(data.get("extra", {})),
        )

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(
    argv: Sequence[str], *, cwd: Path, out_path: Path, detached: bool
) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start ``argv``; returns (pid, Popen or None when detached).

    Detached processes are started through ``sh`` in a new session and backgrounded there, so the
    server is not our child and survives us (no Popen left behind to warn about).
    """
    if not detached:
        with out_path.open("ab") as out:
            popen = subprocess.Popen(
                list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        return popen.pid, popen
    script = '"$@" >>"$0" 2>&1 </dev/null & echo $!'
    result = subprocess.run(
        ["/bin/sh", "-c", script, str(out_path), *argv],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        start_new_session=True,
        check=False,
        timeout=30,
    )
    pid_text = result.stdout.decode().strip()
    if result.returncode != 0 or not pid_text.isdigit():
        raise ServerError(f"could not start {argv[0]} in the background: {result.stderr.decode()}")
    return int(pid_text), None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def track(server: ServerProcess) -> None:
    """Stop ``server`` at interpreter exit if it still runs then (attached servers)."""
    with _LIVE_LOCK:
        _LIVE.add(server)
