"""Start and stop real Redis and Apache Kafka servers on loopback, for tests and local development.

Redis is Debian's ``redis-server`` from PATH. Kafka is Apache Kafka (single node, KRaft, broker and
controller in one JVM) from Maven Central jars, fetched once into a cache folder with Maven.

Two ways to run a server:

* attached (pytest fixtures, reliability tests): ``start_redis()`` / ``start_kafka()`` return a
  :class:`ServerProcess` holding the child process; ``stop()`` ends it and removes its temp dir.
  Everything still running is stopped at interpreter exit as a safety net.
* detached (``eventbus dev up``): the same functions with ``detached=True``; the process survives
  the caller, is recorded by PID in a state file, and ``stop_pid()`` ends it later.

Environment variables:

* ``EVENTBUS_CACHE_DIR``: cache root (default ``~/.cache/eventbus``); Kafka jars live in
  ``<cache>/kafka-<version>/libs``.
* ``EVENTBUS_KAFKA_LIBS``: use this folder of Kafka jars instead (nothing is fetched into it if it
  is complete already).
* ``EVENTBUS_STATE_DIR``: where ``eventbus dev`` keeps its state file and server dirs (default
  ``<cache>/dev``).

Command line: ``python -m eventbus.testing.servers fetch|versions|check``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KAFKA_VERSION",
    "DevServers",
    "KafkaNotReadyError",
    "MissingToolError",
    "ServerError",
    "ServerProcess",
    "cache_dir",
    "dev_down",
    "dev_status",
    "dev_up",
    "dev_urls",
    "ensure_kafka_jars",
    "free_port",
    "kafka_answers",
    "kafka_jars_present",
    "kafka_libs_dir",
    "missing_tools",
    "pid_alive",
    "provision",
    "redis_answers",
    "redis_server_version",
    "start_kafka",
    "start_redis",
    "state_dir",
    "stop_pid",
]

KAFKA_VERSION = "4.1.1"
LOOPBACK = "127.0.0.1"

#: Jars that bind slf4j to something other than log4j2; left out of the classpath so exactly one
#: binding is found (a libs folder fetched with an older pom may still contain them).
_FOREIGN_LOG_BINDINGS = ("slf4j-reload4j-", "reload4j-", "slf4j-log4j12-", "slf4j-simple-")
_REQUIRED_JARS = (
    f"kafka_2.13-{KAFKA_VERSION}.jar",
    f"kafka-clients-{KAFKA_VERSION}.jar",
    f"kafka-server-{KAFKA_VERSION}.jar",
    f"kafka-tools-{KAFKA_VERSION}.jar",
)
_REQUIRED_JAR_PREFIXES = ("log4j-core-", "log4j-slf4j-impl-", "slf4j-api-", "scala-library-")

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


class KafkaNotReadyError(ServerError):
    """The broker did not answer a metadata request before the deadline."""


# --------------------------------------------------------------------------------------------
# paths and small helpers


def cache_dir() -> Path:
    """Cache root: ``$EVENTBUS_CACHE_DIR`` or ``~/.cache/eventbus``."""
    env = os.environ.get("EVENTBUS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eventbus"


def kafka_libs_dir() -> Path:
    """Folder holding the Kafka jars (``$EVENTBUS_KAFKA_LIBS`` or ``<cache>/kafka-<v>/libs``)."""
    env = os.environ.get("EVENTBUS_KAFKA_LIBS")
    if env:
        return Path(env).expanduser()
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def state_dir() -> Path:
    """Folder for ``eventbus dev`` state (``$EVENTBUS_STATE_DIR`` or ``<cache>/dev``)."""
    env = os.environ.get("EVENTBUS_STATE_DIR")
    return Path(env).expanduser() if env else cache_dir() / "dev"


def missing_tools() -> dict[str, str]:
    """The programs the tests and ``eventbus dev up`` need that are not on PATH, each with the
    Debian package that brings it."""
    return {t: p for t, p in _DEBIAN_PACKAGES.items() if shutil.which(t) is None}


def provision(*, log: Callable[[str], None] = print) -> list[str]:
    """Install what the local servers need and is missing: Debian's packages for the programs
    of :func:`missing_tools` (through apt-get, as root or with sudo), then Kafka's jars from
    Maven Central. Idempotent; returns what it did (empty when nothing was missing).

    Raises :class:`ServerError` when something is missing and cannot be installed here (not
    Debian, not root and no sudo, or apt-get failed), naming the command to run by hand."""
    done: list[str] = []
    missing = missing_tools()
    if missing:
        packages = sorted(set(missing.values()))
        by_hand = f"apt-get install {' '.join(packages)}"
        apt = shutil.which("apt-get")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"] if shutil.which("sudo") else None
        if apt is None or sudo is None:
            raise ServerError(
                f"missing {', '.join(sorted(missing))}; install them with: {by_hand} "
                "(this machine has no apt-get, or this user is not root and has no sudo)"
            )
        log(f"installing {', '.join(packages)} with apt-get (missing: {', '.join(missing)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            [*sudo, apt, "update", "-qq"],
            [*sudo, apt, "install", "-y", "-qq", "--no-install-recommends", *packages],
        ):
            result = subprocess.run(
                argv, env=env, capture_output=True, text=True, check=False, timeout=900
            )
            if result.returncode != 0:
                raise ServerError(
                    f"{' '.join(argv)} failed ({result.returncode}): "
                    f"{(result.stderr or result.stdout).strip()[-800:]}; run by hand: {by_hand}"
                )
        done.append(f"apt-get install {' '.join(packages)}")
    if not kafka_jars_present():
        log(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {kafka_libs_dir()}")
        ensure_kafka_jars(quiet=True)
        done.append(f"Kafka {KAFKA_VERSION} jars")
    return done


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


# --------------------------------------------------------------------------------------------
# process bookkeeping


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


def _spawn(
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


# --------------------------------------------------------------------------------------------
# Redis


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
    if data_dir is None:
        workdir = Path(tempfile.mkdtemp(prefix="eventbus-redis-", dir=base_dir))
    else:
        workdir = data_dir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "redis.log"
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        argv = [
            exe,
            "--port", str(chosen),
            "--bind", LOOPBACK,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(workdir),
            "--logfile", str(log_path),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", appendfsync,
            *extra_args,
        ]  # fmt: skip
        pid, popen = _spawn(argv, cwd=workdir, out_path=workdir / "redis.out", detached=detached)
        server = ServerProcess(
            kind="redis",
            pid=pid,
            port=chosen,
            url=f"redis://{LOOPBACK}:{chosen}/0",
            workdir=workdir,
            log_path=log_path,
            version=version,
            keep_workdir=keep,
            detached=detached,
            extra={"appendonly": appendonly},
            _popen=popen,
        )
        if not detached:
            with _LIVE_LOCK:
                _LIVE.add(server)

        def died(server: ServerProcess = server) -> str | None:
            return None if server.alive() else "redis-server exited"

        try:
            if wait_until(functools.partial(redis_answers, chosen), timeout=timeout, give_up=died):
                return server
            last_error = f"redis-server did not answer PING within {timeout:.0f}s"
        except ServerError as exc:
            last_error = str(exc)
        log = server.log_tail()
        server.keep_workdir = True  # keep the log until we have read it
        server.stop(timeout=5)
        last_error = f"{last_error} (port {chosen}); log tail:\n{log}"
        if "Address already in use" not in log:
            break
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    raise ServerError(last_error)


# --------------------------------------------------------------------------------------------
# Kafka


def _pom_path() -> Path:
    path = Path(__file__).resolve().parent / "kafka" / "pom.xml"
    if not path.is_file():
        raise ServerError(f"{path} is missing: is eventbus installed with its package data?")
    return path


def kafka_jars_present(libs: Path | None = None) -> bool:
    """True if ``libs`` holds everything the broker needs (then nothing is fetched)."""
    libs = libs or kafka_libs_dir()
    if not libs.is_dir():
        return False
    names = {p.name for p in libs.glob("*.jar")}
    if not all(jar in names for jar in _REQUIRED_JARS):
        return False
    return all(any(n.startswith(pre) for n in names) for pre in _REQUIRED_JAR_PREFIXES)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_kafka_jars(libs: Path | None = None, *, quiet: bool = True) -> Path:
    """Fetch Kafka's jars with Maven into ``libs`` unless they are already there; returns it."""
    libs = libs or kafka_libs_dir()
    if kafka_jars_present(libs):
        return libs
    with _file_lock(libs.parent / ".fetch.lock"):
        if kafka_jars_present(libs):  # another process fetched them while we waited
            return libs
        mvn = require_tool("mvn", f"to fetch Apache Kafka {KAFKA_VERSION} from Maven Central")
        require_tool("java", f"to run Apache Kafka {KAFKA_VERSION}")
        libs.mkdir(parents=True, exist_ok=True)
        argv = [
            mvn,
            *(["-q"] if quiet else []),
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(_pom_path()),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ]
        result = subprocess.run(argv, capture_output=quiet, text=True, check=False, timeout=900)
        if result.returncode != 0 or not kafka_jars_present(libs):
            output = ((result.stdout or "") + (result.stderr or ""))[-4000:]
            raise ServerError(
                f"fetching Kafka jars with Maven failed (exit {result.returncode}) into {libs}:\n"
                f"{output}"
            )
    return libs


