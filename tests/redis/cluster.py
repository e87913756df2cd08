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
from dataclasses import dataclass, field
from pathlib import Path

from eventbus.testing import servers

__all__ = ["LocalCluster", "start_cluster"]


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
