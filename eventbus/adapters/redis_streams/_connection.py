"""The Redis connection every other part of the adapter talks through: the lazily created
client (standalone or Cluster), the registered Lua scripts (``_scripts.py``) and their SHAs,
the error edge, pipelines, deadlines and hash-slot checks. A leaf: it knows nothing of topics,
groups or consumers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.crc import key_slot
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus.adapters.redis_streams import _scripts as scripts
from eventbus.adapters.redis_streams._cluster import MigrationTolerantCluster
from eventbus.adapters.redis_streams._errors import edge
from eventbus.adapters.redis_streams._settings import RedisSettings
from eventbus.errors import ClosedError, ConfigurationError, OperationTimeoutError

__all__ = ["Client", "RedisConnection"]

T = TypeVar("T")

# The client is ``redis.asyncio.Redis`` or ``RedisCluster``; they share the command API but
# their typed overloads differ, so it is held as Any behind this alias.
Client = Any


class FollowPrimary(SentinelManagedConnection):
    """A connection of ``Sentinel.master_for`` that asks the Sentinels for the primary's
    address on *every* (re)connect.

    redis-py's own asks only in ``connect()``; a command that its retry policy sends again
    after a connection error reconnects through ``connect_check_health`` to the address it
    had (redis-py issues 3874, 3560): after a failover it retried the dead primary until the
    retries ran out, and once the old primary was restarted (as a primary, until the
    Sentinels demote it) it wrote to it, data that the demotion then discards. Found by
    tests/reliability/test_redis_failover.py. A failed connect is not retried on the same
    address either: the command's retry comes back here and asks again."""

    async def connect(self) -> None:
        await self.retry.call_with_retry(
            lambda: self.connect_check_health(check_health=self.connection_pool.check_connection),
            lambda error: asyncio.sleep(0),
        )

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        extra = {"retry_socket_connect": False} if _RETRY_ARG else {}
        await super().connect_check_health(check_health=check_health, **extra)


_HEALTH = getattr(SentinelManagedConnection, "connect_check_health", None)
_RETRY_ARG = _HEALTH is not None and "retry_socket_connect" in inspect.signature(_HEALTH).parameters
_SENTINEL_CONNECTION = FollowPrimary if _HEALTH is not None else SentinelManagedConnection
"""redis-py before 6.0 has no ``connect_check_health``: its every connect asks the Sentinels."""


