"""Apache Kafka for tests and development: one KRaft node (broker and controller in one JVM)
from Maven Central jars, fetched once into a cache folder with Maven.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from eventbus.testing.servers._process import (
    LOOPBACK,
    ServerError,
    ServerProcess,
    cache_dir,
    file_lock,
    free_port,
    port_open,
    require_tool,
    spawn,
    tail,
    track,
    wait_until,
)

KAFKA_VERSION = "4.1.1"


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


class KafkaNotReadyError(ServerError):
    """The broker did not answer a metadata request before the deadline."""


def kafka_libs_dir() -> Path:
    """Folder holding the Kafka jars (``$EVENTBUS_KAFKA_LIBS`` or ``<cache>/kafka-<v>/libs``)."""
    env = os.environ.get("EVENTBUS_KAFKA_LIBS")
    if env:
        return Path(env).expanduser()
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def _pom_path() -> Path:
    path = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
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


def ensure_kafka_jars(libs: Path | None = None, *, quiet: bool = True) -> Path:
    """Fetch Kafka's jars with Maven into ``libs`` unless they are already there; returns it."""
    libs = libs or kafka_libs_dir()
    if kafka_jars_present(libs):
        return libs
    with file_lock(libs.parent / ".fetch.lock"):
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


LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
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


def kafka_properties(
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


def java_argv(
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


def kafka_workdir(base_dir: Path | None = None, prefix: str = "eventbus-kafka-") -> Path:
    """A fresh temp dir for one Kafka node, with ``logs/`` and ``log4j2.xml`` written."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
    (workdir / "logs").mkdir()
    (workdir / "log4j2.xml").write_text(LOG4J2_XML.format(log=kafka_log_path(workdir)))
    return workdir


def kafka_log_path(workdir: Path) -> Path:
    """The server log of the node whose temp dir is ``workdir``."""
    return workdir / "logs" / "server.log"


def format_kafka_storage(
    java: str,
    classpath: str,
    workdir: Path,
    cluster_id: str,
    *,
    ignore_formatted: bool = False,
) -> None:
    """Run Kafka's storage tool on ``workdir/server.properties`` (writes ``meta.properties``
    into every log dir); ``ignore_formatted`` formats only the dirs that are not yet."""
    props = workdir / "server.properties"
    main = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)]
    if ignore_formatted:
        main.append("--ignore-formatted")
    fmt = subprocess.run(
        java_argv(java, classpath, workdir, "256m", main),
        cwd=workdir, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if fmt.returncode != 0:
        raise ServerError(
            f"kafka storage format failed (exit {fmt.returncode}):\n"
            f"{(fmt.stdout + fmt.stderr)[-3000:]}\n{tail(kafka_log_path(workdir))}"
        )


def launch_kafka(
    java: str,
    classpath: str,
    workdir: Path,
    broker_port: int,
    *,
    heap: str,
    detached: bool = False,
    extra: dict[str, object] | None = None,
) -> ServerProcess:
    """Start ``kafka.Kafka workdir/server.properties`` (formatted already); does not wait."""
    argv = java_argv(
        java, classpath, workdir, heap, ["kafka.Kafka", str(workdir / "server.properties")]
    )
    pid, popen = spawn(argv, cwd=workdir, out_path=workdir / "kafka.out", detached=detached)
    server = ServerProcess(
        kind="kafka",
        pid=pid,
        port=broker_port,
        url=f"kafka://{LOOPBACK}:{broker_port}",
        workdir=workdir,
        log_path=kafka_log_path(workdir),
        version=KAFKA_VERSION,
        detached=detached,
        extra=dict(extra or {}),
        _popen=popen,
    )
    if not detached:
        track(server)
    return server


def wait_kafka(
    server: ServerProcess, answers: Callable[[], bool], timeout: float, what: str = "Kafka"
) -> str | None:
    """Wait until ``answers()``; None when it did, else why not (the process is left running)."""

    def died() -> str | None:
        return None if server.alive() else f"the {what} process exited"

    try:
        if wait_until(answers, timeout=timeout, interval=0.2, max_interval=1.0, give_up=died):
            return None
        return f"{what} did not answer a metadata request within {timeout:.0f}s"
    except ServerError as exc:
        return str(exc)


def failure_log(workdir: Path) -> str:
    """The server log and stdout tails of a node that failed to start."""
    out = tail(workdir / "kafka.out", 20)
    return f"{tail(kafka_log_path(workdir), 60)}\n--- stdout/stderr ---\n{out}"


def port_clash(log: str) -> bool:
    """True if a start failed because a port was taken meanwhile (worth another try)."""
    return "Address already in use" in log or "BindException" in log


def two_ports() -> tuple[int, int]:
    """Two distinct free loopback ports."""
    first, second = free_port(), free_port()
    while second == first:
        second = free_port()
    return first, second


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
    classpath = kafka_classpath(ensure_kafka_jars())
    last_error = ""
    for _attempt in range(3):
        workdir = kafka_workdir(base_dir)
        broker_port, controller_port = two_ports()
        (workdir / "server.properties").write_text(
            kafka_properties(workdir, broker_port, controller_port, overrides or {})
        )
        try:
            format_kafka_storage(java, classpath, workdir, kafka_cluster_id())
        except ServerError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        server = launch_kafka(
            java, classpath, workdir, broker_port, heap=heap, detached=detached,
            extra={"controller_port": controller_port},
        )  # fmt: skip
        bootstrap = f"{LOOPBACK}:{broker_port}"
        error = wait_kafka(
            server, functools.partial(kafka_answers, bootstrap, timeout=2.0), timeout
        )
        if error is None:
            return server
        log = failure_log(workdir)
        server.stop(timeout=10)
        last_error = f"{error} (broker port {broker_port}); server log tail:\n{log}"
        if not port_clash(log):
            break
    raise KafkaNotReadyError(last_error)
