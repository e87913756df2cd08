"""Translate redis-py exceptions into eventbus errors, at the edge of every operation.

Messages name the (redacted) URL and what to check; they never contain credentials.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from redis import exceptions as rx

from eventbus.errors import (
    AuthenticationError,
    ConnectionFailedError,
    EventBusError,
    GroupNotFoundError,
    OperationTimeoutError,
)

__all__ = ["demoted", "edge", "is_busygroup", "is_nogroup", "slot_in_migration", "translate"]

# redis-py's Sentinel connection turns READONLY / UNBLOCKED from a demoted primary into a
# ConnectionError with this text (and drops the connection)
_DEMOTED_TEXT = "previous master is now a slave"


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, rx.ResponseError) and str(exc).startswith("NOGROUP")


def is_busygroup(exc: BaseException) -> bool:
    return isinstance(exc, rx.ResponseError) and str(exc).startswith("BUSYGROUP")


def slot_in_migration(exc: BaseException) -> bool:
    """True when ``exc`` says the command's slot is moving and the command was not run:
    redirections that redis-py gave up following, or a TRYAGAIN / ASK that reached us."""
    if isinstance(exc, rx.TryAgainError | rx.AskError):  # MovedError is an AskError
        return True
    return type(exc) is rx.ClusterError and "TTL exhausted" in str(exc)


def demoted(settings: Any, exc: BaseException) -> bool:
    """True when ``exc`` says the node behind a ``redis+sentinel://`` URL is no longer the
    primary: its command was refused (nothing written) and a new connection will ask the
    Sentinels for the current primary, so the command may be sent once more."""
    if not getattr(settings, "sentinels", ()):
        return False
    if isinstance(exc, rx.ReadOnlyError):
        return True
    return isinstance(exc, rx.ConnectionError) and _DEMOTED_TEXT in str(exc)


def _auth(message: str) -> bool:
    return any(m in message for m in ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password"))


def _failover(exc: BaseException, message: str, where: str) -> EventBusError | None:
    """Errors of a primary that is gone or demoted (replicas, Sentinel failovers)."""
    if type(exc).__name__ == "MasterNotFoundError":  # redis.asyncio.sentinel's
        return ConnectionFailedError(
            f"{where}: no Sentinel named a usable primary for the service (none answered, the "
            "service name is unknown to them, or a failover is in progress). Check the Sentinel "
            "hosts and the service name in the URL; during a failover, try again."
        )
    if isinstance(exc, rx.ConnectionError) and _DEMOTED_TEXT in message:
        return ConnectionFailedError(
            f"{where}: the primary was demoted to a replica (failover); nothing was written by "
            "the refused command, and the next call reaches the new primary."
        )
    if isinstance(exc, rx.ReadOnlyError) or message.startswith("READONLY"):
        return ConnectionFailedError(
            f"{where}: the server is a read-only replica. Point the URL at the primary, or "
            "let Sentinel find it (redis+sentinel://host:26379,host:26380/service_name)."
        )
    if message.startswith("UNBLOCKED"):
        return ConnectionFailedError(
            f"{where}: the server stopped being the primary during a blocking read (failover "
            "or REPLICAOF); the next call reconnects."
        )
    return None


def translate(exc: BaseException, url: str, action: str) -> EventBusError | None:
    """The eventbus error for a redis-py exception, or None if it is not one."""
    if not isinstance(exc, rx.RedisError | rx.RedisClusterException):
        return None
    message = str(exc)
    where = f"{action} on {url}"
    if slot_in_migration(exc):
        return OperationTimeoutError(
            f"{where}: the Redis Cluster hash slot of the topic's keys is being migrated to "
            "another node (resharding), and the command was refused (not run) until "
            "socket_timeout passed. Try again when the migration has ended, or raise "
            "socket_timeout in the URL (?socket_timeout=30)."
        )
    if isinstance(exc, rx.RedisClusterException):
        return ConnectionFailedError(
            f"{where}: Redis Cluster client error ({message}). Check that every node is up "
            "and covers its slots, and that the URL names a cluster node with ?cluster=true."
        )
    if isinstance(
        exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError
    ) or _auth(message):
        return AuthenticationError(
            f"{where}: Redis refused the credentials or the ACL user lacks permission "
            f"({message.split(' ', 1)[0]}). Check the user and password in the URL and the "
            "user's ACL rules (streams, hashes, sets, scripts)."
        )
    if isinstance(exc, rx.TimeoutError):
        return OperationTimeoutError(
            f"{where}: Redis did not answer in time. Check the server load and network, or "
            "raise socket_timeout in the URL (?socket_timeout=30)."
        )
    failover = _failover(exc, message, where)
    if failover is not None:
        return failover
    if isinstance(exc, rx.ConnectionError | rx.ClusterDownError | rx.ClusterError):
        return ConnectionFailedError(
            f"{where}: cannot reach Redis ({type(exc).__name__}). Check that the server runs, "
            "the host and port, TLS (rediss://) and, for Redis Cluster, ?cluster=true."
        )
    if message.startswith("OOM"):
        return EventBusError(
            f"{where}: Redis is out of memory (maxmemory reached). Raise maxmemory, shorten "
            "topic retention, or delete data; nothing was written by the failing command."
        )
    if is_nogroup(exc):
        return GroupNotFoundError(f"{where}: the consumer group does not exist ({message})")
    if message.startswith("CROSSSLOT") or "slot" in message.lower():
        return EventBusError(f"{where}: keys span Redis Cluster hash slots ({message})")
    return EventBusError(f"{where}: Redis error: {message}")


@contextlib.contextmanager
def edge(url: str, action: str) -> Iterator[None]:
    """Run a block, re-raising redis-py exceptions as eventbus errors (without the chain's
    driver types leaking: the original stays as ``__cause__`` for debugging)."""
    try:
        yield
    except (rx.RedisError, rx.RedisClusterException) as exc:
        mapped = translate(exc, url, action)
        if mapped is None:  # pragma: no cover - translate maps every RedisError
            raise
        raise mapped from exc