class RedisConnection:
    """One client per transport, created on first use, and the scripts registered on it."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._client: Client = None
        self._sentinel: Sentinel | None = None
        self._closed = False
        self._scripts: dict[str, Any] = {}
        self._shas: dict[str, bytes] = {}

    @property
    def client(self) -> Client:
        if self._closed:
            raise ClosedError("this Redis transport is closed; open a new bus")
        if self._client is None:
            kwargs = self.settings.client_kwargs()
            if self.settings.sentinels:
                self._client = self._primary_of_service(kwargs)
            else:
                cluster = self.settings.cluster  # a client that rides out slot migrations
                self._client = MigrationTolerantCluster(**kwargs) if cluster else Redis(**kwargs)
        return self._client

    def _primary_of_service(self, kwargs: dict[str, Any]) -> Client:
        """A client of the service's current primary (``redis+sentinel://``): its pool asks
        the Sentinels for the primary's address on every new connection, and drops its
        connections when a READONLY reply or an UNBLOCKED blocking read shows that the node
        it talks to was demoted; so after a failover the next attempt reaches the new
        primary (the retry policy of ``client_kwargs`` covers the switch)."""
        settings = self.settings
        assert settings.service_name is not None
        self._sentinel = Sentinel(
            list(settings.sentinels), sentinel_kwargs=settings.sentinel_kwargs()
        )
        return self._sentinel.master_for(
            settings.service_name,
            redis_class=Redis,
            connection_class=_SENTINEL_CONNECTION,
            **kwargs,
        )

    def script(self, name: str) -> Any:
        """A registered Lua script of ``_scripts.py`` (EVALSHA, falling back to EVAL on
        NOSCRIPT)."""
        found = self._scripts.get(name)
        if found is None:
            found = self._scripts[name] = self.client.register_script(getattr(scripts, name))
        return found

    async def sha(self, name: str) -> bytes:
        """The SHA of a script of ``_scripts.py``, loaded once (for hand-packed EVALSHA)."""
        found = self._shas.get(name)
        if found is None:
            with self.edge("load a script"):
                loaded = await self.client.script_load(getattr(scripts, name))
            found = self._shas[name] = loaded.encode() if isinstance(loaded, str) else loaded
        return found

    def forget_sha(self, name: str) -> None:
        """The server lost its script cache (restart, SCRIPT FLUSH, failover): load again."""
        self._shas.pop(name, None)

    def edge(self, action: str) -> Any:
        return edge(self.settings.url, action)

    async def connect(self) -> None:
        """PING the server (checks reachability and credentials).

        With ``rediss://`` a first attempt that has not finished after
        ``socket_connect_timeout`` (or has timed out) checks whether the port speaks plain
        Redis: then it raises ConfigurationError at once (a TLS handshake to a plain port
        never completes, and the retries would take about a minute to fail)."""
        settings = self.settings
        with self.edge("connect"):
            if not settings.tls or settings.sentinels:
                await self.client.ping()
                return
            first = asyncio.ensure_future(self.client.ping())
            try:
                await asyncio.wait({first}, timeout=settings.socket_connect_timeout + 0.5)
                # still trying (redis-py 8 retries the handshake) or timed out (5.3 does not)
                if _stuck(first) and await _answers_plain_text(settings.host, settings.port):
                    first.cancel()
                    with contextlib.suppress(BaseException):
                        await first
                    raise ConfigurationError(
                        f"{settings.url} uses TLS (rediss://), but the server at that port "
                        "answers in plain text: it serves no TLS there. Use redis:// for this "
                        "port, or the server's TLS port (its tls-port setting)."
                    )
                await first
            finally:
                first.cancel()  # only if this call was cancelled while the PING went on

    async def close(self) -> None:
        if self._closed:
            return
        client, self._client = self._client, None
        sentinel, self._sentinel = self._sentinel, None
        self._closed = True
        try:
            if client is not None:
                with self.edge("close"):
                    await client.aclose()
        finally:
            if sentinel is not None:
                with self.edge("close the Sentinel connections"):
                    await _close_sentinel(sentinel)

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("this Redis transport is closed; open a new bus")

    async def pipeline(self, build: Callable[[Any], object], action: str) -> list[Any]:
        """Run commands added by ``build`` in one round trip (no MULTI: Cluster-safe)."""
        with self.edge(action):
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            result: list[Any] = await pipe.execute()
            return result

    async def with_timeout(self, work: Awaitable[T], timeout: float, action: str) -> T:
        try:
            async with asyncio.timeout(timeout):  # no extra task per call, unlike wait_for
                return await work
        except TimeoutError as exc:
            if isinstance(exc, OperationTimeoutError):
                raise
            raise OperationTimeoutError(
                f"{action} on {self.settings.url} did not finish within {timeout} s; some "
                "records may have been written. Check the server, or raise the timeout."
            ) from None

    def same_slot(self, *keys: str) -> bool:
        """True when the keys may be used together in one script or MULTI."""
        if not self.settings.cluster:
            return True
        return len({key_slot(k.encode()) for k in keys}) == 1


async def _close_sentinel(sentinel: Sentinel) -> None:
    """``Sentinel.aclose`` where redis-py has it (6.0+); before, close each Sentinel's client."""
    close = getattr(sentinel, "aclose", None)
    if close is not None:
        await close()
        return
    for client in sentinel.sentinels:
        await client.aclose()


def _stuck(attempt: asyncio.Future[Any]) -> bool:
    """The connect attempt has not finished, or it ended in a timeout."""
    if not attempt.done():
        return True
    if attempt.cancelled():
        return False
    return isinstance(attempt.exception(), RedisTimeoutError | TimeoutError)


async def _answers_plain_text(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when ``host:port`` answers a plain-text PING with a RESP status or error."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                reply = await reader.read(64)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return reply[:1] in (b"+", b"-")