def kafka_classpath(libs: Path | None = None) -> str:
    libs = libs or kafka_libs_dir()
    jars = sorted(p for p in libs.glob("*.jar") if not p.name.startswith(_FOREIGN_LOG_BINDINGS))
    return os.pathsep.join(str(p) for p in jars)


def kafka_cluster_id() -> str:
    """A random cluster id in Kafka's format (16 bytes, URL-safe base64, no padding)."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- written by eventbus.testing.servers: everything to one file, nothing on the console -->
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.network.RequestChannel$" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def _kafka_properties(
    workdir: Path, broker_port: int, controller_port: int, overrides: dict[str, str]
) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{broker_port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(workdir / "data"),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.min.heartbeat.interval.ms": "500",
        "log.retention.check.interval.ms": "5000",
    }
    props.update(overrides)
    return "".join(f"{k}={v}\n" for k, v in props.items())


def kafka_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """True if a metadata request to ``bootstrap`` answers with at least one broker."""
    host, _, port = bootstrap.rpartition(":")
    if not port_open(int(port), host or LOOPBACK, timeout=min(timeout, 1.0)):
        return False
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return _kcat_metadata(bootstrap, timeout)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": 2000})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(metadata.brokers)


def _kcat_metadata(bootstrap: str, timeout: float) -> bool:
    kcat = require_tool("kcat", "to check that Kafka answers (or pip install confluent-kafka)")
    try:
        result = subprocess.run(
            [kcat, "-b", bootstrap, "-L", "-J", "-m", str(max(1, int(timeout)))],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout + 5,
        )
        return result.returncode == 0 and bool(json.loads(result.stdout).get("brokers"))
    except (subprocess.TimeoutExpired, ValueError):
        return False


def _java_argv(
    java: str, classpath: str, workdir: Path, heap: str, main: Sequence[str]
) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={workdir / 'log4j2.xml'}",
        f"-Dkafka.logs.dir={workdir / 'logs'}",
        "-cp",
        classpath,
        *main,
    ]


def start_kafka(
    *,
    detached: bool = False,
    base_dir: Path | None = None,
    heap: str = "768m",
    overrides: dict[str, str] | None = None,
    timeout: float = 90.0,
) -> ServerProcess:
    """Start a single-node KRaft Apache Kafka on free loopback ports; wait until metadata answers.

    Fetches the jars first if needed. ``overrides`` are extra ``server.properties`` entries.
    """
    java = require_tool("java", f"to run Apache Kafka {KAFKA_VERSION}")
    libs = ensure_kafka_jars()
    classpath = kafka_classpath(libs)
    last_error = ""
    for _attempt in range(3):
        workdir = Path(tempfile.mkdtemp(prefix="eventbus-kafka-", dir=base_dir))
        (workdir / "logs").mkdir()
        log_path = workdir / "logs" / "server.log"
        (workdir / "log4j2.xml").write_text(_LOG4J2_XML.format(log=log_path))
        broker_port, controller_port = free_port(), free_port()
        while controller_port == broker_port:
            controller_port = free_port()
        props = workdir / "server.properties"
        props.write_text(_kafka_properties(workdir, broker_port, controller_port, overrides or {}))
        fmt = subprocess.run(
            _java_argv(
                java, classpath, workdir, "256m",
                ["kafka.tools.StorageTool", "format", "-t", kafka_cluster_id(), "-c", str(props)],
            ),
            cwd=workdir, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if fmt.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            raise ServerError(
                f"kafka storage format failed (exit {fmt.returncode}):\n"
                f"{(fmt.stdout + fmt.stderr)[-3000:]}\n{tail(log_path)}"
            )
        argv = _java_argv(java, classpath, workdir, heap, ["kafka.Kafka", str(props)])
        pid, popen = _spawn(argv, cwd=workdir, out_path=workdir / "kafka.out", detached=detached)
        bootstrap = f"{LOOPBACK}:{broker_port}"
        server = ServerProcess(
            kind="kafka",
            pid=pid,
            port=broker_port,
            url=f"kafka://{bootstrap}",
            workdir=workdir,
            log_path=log_path,
            version=KAFKA_VERSION,
            detached=detached,
            extra={"controller_port": controller_port},
            _popen=popen,
        )
        if not detached:
            with _LIVE_LOCK:
                _LIVE.add(server)

        def died(server: ServerProcess = server) -> str | None:
            return None if server.alive() else "the Kafka process exited"

        try:
            if wait_until(
                functools.partial(kafka_answers, bootstrap, timeout=2.0),
                timeout=timeout,
                interval=0.2,
                max_interval=1.0,
                give_up=died,
            ):
                return server
            last_error = f"Kafka did not answer a metadata request within {timeout:.0f}s"
        except ServerError as exc:
            last_error = str(exc)
        log = f"{tail(log_path, 60)}\n--- stdout/stderr ---\n{tail(workdir / 'kafka.out', 20)}"
        server.stop(timeout=10)
        last_error = f"{last_error} (broker port {broker_port}); server log tail:\n{log}"
        if "Address already in use" not in log and "BindException" not in log:
            break
    raise KafkaNotReadyError(last_error)


# --------------------------------------------------------------------------------------------
# detached servers for `eventbus dev` (state file under state_dir())

DEV_KINDS = ("redis", "kafka")


def dev_state_file() -> Path:
    return state_dir() / "state.json"


def _load_state() -> dict[str, ServerProcess]:
    try:
        raw = json.loads(dev_state_file().read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, ServerProcess] = {}
    for kind in DEV_KINDS:
        entry = raw.get(kind) if isinstance(raw, dict) else None
        if isinstance(entry, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out[kind] = ServerProcess.from_json(entry)
    return out


def _save_state(state: dict[str, ServerProcess]) -> None:
    path = dev_state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v.to_json() for k, v in state.items()}, indent=2) + "\n")
    tmp.replace(path)


def server_answers(server: ServerProcess, timeout: float = 2.0) -> bool:
    """True if the recorded server's port answers its protocol (PING / metadata)."""
    if server.kind == "redis":
        return redis_answers(server.port, server.host, timeout=timeout)
    return kafka_answers(server.bootstrap, timeout=timeout)


