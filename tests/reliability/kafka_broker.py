"""Restarting a local Kafka broker on the same ports and data dir, for the restart tests.

``eventbus.testing.servers.start_kafka`` always formats a fresh data dir on new ports and has no
restart; so here the broker is stopped keeping its work dir, and the same java command
(``servers.java_argv`` with ``kafka.Kafka server.properties``) is started again on it.
"""

from __future__ import annotations

import contextlib
import functools
import signal

from eventbus.testing import servers


def stop_broker(server: servers.ServerProcess, *, hard: bool = False) -> None:
    """Stop the broker (SIGTERM, or SIGKILL when ``hard``) and keep its work dir."""
    server.keep_workdir = True
    if hard and server._popen is not None:
        with contextlib.suppress(ProcessLookupError):
            server._popen.send_signal(signal.SIGKILL)
        server._popen.wait(30)
    server.stop(timeout=30)


def start_again(server: servers.ServerProcess, timeout: float = 90.0) -> servers.ServerProcess:
    """Start the broker of ``server`` again on its work dir (same ports, same data)."""
    java = servers.require_tool("java", "to run Apache Kafka")
    workdir = server.workdir
    argv = servers.java_argv(
        java,
        servers.kafka_classpath(),
        workdir,
        "768m",
        ["kafka.Kafka", str(workdir / "server.properties")],
    )
    pid, popen = servers.spawn(argv, cwd=workdir, out_path=workdir / "kafka.out", detached=False)
    again = servers.ServerProcess(
        kind="kafka",
        pid=pid,
        port=server.port,
        url=server.url,
        workdir=workdir,
        log_path=server.log_path,
        version=server.version,
        keep_workdir=False,
        extra=dict(server.extra),
        _popen=popen,
    )

    def died() -> str | None:
        return None if again.alive() else f"the broker exited:\n{again.log_tail()}"

    answers = functools.partial(servers.kafka_answers, server.bootstrap, timeout=2.0)
    if not servers.wait_until(answers, timeout=timeout, interval=0.2, give_up=died):
        again.stop()
        raise servers.KafkaNotReadyError(f"restarted broker did not answer:\n{again.log_tail()}")
    return again
