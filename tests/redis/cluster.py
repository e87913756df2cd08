"""Start and stop a local three-node Redis Cluster (no replicas) for tests.

Each node is a ``redis-server --cluster-enabled yes`` process on a free loopback port with its
own temp dir; ``redis-cli --cluster create`` joins them, and readiness is polled (every node
reports ``cluster_state:ok``) against a deadline.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from eventbus.testing import servers

__all__ = [
    "LocalCluster",
    "key_slot",
    "migrate_slot",
    "node_id",
    "slot_owner",
    "start_cluster",
]


@dataclass
class LocalCluster:
    nodes: list[servers.ServerProcess] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0?cluster=true"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(timeout=10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _cli(port: int, *args: str, timeout: float = 30) -> str:
    exe = servers.require_tool("redis-cli", "to form a Redis Cluster for tests")
    result = subprocess.run(
        [exe, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    return result.stdout + result.stderr


def _ready(ports: list[int]) -> bool:
    return all("cluster_state:ok" in _cli(p, "cluster", "info", timeout=5) for p in ports)


def _cluster_port() -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free as well."""
    for _ in range(200):
        port = random.randint(20_000, 55_000)
        if all(_free(p) for p in (port, port + 10_000)):
            return port
    raise servers.ServerError("no free port pair (P, P + 10000) for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_node(node_dir: Path) -> servers.ServerProcess:
    last: Exception | None = None
    for _ in range(5):  # a port can be taken between the check and the start
        try:
            return servers.start_redis(
                data_dir=node_dir,
                port=_cluster_port(),
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "5000",
                ],
            )  # fmt: skip
        except servers.ServerError as exc:
            last = exc
            (node_dir / "nodes.conf").unlink(missing_ok=True)
    assert last is not None
    raise last


def start_cluster(size: int = 3, timeout: float = 60.0) -> LocalCluster:
    """Start ``size`` cluster nodes, join them, and wait until the cluster is ok."""
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-redis-cluster-"))
    cluster = LocalCluster(workdir=workdir)
    try:
        for i in range(size):
            node_dir = workdir / f"node{i}"
            node_dir.mkdir()
            cluster.nodes.append(_start_node(node_dir))
        addresses = [f"127.0.0.1:{p}" for p in cluster.ports]
        out = _cli(
            cluster.ports[0], "--cluster", "create", *addresses, "--cluster-replicas", "0",
            "--cluster-yes",
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _ready(cluster.ports):
            if time.monotonic() > deadline:
                raise servers.ServerError(f"cluster did not become ok in {timeout}s: {out}")
            time.sleep(0.1)  # allowed: poll interval of a deadline wait
    except BaseException:
        cluster.stop()
        raise
    return cluster


# slots: which node owns one, and moving one (resharding) ---------------------------------------


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)


def key_slot(port: int, key: str) -> int:
    """The hash slot of ``key`` (``CLUSTER KEYSLOT``, asked of the node on ``port``)."""
    with _node(port) as node:
        return int(node.execute_command("CLUSTER", "KEYSLOT", key))


def node_id(port: int) -> str:
    with _node(port) as node:
        found = node.execute_command("CLUSTER", "MYID")
    return found.decode() if isinstance(found, bytes) else str(found)


def slot_owner(port: int, slot: int) -> int:
    """The port of the node that owns ``slot`` in the view of the node on ``port``."""
    for line in _cli(port, "cluster", "nodes", timeout=10).splitlines():
        parts = line.split()
        if len(parts) < 9 or "master" not in parts[2]:
            continue
        for span in parts[8:]:
            if span.startswith("["):  # [slot->-id] / [slot-<-id]: a migration in progress
                continue
            lo, _, hi = span.partition("-")
            if int(lo) <= slot <= int(hi or lo):
                return int(parts[1].split("@")[0].rsplit(":", 1)[1])
    raise servers.ServerError(f"no node owns slot {slot} in the view of node {port}")


def migrate_slot(
    cluster: LocalCluster,
    slot: int,
    to_port: int,
    batch: int = 1,
    between: Callable[[], None] | None = None,
    timeout: float = 30.0,
) -> int:
    """Move ``slot`` and its keys to the node on ``to_port`` as ``redis-cli --cluster
    reshard`` does: IMPORTING on the target, MIGRATING on the source, ``MIGRATE ... KEYS`` in
    batches of ``batch`` keys (``between`` runs after each batch, so a test can let traffic
    meet the half-moved slot), then ``SETSLOT NODE`` on the target, the source and the others.
    Waits until every node names the target as the owner; returns the number of keys moved."""
    from_port = slot_owner(to_port, slot)
    if from_port == to_port:
        return 0
    source, target = node_id(from_port), node_id(to_port)
    moved = 0
    with _node(from_port) as src, _node(to_port) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
            reply = src.execute_command(
                "MIGRATE", "127.0.0.1", to_port, "", 0, 10_000, "KEYS", *keys
            )
            if reply not in (b"OK", "OK", b"NOKEY", "NOKEY"):
                raise servers.ServerError(f"MIGRATE of slot {slot} answered {reply!r}")
            moved += len(keys)
            if between is not None:
                between()
        for port in [
            to_port,
            from_port,
            *(p for p in cluster.ports if p not in (to_port, from_port)),
        ]:
            with _node(port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)
    deadline = time.monotonic() + timeout
    while any(slot_owner(p, slot) != to_port for p in cluster.ports):
        if time.monotonic() > deadline:
            raise servers.ServerError(f"nodes do not agree that slot {slot} moved in {timeout}s")
        time.sleep(0.05)  # allowed: poll interval of a deadline wait
    return moved
