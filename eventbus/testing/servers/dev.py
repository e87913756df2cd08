"""``eventbus dev up|status|down``: detached servers recorded by PID in a state file."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventbus.testing.servers._process import (
    ServerProcess,
    file_lock,
    pid_alive,
    state_dir,
    stop_pid,
)
from eventbus.testing.servers.kafka_cluster import (
    cluster_pids_alive,
    start_kafka_cluster,
    stop_cluster_pids,
)
from eventbus.testing.servers.kafka_server import kafka_answers, start_kafka
from eventbus.testing.servers.redis_server import redis_answers, start_redis

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
    """Its PID is alive (and is ours: command line mentions its dir) and its port answers; for
    a Kafka cluster, every node's PID."""
    if "nodes" in server.extra and not cluster_pids_alive(server):
        return False
    return pid_alive(server.pid, str(server.workdir)) and server_answers(server)


def broker_count(server: ServerProcess) -> int:
    """How many Kafka brokers a recorded server stands for (1 unless it is a cluster)."""
    return len(server.extra.get("nodes", [])) or 1


def _stop(server: ServerProcess) -> bool:
    """Stop a recorded server (every node of a cluster); True if something was running."""
    stopped = stop_cluster_pids(server) if "nodes" in server.extra else False
    return stop_pid(server.pid, marker=str(server.workdir)) or stopped


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
    _stop(server)
    shutil.rmtree(server.workdir, ignore_errors=True)


def dev_up(
    kinds: Sequence[str] = DEV_KINDS, *, redis_appendonly: bool = False, kafka_brokers: int = 1
) -> DevServers:
    """Start detached servers (or reuse running ones recorded in the state file).

    ``kafka_brokers`` > 1 starts a replicated KRaft cluster of that many nodes instead of the
    single broker (a recorded Kafka of another size is stopped and replaced)."""
    base = state_dir()
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / ".lock"):
        state = _load_state()
        reused: dict[str, bool] = {}
        try:
            for kind in kinds:
                current = state.get(kind)
                same_size = kind != "kafka" or (
                    current is not None and broker_count(current) == kafka_brokers
                )
                if current is not None and same_size and server_running(current):
                    reused[kind] = True
                    continue
                if current is not None:
                    _discard(current)
                    del state[kind]
                if kind == "redis":
                    state[kind] = start_redis(
                        detached=True, base_dir=base, appendonly=redis_appendonly
                    )
                elif kafka_brokers > 1:
                    cluster = start_kafka_cluster(kafka_brokers, detached=True, base_dir=base)
                    state[kind] = cluster.to_server_process()
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
    with file_lock(base / ".lock"):
        state = _load_state()
        stopped: dict[str, bool] = {}
        for kind in kinds:
            server = state.pop(kind, None)
            if server is not None:
                stopped[kind] = _stop(server)
                shutil.rmtree(server.workdir, ignore_errors=True)
        if state:
            _save_state(state)
        else:
            dev_state_file().unlink(missing_ok=True)
    return DevServers(state, {kind: server_running(s) for kind, s in state.items()}, {}, stopped)