def server_running(server: ServerProcess) -> bool:
    """Its PID is alive (and is ours: command line mentions its dir) and its port answers."""
    return pid_alive(server.pid, str(server.workdir)) and server_answers(server)


@dataclass
class DevServers:
    """What ``eventbus dev`` knows about its servers."""

    servers: dict[str, ServerProcess]
    running: dict[str, bool]
    reused: dict[str, bool] = field(default_factory=dict)
    stopped: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state_file": str(dev_state_file())}
        for kind in DEV_KINDS:
            server = self.servers.get(kind)
            data[f"{kind}_url"] = server.url if server else None
            data[f"{kind}_pid"] = server.pid if server else None
            data[f"{kind}_running"] = self.running.get(kind, False)
            if server is not None:
                data[kind] = {
                    "url": server.url,
                    "pid": server.pid,
                    "port": server.port,
                    "version": server.version,
                    "running": self.running.get(kind, False),
                    "reused": self.reused.get(kind, False),
                    "workdir": str(server.workdir),
                    "log": str(server.log_path),
                }
        if self.stopped:
            data["stopped"] = dict(self.stopped)
        return data


def _discard(server: ServerProcess) -> None:
    stop_pid(server.pid, marker=str(server.workdir))
    shutil.rmtree(server.workdir, ignore_errors=True)


