"""Install what the servers need on a fresh Debian-like machine (apt-get, Maven)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from eventbus.testing.servers._process import ServerError, missing_tools
from eventbus.testing.servers.kafka_server import (
    KAFKA_VERSION,
    ensure_kafka_jars,
    kafka_jars_present,
    kafka_libs_dir,
)


def provision(*, log: Callable[[str], None] = print) -> list[str]:
    """Install what the local servers need and is missing: Debian's packages for the programs
    of :func:`missing_tools` (through apt-get, as root or with sudo), then Kafka's jars from
    Maven Central. Idempotent; returns what it did (empty when nothing was missing).

    Raises :class:`ServerError` when something is missing and cannot be installed here (not
    Debian, not root and no sudo, or apt-get failed), naming the command to run by hand."""
    done: list[str] = []
    missing = missing_tools()
    if missing:
        packages = sorted(set(missing.values()))
        by_hand = f"apt-get install {' '.join(packages)}"
        apt = shutil.which("apt-get")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"] if shutil.which("sudo") else None
        if apt is None or sudo is None:
            raise ServerError(
                f"missing {', '.join(sorted(missing))}; install them with: {by_hand} "
                "(this machine has no apt-get, or this user is not root and has no sudo)"
            )
        log(f"installing {', '.join(packages)} with apt-get (missing: {', '.join(missing)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            [*sudo, apt, "update", "-qq"],
            [*sudo, apt, "install", "-y", "-qq", "--no-install-recommends", *packages],
        ):
            result = subprocess.run(
                argv, env=env, capture_output=True, text=True, check=False, timeout=900
            )
            if result.returncode != 0:
                raise ServerError(
                    f"{' '.join(argv)} failed ({result.returncode}): "
                    f"{(result.stderr or result.stdout).strip()[-800:]}; run by hand: {by_hand}"
                )
        done.append(f"apt-get install {' '.join(packages)}")
    if not kafka_jars_present():
        log(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {kafka_libs_dir()}")
        ensure_kafka_jars(quiet=True)
        done.append(f"Kafka {KAFKA_VERSION} jars")
    return done
