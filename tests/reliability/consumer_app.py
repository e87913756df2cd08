"""A consumer service for the process-level fault tests: ``python consumer_app.py ARGS``.

It runs an eventbus runner over one topic and writes one line per handled event to ``--out``,
flushed and fsynced before the handler returns (so the line exists whenever the runner may ack):

    S <n> <partition> <offset> <attempt> <pid>     handler started (with --log-start)
    H <n> <partition> <offset> <attempt> <pid>     handler finished

Events carry ``{"n": <int>}``. SIGTERM calls ``runner.stop()`` (graceful: in-flight handlers
finish, acks are committed); ``EXIT <pid> <handled>`` is written after ``run()`` returns.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any, TextIO

import eventbus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each handler takes")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--log-start", action="store_true")
    args = parser.parse_args(argv)

    lock = threading.Lock()
    out: TextIO = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 (closed at exit)
    pid = os.getpid()

    def line(text: str) -> None:
        with lock:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())

    def handler(delivery: Any) -> None:
        n = delivery.event.data["n"]
        where = f"{n} {delivery.partition} {delivery.position.offset} {delivery.attempt} {pid}"
        if args.log_start:
            line(f"S {where}")
        if args.delay:
            time.sleep(args.delay)  # allowed: the handler's simulated work
        line(f"H {where}")

    with eventbus.connect(args.url) as bus:
        runner = bus.runner(
            handler,
            args.topic,
            group=args.group,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            session_timeout=args.session_timeout,
            max_attempts=1000,
        )
        signal.signal(signal.SIGTERM, lambda *_: runner.stop())
        line(f"READY {pid}")
        stats = runner.run()
    line(f"EXIT {pid} {stats.handled}")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