def dev_up(kinds: Sequence[str] = DEV_KINDS, *, redis_appendonly: bool = False) -> DevServers:
    """Start detached servers (or reuse running ones recorded in the state file)."""
    base = state_dir()
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / ".lock"):
        state = _load_state()
        reused: dict[str, bool] = {}
        try:
            for kind in kinds:
                current = state.get(kind)
                if current is not None and server_running(current):
                    reused[kind] = True
                    continue
                if current is not None:
                    _discard(current)
                    del state[kind]
                if kind == "redis":
                    state[kind] = start_redis(
                        detached=True, base_dir=base, appendonly=redis_appendonly
                    )
                else:
                    state[kind] = start_kafka(detached=True, base_dir=base)
                reused[kind] = False
        finally:
            _save_state(state)
    running = {k: k in reused or server_running(s) for k, s in state.items()}
    return DevServers(state, running, reused)


def dev_urls() -> dict[str, str]:
    """URLs of the servers a running ``eventbus dev up`` recorded, by kind (in ``DEV_KINDS``
    order), counting only those whose process is alive and ours. Cheap: reads the state file
    and ``/proc``, never probes a port, so commands can call it on every start."""
    return {
        kind: server.url
        for kind, server in _load_state().items()
        if pid_alive(server.pid, str(server.workdir))
    }


