"""``python -m eventbus.testing.servers fetch|versions|check``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence

from eventbus.testing.servers._process import MissingToolError, ServerError
from eventbus.testing.servers.kafka_server import (
    KAFKA_VERSION,
    ensure_kafka_jars,
    kafka_libs_dir,
    start_kafka,
)
from eventbus.testing.servers.provision import provision
from eventbus.testing.servers.redis_server import redis_server_version, start_redis


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
