"""A replicated Apache Kafka for tests: several KRaft nodes (each broker and controller, a
controller quorum of all of them) from the same Maven jars as :func:`start_kafka`, on loopback.

Each node is its own JVM with a small heap, its own temp dir (``node-<id>/`` under the
cluster's dir: ``server.properties``, ``metadata/`` for the KRaft metadata log, ``data/`` for
partition logs, ``logs/server.log``) and two free ports (client and controller). The voters are
static (``controller.quorum.voters``), so every node is formatted alike with one cluster id.

Topic defaults suit fault tests: replication factor 3 (or the node count when smaller),
``min.insync.replicas=2``, the offsets and transaction logs replicated alike, and failure
detection shortened (a broker silent for 4 s is fenced, a follower 5 s behind leaves the ISR)
so that a fault is noticed within a test's time.

    cluster = start_kafka_cluster(brokers=3)
    cluster.url                       # kafka://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
    cluster.nodes[0].kill(signal.SIGKILL); cluster.nodes[0].start()
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventbus.testing.servers._process import (
    LOOPBACK,
    ServerError,
    ServerProcess,
    free_port,
    pid_alive,
    require_tool,
    stop_pid,
    wait_until,
)
from eventbus.testing.servers.kafka_server import (
    KAFKA_VERSION,
    KafkaNotReadyError,
    ensure_kafka_jars,
    failure_log,
    format_kafka_storage,
    kafka_classpath,
    kafka_cluster_id,
    kafka_log_path,
    kafka_properties,
    kafka_workdir,
    launch_kafka,
    port_clash,
    wait_kafka,
)

__all__ = ["KafkaCluster", "KafkaNode", "cluster_properties", "start_kafka_cluster"]

CLUSTER_HEAP = "384m"


def cluster_properties(brokers: int) -> dict[str, str]:
    """Broker defaults of a test cluster of ``brokers`` nodes (replicated topics, quick
    failure detection); a start's ``overrides`` win over them."""
    rf = str(min(3, brokers))
    isr = str(min(2, brokers))
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "unclean.leader.election.enable": "false",
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
        "replica.lag.time.max.ms": "5000",
        "replica.socket.timeout.ms": "5000",
        "controller.quorum.fetch.timeout.ms": "2000",
        "controller.quorum.election.timeout.ms": "1000",
        "num.replica.fetchers": "1",
        "num.io.threads": "4",
        "num.network.threads": "2",
    }


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": 2000})


def broker_ids(bootstrap: str, timeout: float = 2.0) -> set[int]:
    """Ids of the live (unfenced) brokers the metadata of ``bootstrap`` lists; empty when it
    does not answer."""
    try:
        metadata = _admin(bootstrap).list_topics(timeout=timeout)
    except Exception:
        return set()
    return {int(b) for b in metadata.brokers}


