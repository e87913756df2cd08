"""Start and stop real Redis and Apache Kafka servers on loopback, for tests and local development.

Redis is Debian's ``redis-server`` from PATH. Kafka is Apache Kafka (single node, KRaft, broker and
controller in one JVM) from Maven Central jars, fetched once into a cache folder with Maven.

Two ways to run a server:

* attached (pytest fixtures, reliability tests): ``start_redis()`` / ``start_kafka()`` return a
  :class:`ServerProcess` holding the child process; ``stop()`` ends it and removes its temp dir.
  ``start_kafka_cluster(brokers=3)`` starts a replicated KRaft cluster (one JVM per node) and
  returns a :class:`KafkaCluster` with a handle per node (kill, stop, start, wipe its data).
  Everything still running is stopped at interpreter exit as a safety net.
* detached (``eventbus dev up``): the same functions with ``detached=True``; the process survives
  the caller, is recorded by PID in a state file, and ``stop_pid()`` ends it later.

Environment variables:

* ``EVENTBUS_CACHE_DIR``: cache root (default ``~/.cache/eventbus``); Kafka jars live in
  ``<cache>/kafka-<version>/libs``.
* ``EVENTBUS_KAFKA_LIBS``: use this folder of Kafka jars instead (nothing is fetched into it if it
  is complete already).
* ``EVENTBUS_STATE_DIR``: where ``eventbus dev`` keeps its state file and server dirs (default
  ``<cache>/dev``).

Command line: ``python -m eventbus.testing.servers fetch|versions|check``.
"""

from __future__ import annotations

from eventbus.testing.servers._process import (
    LOOPBACK,
    MissingToolError,
    ServerError,
    ServerProcess,
    cache_dir,
    free_port,
    missing_tools,
    pid_alive,
    port_open,
    require_tool,
    spawn,
    state_dir,
    stop_pid,
    tail,
    wait_until,
)
from eventbus.testing.servers.dev import (
    DEV_KINDS,
    DevServers,
    dev_down,
    dev_status,
    dev_up,
    dev_urls,
)
from eventbus.testing.servers.kafka_cluster import (
    KafkaCluster,
    KafkaNode,
    cluster_properties,
    start_kafka_cluster,
)
from eventbus.testing.servers.kafka_server import (
    KAFKA_VERSION,
    KafkaNotReadyError,
    ensure_kafka_jars,
    java_argv,
    kafka_answers,
    kafka_classpath,
    kafka_cluster_id,
    kafka_jars_present,
    kafka_libs_dir,
    kafka_properties,
    start_kafka,
)
from eventbus.testing.servers.provision import provision
from eventbus.testing.servers.redis_server import redis_answers, redis_server_version, start_redis

__all__ = [
    "DEV_KINDS",
    "DevServers",
    "KAFKA_VERSION",
    "KafkaCluster",
    "KafkaNode",
    "KafkaNotReadyError",
    "LOOPBACK",
    "MissingToolError",
    "ServerError",
    "ServerProcess",
    "cache_dir",
    "cluster_properties",
    "dev_down",
    "dev_status",
    "dev_up",
    "dev_urls",
    "ensure_kafka_jars",
    "free_port",
    "java_argv",
    "kafka_answers",
    "kafka_classpath",
    "kafka_cluster_id",
    "kafka_jars_present",
    "kafka_libs_dir",
    "kafka_properties",
    "missing_tools",
    "pid_alive",
    "port_open",
    "provision",
    "redis_answers",
    "redis_server_version",
    "require_tool",
    "spawn",
    "start_kafka",
    "start_kafka_cluster",
    "start_redis",
    "state_dir",
    "stop_pid",
    "tail",
    "wait_until",
]
