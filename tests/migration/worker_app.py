"""A worker service for the migration tests: ``python -m tests.migration.worker_app ARGS``.

It runs an eventbus runner over one topic (or several: ``--topic`` repeated) in a consumer
group (through ``migrate://`` in the tests) and appends one line per handled event to
``--out``, flushed and fsynced before the handler returns (so the line exists whenever the
runner may ack):

    READY <pid>                                          before the runner starts
    H <event id> <key> <seq> <pid> <monotonic ns>        handler started on this event
    P <event id> <pid> <monotonic ns>                    a poisoned event (``{"poison": true}``):
                                                         the handler raises, so it ends up in
                                                         ``<topic>.dlq``
    EXIT <pid> <handled>                                 after the runner stopped

Events carry ``{"seq": <int>}``. SIGTERM calls ``runner.stop()`` (in-flight handlers finish,
acks are sent). ``time.monotonic_ns()`` is one clock for every process of the machine, so the
lines of several workers can be merged in handling order.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import TextIO

import eventbus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True, action="append", help="repeatable")
    parser.add_argument("--group", required=True)
    parser.add_argument("--name", required=True, help="consumer name in the group")
    parser.add_argument("--out", required=True)
    parser.add_argument("--session-timeout", type=float, default=6.0)
    parser.add_argument("--start", choices=["earliest", "latest"], default="earliest")
    parser.add_argument("--max-attempts", type=int, default=5)
    args = parser.parse_args(argv)

    lock = threading.Lock()
    out: TextIO = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 (closed at exit)
    pid = os.getpid()

    def line(text: str) -> None:
        with lock:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())

    def handler(delivery: eventbus.Delivery) -> None:
        started = time.monotonic_ns()
        event = delivery.event
        if event.data.get("poison"):  # never succeeds: dead-lettered after --max-attempts
            line(f"P {event.id} {pid} {started}")
            raise RuntimeError(f"poisoned event {event.id}")
        line(f"H {event.id} {event.key or '-'} {event.data['seq']} {pid} {started}")

    with eventbus.connect(args.url) as bus:
        runner = bus.runner(
            handler,
            args.topic if len(args.topic) > 1 else args.topic[0],
            group=args.group,
            consumer=args.name,
            session_timeout=args.session_timeout,
            start=args.start,
            max_attempts=args.max_attempts,
        )
        signal.signal(signal.SIGTERM, lambda *_: runner.stop())
        line(f"READY {pid}")
        stats = runner.run()
    line(f"EXIT {pid} {stats.handled}")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