def dev_status() -> DevServers:
    """Recorded servers and whether each one is running and answering."""
    state = _load_state()
    return DevServers(state, {kind: server_running(s) for kind, s in state.items()})


def dev_down(kinds: Sequence[str] = DEV_KINDS) -> DevServers:
    """Stop the recorded servers and forget them."""
    base = state_dir()
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / ".lock"):
        state = _load_state()
        stopped: dict[str, bool] = {}
        for kind in kinds:
            server = state.pop(kind, None)
            if server is not None:
                stopped[kind] = stop_pid(server.pid, marker=str(server.workdir))
                shutil.rmtree(server.workdir, ignore_errors=True)
        if state:
            _save_state(state)
        else:
            dev_state_file().unlink(missing_ok=True)
    return DevServers(state, {kind: server_running(s) for kind, s in state.items()}, {}, stopped)


# --------------------------------------------------------------------------------------------
# command line: python -m eventbus.testing.servers ...


def _versions() -> dict[str, str]:
    info = {"kafka": KAFKA_VERSION, "kafka_libs": str(kafka_libs_dir())}
    try:
        info["redis"] = redis_server_version()
    except MissingToolError as exc:
        info["redis"] = f"missing: {exc}"
    java = shutil.which("java")
    if java:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        lines = (out.stderr or out.stdout).splitlines()
        info["java"] = lines[0] if lines else ""
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eventbus.testing.servers",
        description="Fetch and check the local Redis and Kafka servers used by eventbus tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"download Apache Kafka {KAFKA_VERSION} jars (skipped if cached)")
    sub.add_parser(
        "provision",
        help="install the missing programs (apt-get) and Kafka's jars: what the tests need",
    )
    sub.add_parser("versions", help="print the server versions tests run against")
    sub.add_parser("check", help="start both servers once, print their URLs, stop them")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            libs = ensure_kafka_jars(quiet=True)
            print(f"Kafka {KAFKA_VERSION} jars: {libs}")
        elif args.command == "provision":
            done = provision()
            print("provisioned: " + "; ".join(done) if done else "nothing was missing")
        elif args.command == "versions":
            for key, value in _versions().items():
                print(f"{key}: {value}")
        else:
            with start_redis() as redis, start_kafka() as kafka:
                print(f"redis {redis.version}: {redis.url}")
                print(f"kafka {kafka.version}: {kafka.url}")
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