@dataclass(eq=False)
class KafkaNode:
    """One node of a :class:`KafkaCluster` (broker and controller in one JVM)."""

    node_id: int
    port: int
    controller_port: int
    workdir: Path
    cluster_id: str
    heap: str = CLUSTER_HEAP
    detached: bool = False
    process: ServerProcess | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Partition logs (``log.dirs``)."""
        return self.workdir / "data"

    @property
    def metadata_dir(self) -> Path:
        """The KRaft metadata log (``metadata.log.dir``)."""
        return self.workdir / "metadata"

    @property
    def log_path(self) -> Path:
        return kafka_log_path(self.workdir)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; after SIGKILL, wait until the process is gone."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.stop(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``), keeping the node's dir for a start."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.alive():
                os.kill(self.pid, signal.SIGCONT)  # a stopped JVM cannot act on SIGTERM
        self.process.keep_workdir = True
        self.process.stop(timeout=timeout)
        self.process = None

    def launch(self) -> ServerProcess:
        """Start the JVM on this node's dir and ports; does not wait."""
        if self.alive():
            raise ServerError(f"kafka node {self.node_id} runs already (pid {self.pid})")
        java = require_tool("java", f"to run Apache Kafka {KAFKA_VERSION}")
        self.process = launch_kafka(
            java, kafka_classpath(), self.workdir, self.port, heap=self.heap,
            detached=self.detached,
            extra={"node_id": self.node_id, "controller_port": self.controller_port},
        )  # fmt: skip
        return self.process

    def registered(self) -> bool:
        """True once the node answers metadata and lists itself (registered and unfenced)."""
        return self.node_id in broker_ids(self.bootstrap)

    def start(self, timeout: float = 90.0) -> None:
        """Start the node again (same ports, same dirs) and wait until it is registered."""
        process = self.launch()
        error = wait_kafka(process, self.registered, timeout, f"Kafka node {self.node_id}")
        if error is not None:
            log = failure_log(self.workdir)
            self.stop(timeout=10)
            raise KafkaNotReadyError(f"{error}; server log tail:\n{log}")

    def restart(self, timeout: float = 90.0) -> None:
        self.stop()
        self.start(timeout)

    def wipe_data(self) -> None:
        """Lose this (stopped) node's partition data: delete ``log.dirs`` and format it again
        (same cluster id and node id, a new directory id), as after a disk replacement. The
        metadata log is kept: the node rejoins the quorum and re-replicates its partitions."""
        if self.alive():
            raise ServerError(f"stop kafka node {self.node_id} before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        java = require_tool("java", f"to run Apache Kafka {KAFKA_VERSION}")
        format_kafka_storage(
            java, kafka_classpath(), self.workdir, self.cluster_id, ignore_formatted=True
        )

    def quorum_state(self) -> tuple[int, int] | None:
        """(leader epoch, leader id) from this node's KRaft ``quorum-state`` file, if known."""
        path = self.metadata_dir / "__cluster_metadata-0" / "quorum-state"
        try:
            data = json.loads(path.read_text())
            return int(data["leaderEpoch"]), int(data["leaderId"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(eq=False)
class KafkaCluster:
    """Nodes started by :func:`start_kafka_cluster`; ``stop()`` ends them and removes the dir."""

    nodes: list[KafkaNode]
    workdir: Path
    cluster_id: str
    version: str = KAFKA_VERSION
    keep_workdir: bool = False

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def live_bootstrap(self) -> str:
        """The bootstrap list of the nodes whose process runs."""
        return ",".join(n.bootstrap for n in self.nodes if n.alive()) or self.bootstrap

    def registered(self) -> set[int]:
        """Ids of the brokers the cluster's metadata lists (live and unfenced)."""
        return broker_ids(self.live_bootstrap())

    def wait_registered(self, timeout: float = 90.0) -> None:
        want = {n.node_id for n in self.nodes}
        if not wait_until(lambda: want <= self.registered(), timeout=timeout, interval=0.2):
            raise KafkaNotReadyError(
                f"not every broker registered within {timeout:.0f}s (have {self.registered()})"
            )

    def active_controller(self) -> int | None:
        """Id of the active controller: the quorum leader of the newest epoch the live nodes
        have recorded. (In KRaft the controller id a broker's metadata or DescribeCluster
        reports is a random broker, not the quorum leader.)"""
        states = [s for n in self.nodes if n.alive() and (s := n.quorum_state()) is not None]
        leaders = [s for s in states if s[1] >= 0]
        return max(leaders)[1] if leaders else None

    def replicas(self, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
        """partition -> (leader, replicas, in-sync replicas) from the cluster's metadata."""
        metadata = _admin(self.live_bootstrap()).list_topics(topic, timeout=10)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return {}
        return {p.id: (p.leader, list(p.replicas), list(p.isrs)) for p in found.partitions.values()}

    def in_sync(self, topic: str) -> bool:
        """True if every partition of ``topic`` has a leader and all replicas in sync."""
        try:
            parts = self.replicas(topic)
        except Exception:
            return False
        return bool(parts) and all(
            leader >= 0 and sorted(isr) == sorted(reps) for leader, reps, isr in parts.values()
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every node and remove the cluster's dir (unless ``keep_workdir``).

        All nodes get SIGTERM at once (one by one, the last would wait for a quorum that has
        gone), then each is waited for (SIGKILL after ``timeout``)."""
        try:
            for n in self.nodes:
                if n.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(n.pid, signal.SIGCONT)
                        os.kill(n.pid, signal.SIGTERM)
            for n in self.nodes:
                with contextlib.suppress(Exception):
                    n.stop(timeout=timeout)
        finally:
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_server_process(self) -> ServerProcess:
        """One :class:`ServerProcess` standing for the cluster (``eventbus dev`` state): node
        1's pid and port, the cluster's URL and dir, every node in ``extra["nodes"]``."""
        first = self.nodes[0]
        return ServerProcess(
            kind="kafka",
            pid=first.pid,
            port=first.port,
            url=self.url,
            workdir=self.workdir,
            log_path=first.log_path,
            version=self.version,
            keep_workdir=self.keep_workdir,
            detached=first.detached,
            extra={
                "cluster_id": self.cluster_id,
                "nodes": [
                    {"node_id": n.node_id, "pid": n.pid, "port": n.port, "workdir": str(n.workdir)}
                    for n in self.nodes
                ],
            },
        )


def stop_cluster_pids(server: ServerProcess, timeout: float = 20.0) -> bool:
    """Stop every node a cluster's :class:`ServerProcess` records (``extra["nodes"]``);
    True if any was running."""
    stopped = False
    for entry in server.extra.get("nodes", []):
        stopped |= stop_pid(int(entry["pid"]), marker=str(entry["workdir"]), timeout=timeout)
    return stopped


def cluster_pids_alive(server: ServerProcess) -> bool:
    """True if every node a cluster's :class:`ServerProcess` records runs."""
    nodes = server.extra.get("nodes", [])
    return bool(nodes) and all(pid_alive(int(e["pid"]), str(e["workdir"])) for e in nodes)


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _make_nodes(
    root: Path, brokers: int, heap: str, detached: bool, overrides: dict[str, str]
) -> list[KafkaNode]:
    """Node dirs with their ``server.properties``, formatted with one cluster id."""
    cluster_id = kafka_cluster_id()
    ports = _ports(2 * brokers)
    nodes = [
        KafkaNode(
            node_id=i + 1,
            port=ports[2 * i],
            controller_port=ports[2 * i + 1],
            workdir=kafka_workdir(root, prefix=f"node-{i + 1}-"),
            cluster_id=cluster_id,
            heap=heap,
            detached=detached,
        )
        for i in range(brokers)
    ]
    voters = ",".join(f"{n.node_id}@{LOOPBACK}:{n.controller_port}" for n in nodes)
    java = require_tool("java", f"to run Apache Kafka {KAFKA_VERSION}")
    classpath = kafka_classpath()
    for n in nodes:
        props = {
            **cluster_properties(brokers),
            "node.id": str(n.node_id),
            "controller.quorum.voters": voters,
            "metadata.log.dir": str(n.metadata_dir),
            **overrides,
        }
        text = kafka_properties(n.workdir, n.port, n.controller_port, props)
        (n.workdir / "server.properties").write_text(text)
    with ThreadPoolExecutor(max_workers=brokers) as pool:  # one JVM each, in parallel
        futures = [
            pool.submit(format_kafka_storage, java, classpath, n.workdir, cluster_id) for n in nodes
        ]
    for future in futures:
        future.result()  # raises the first node's ServerError
    return nodes


def start_kafka_cluster(
    brokers: int = 3,
    *,
    heap: str = CLUSTER_HEAP,
    overrides: dict[str, str] | None = None,
    detached: bool = False,
    base_dir: Path | None = None,
    timeout: float = 120.0,
) -> KafkaCluster:
    """Start ``brokers`` combined KRaft nodes on free loopback ports and wait until every broker
    is registered. ``overrides`` are ``server.properties`` entries for every node."""
    if brokers < 1:
        raise ServerError("a Kafka cluster needs at least one broker")
    ensure_kafka_jars()
    last_error = ""
    for _attempt in range(3):
        root = Path(tempfile.mkdtemp(prefix="eventbus-kafka-cluster-", dir=base_dir))
        cluster: KafkaCluster | None = None
        try:
            nodes = _make_nodes(root, brokers, heap, detached, overrides or {})
            cluster = KafkaCluster(nodes, root, nodes[0].cluster_id)
            for n in nodes:
                n.launch()
            error = _wait_cluster(cluster, timeout)
        except BaseException:
            if cluster is not None:
                cluster.stop(timeout=10)
            shutil.rmtree(root, ignore_errors=True)
            raise
        if error is None:
            return cluster
        logs = "\n".join(f"--- node {n.node_id} ---\n{failure_log(n.workdir)}" for n in nodes)
        cluster.stop(timeout=10)
        last_error = f"{error}; server log tails:\n{logs}"
        if not port_clash(logs):
            break
    raise KafkaNotReadyError(last_error)


def _wait_cluster(cluster: KafkaCluster, timeout: float) -> str | None:
    """None once every node is registered, else why not."""
    want = {n.node_id for n in cluster.nodes}

    def all_registered() -> bool:
        return want <= broker_ids(cluster.bootstrap)

    def died() -> str | None:
        dead = [n.node_id for n in cluster.nodes if not n.alive()]
        return f"kafka node(s) {dead} exited" if dead else None

    try:
        if wait_until(
            all_registered, timeout=timeout, interval=0.2, max_interval=1.0, give_up=died
        ):
            return None
    except ServerError as exc:
        return str(exc)
    return f"not every broker of the cluster registered within {timeout:.0f}s"
