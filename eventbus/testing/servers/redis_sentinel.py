"""A Redis primary with replicas watched by Sentinels, for failover tests: Debian's
``redis-server`` for the data nodes (:func:`start_redis` with ``--replicaof``) and
``redis-server <conf> --sentinel`` for the Sentinels (the ``redis-sentinel`` package only adds
a service file and a symlink to the same binary), all on free loopback ports.

``start_redis_sentinel()`` waits until every Sentinel sees the primary, every replica and every
other Sentinel, so a failover can start as soon as the primary dies. ``down_after_ms`` (1000)
and ``failover_timeout_ms`` (5000) are small, so a failover takes a few seconds.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from eventbus.testing.servers.redis_server import (
    redis_answers,
    redis_server_version,
    start_redis,
)

__all__ = ["SentinelSetup", "start_redis_sentinel"]

SERVICE = "eventbus"


def _command(port: int, *args: Any, timeout: float = 2.0) -> Any:
    """One command to a node on loopback (redis-py, imported here: only this module needs it)."""
    import redis

    client = redis.Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _pairs(reply: Any) -> dict[str, Any]:
    """A flat [name, value, ...] reply (RESP2 SENTINEL MASTER) as a dict; dicts pass through."""
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    items = list(reply or [])
    return {str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


@dataclass(eq=False)
class SentinelSetup:
    """Data nodes (the first one started as the primary) and the Sentinels watching them."""

    service: str
    nodes: list[ServerProcess]
    sentinels: list[ServerProcess]
    workdir: Path
    extra_args: tuple[str, ...] = ()
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,.../<service>/0``."""
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def node(self, port: int) -> ServerProcess:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def primary_port(self, *, timeout: float = 2.0) -> int | None:
        """The primary's port as the first Sentinel that answers names it (None: none)."""
        for sentinel in self.sentinels:
            try:
                reply = _command(
                    sentinel.port,
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service,
                    timeout=timeout,
                )  # fmt: skip
            except Exception:  # a Sentinel that does not answer: ask the next
                continue
            if reply:
                return int(reply[1])
        return None

    def role(self, port: int) -> str | None:
        """``master`` / ``slave`` as the node says (None: it does not answer)."""
        try:
            return str(_command(port, "ROLE")[0])
        except Exception:  # down or loading
            return None

    def kill(self, port: int) -> None:
        """SIGKILL a data node (its temp dir is kept for :meth:`restart`)."""
        node = self.node(port)
        node.keep_workdir = True
        popen = node._popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGKILL)
            popen.wait(10)
        node.stop()  # reaps it, untracks it

    def restart(self, port: int, *, timeout: float = 30.0) -> ServerProcess:
        """Start a stopped data node again on its port and dir, as a primary of nobody: the
        Sentinels turn it into a replica of the current primary (see
        :meth:`wait_replica_of_primary`). Restart it only after a failover promoted another
        node: a restarted empty primary that the Sentinels have not given up on stays
        primary, and its replicas would copy its empty data set."""
        old = self.node(port)
        node = start_redis(
            port=port, data_dir=old.workdir, extra_args=self.extra_args, timeout=timeout
        )
        node.keep_workdir = False
        self.nodes[self.nodes.index(old)] = node
        return node

    def wait_failover(self, old_primary: int, timeout: float = 30.0) -> int:
        """Wait until every Sentinel names a primary other than ``old_primary`` and that node
        says it is a primary; returns its port."""
        found: list[int] = []

        def promoted() -> bool:
            ports = {self._primary_by(s.port) for s in self.sentinels}
            if len(ports) != 1:
                return False
            port = ports.pop()
            if port is None or port == old_primary or self.role(port) != "master":
                return False
            found[:] = [port]
            return True

        if not wait_until(promoted, timeout=timeout, interval=0.05, max_interval=0.2):
            raise ServerError(
                f"no failover away from port {old_primary} within {timeout:.0f}s; "
                f"sentinel log tail:\n{self.sentinels[0].log_tail()}"
            )
        return found[0]

    def wait_replica_of_primary(self, port: int, timeout: float = 30.0) -> None:
        """Wait until node ``port`` replicates the current primary and is in sync with it."""

        def synced() -> bool:
            primary = self.primary_port()
            return primary is not None and _replica_synced(port, primary)

        if not wait_until(synced, timeout=timeout, interval=0.05, max_interval=0.2):
            raise ServerError(
                f"node {port} did not become an in-sync replica within {timeout:.0f}s; "
                f"its log tail:\n{self.node(port).log_tail()}"
            )

    def _primary_by(self, sentinel_port: int) -> int | None:
        try:
            reply = _command(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        except Exception:
            return None
        return int(reply[1]) if reply else None

    def processes(self) -> Iterator[ServerProcess]:
        yield from self.sentinels
        yield from self.nodes

    def stop(self) -> None:
        """Stop the Sentinels first (no failover while the data nodes go), then the nodes."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []
        for proc in self.processes():
            try:
                proc.keep_workdir = False
                proc.stop(timeout=10)
            except Exception as exc:  # stop the rest, report at the end
                errors.append(f"{proc.kind}:{proc.port}: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise ServerError("could not stop: " + "; ".join(errors))

    def __enter__(self) -> SentinelSetup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sentinel_conf(
    port: int, workdir: Path, service: str, primary: int, quorum: int, down_ms: int, fail_ms: int
) -> str:
    return "\n".join(
        [
            f"port {port}",
            f"bind {LOOPBACK}",
            "protected-mode no",
            "daemonize no",
            f'dir "{workdir}"',
            f'logfile "{workdir / "sentinel.log"}"',
            f"sentinel monitor {service} {LOOPBACK} {primary} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_ms}",
            f"sentinel failover-timeout {service} {fail_ms}",
            f"sentinel parallel-syncs {service} 1",
            "",
        ]
    )


def _start_sentinel(
    base: Path, service: str, primary: int, quorum: int, down_ms: int, fail_ms: int, version: str
) -> ServerProcess:
    exe = require_tool("redis-server", "to run Redis Sentinel for failover tests")
    last = ""
    for _ in range(3):
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"sentinel-{port}-", dir=base))
        conf = workdir / "sentinel.conf"  # Sentinel rewrites its config: keep it writable
        conf.write_text(_sentinel_conf(port, workdir, service, primary, quorum, down_ms, fail_ms))
        pid, popen = spawn(
            [exe, str(conf), "--sentinel"],
            cwd=workdir,
            out_path=workdir / "sentinel.out",
            detached=False,
        )
        proc = ServerProcess(
            kind="redis-sentinel",
            pid=pid,
            port=port,
            url=f"redis://{LOOPBACK}:{port}",
            workdir=workdir,
            log_path=workdir / "sentinel.log",
            version=version,
            _popen=popen,
        )
        track(proc)
        try:
            if wait_until(
                lambda: redis_answers(port),  # noqa: B023
                timeout=20,
                give_up=lambda: None if proc.alive() else "redis-server --sentinel exited",  # noqa: B023
            ):
                return proc
            last = "did not answer PING within 20s"
        except ServerError as exc:
            last = str(exc)
        log = proc.log_tail()
        proc.stop(timeout=5)
        last = f"Sentinel on port {port}: {last}; log tail:\n{log}"
        if "Address already in use" not in log:
            break
    raise ServerError(last)


def start_redis_sentinel(
    *,
    replicas: int = 1,
    sentinels: int = 3,
    service: str = SERVICE,
    quorum: int | None = None,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 5000,
    extra_args: tuple[str, ...] = (),
    base_dir: Path | None = None,
    timeout: float = 60.0,
) -> SentinelSetup:
    """Start a primary, ``replicas`` replicas of it and ``sentinels`` Sentinels (quorum: a
    majority), and wait until the Sentinels see each other and every replica in sync.

    ``extra_args`` go to every data node (e.g. ``("--appendonly", "yes")``). Stop it all with
    :meth:`SentinelSetup.stop` (or use it as a context manager)."""
    version = redis_server_version()
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-sentinel-", dir=base_dir))
    setup = SentinelSetup(service=service, nodes=[], sentinels=[], workdir=workdir,
                          extra_args=tuple(extra_args))  # fmt: skip
    try:
        primary = start_redis(extra_args=extra_args, base_dir=workdir)
        setup.nodes.append(primary)
        for _ in range(replicas):
            setup.nodes.append(
                start_redis(
                    extra_args=(*extra_args, "--replicaof", LOOPBACK, str(primary.port)),
                    base_dir=workdir,
                )
            )
        for node in setup.nodes[1:]:
            if not wait_until(lambda: _replica_synced(node.port, primary.port), timeout=timeout):  # noqa: B023
                raise ServerError(
                    f"replica {node.port} did not sync with {primary.port} within "
                    f"{timeout:.0f}s; log tail:\n{node.log_tail()}"
                )
        majority = quorum if quorum is not None else sentinels // 2 + 1
        for _ in range(sentinels):
            setup.sentinels.append(
                _start_sentinel(
                    workdir, service, primary.port, majority, down_after_ms,
                    failover_timeout_ms, version,
                )
            )  # fmt: skip
        _wait_discovery(setup, replicas, timeout)
    except BaseException:
        setup.stop()
        raise
    return setup


def _wait_discovery(setup: SentinelSetup, replicas: int, timeout: float) -> None:
    """Every Sentinel knows the primary (up), all replicas and all other Sentinels."""
    others = len(setup.sentinels) - 1

    def known() -> bool:
        for sentinel in setup.sentinels:
            try:
                state = _pairs(_command(sentinel.port, "SENTINEL", "MASTER", setup.service))
            except Exception:  # not ready
                return False
            flags = str(state.get("flags", ""))
            if flags != "master":
                return False
            if int(state.get("num-slaves", 0)) < replicas:
                return False
            if int(state.get("num-other-sentinels", 0)) < others:
                return False
        return True

    if not wait_until(known, timeout=timeout, interval=0.1, max_interval=0.5):
        raise ServerError(
            f"the Sentinels did not discover each other and the replicas within {timeout:.0f}s;"
            f" log tail:\n{setup.sentinels[0].log_tail()}"
        )


def _replica_synced(port: int, primary: int) -> bool:
    try:
        info = _command(port, "ROLE")
    except Exception:  # still starting
        return False
    return str(info[0]) == "slave" and int(info[2]) == primary and str(info[3]) == "connected"
