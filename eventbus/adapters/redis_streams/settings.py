"""Connection settings for the Redis Streams transport, parsed from a URL plus options.

``RedisSettings.from_url`` is the only constructor callers need. The settings are frozen and
their ``repr`` never shows the password: the URL is kept redacted and the password sits in a
field excluded from ``repr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from eventbus._urls import query_options, redact, split
from eventbus.errors import ConfigurationError

__all__ = ["RedisSettings"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# Options that only shape the transport (not handed to redis-py).
_OWN = {
    "auto_create",
    "cluster",
    "socket_timeout",
    "socket_connect_timeout",
    "max_connections",
    "poll_interval",
    "metadata_ttl",
    "discover_streams",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "redis_options",
    "db",
}


RETRIES = 10
"""redis-py's default: connection errors and timeouts are retried with jittered backoff."""


class NoAuthRetry(Retry):
    """redis-py's retry policy, except that refused credentials are never retried.

    redis-py's ``AuthenticationError`` is a ``ConnectionError``, so its default ``Retry``
    re-tries a wrong password ten times with backoff (about 4.5 s) before raising it. A wrong
    password does not get better by waiting: fail at once."""

    async def call_with_retry(
        self,
        do: Any,
        fail: Any,
        is_retryable: Any = None,
        with_failure_count: bool = False,
    ) -> Any:
        def retryable(exc: Exception) -> bool:
            if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError):
                return False
            return is_retryable is None or bool(is_retryable(exc))

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def _retry() -> NoAuthRetry:
    return NoAuthRetry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), RETRIES)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"option {name}={value!r} is not a boolean: use true or false")


def _number(name: str, value: Any, *, minimum: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"option {name}={value!r} is not a number") from None
    if number < minimum:
        raise ConfigurationError(f"option {name}={value!r} must be at least {minimum}")
    return number


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """How to reach Redis and how the transport behaves. Built by :meth:`from_url`."""

    url: str
    """The URL with the password replaced by ``***`` (safe to print)."""
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True
    cluster: bool = False
    """Use ``redis.asyncio.cluster.RedisCluster`` (URL ``?cluster=true``)."""
    auto_create: bool = False
    """Publishing to an unknown topic creates it with one partition."""
    socket_timeout: float = 10.0
    socket_connect_timeout: float = 5.0
    max_connections: int | None = None
    poll_interval: float = 0.2
    """Longest single blocking read (s); also how often a waiting member heartbeats."""
    metadata_ttl: float = 5.0
    """How long topic metadata is cached by a publisher (s)."""
    discover_streams: bool = True
    """``list_topics`` also lists plain streams (written by other clients) as topics."""
    redis_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """Passed through to the redis-py client constructor unchanged."""

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> RedisSettings:
        """Parse ``redis[s]://[user:password@]host:port/db?opt=value`` plus ``options``.

        ``options`` win over query parameters. Unknown options go to redis-py as client
        keyword arguments (also accepted as a dict under ``options["redis_options"]``).
        Raises ConfigurationError (with the URL redacted) for anything malformed."""
        parts = split(url)
        safe = redact(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"{safe!r} is not a redis:// or rediss:// URL")
        if "," in parts.netloc.rpartition("@")[2]:
            raise ConfigurationError(
                f"{safe!r}: a Redis URL names one host (host:port), not a list; for Redis "
                "Cluster name one seed node and add ?cluster=true "
                "(redis://node1:7000/0?cluster=true), the other nodes are discovered"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError(
                f"{safe!r}: the port must be a number from 0 to 65535"
            ) from None
        opts: dict[str, Any] = {**query_options(parts), **dict(options or {})}
        passthrough = dict(opts.pop("redis_options", None) or {})
        passthrough.update({k: v for k, v in opts.items() if k not in _OWN})
        path = parts.path.strip("/") or str(opts.get("db", "0"))
        if not path.isdigit():
            raise ConfigurationError(
                f"{safe!r}: the path must be a database number such as /0, not /{path}"
            )
        settings = cls(
            url=safe,
            host=parts.hostname or "127.0.0.1",
            port=port or 6379,
            db=int(path),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=scheme == "rediss",
            ssl_ca_certs=opts.get("ssl_ca_certs"),
            ssl_certfile=opts.get("ssl_certfile"),
            ssl_keyfile=opts.get("ssl_keyfile"),
            ssl_cert_reqs=str(opts.get("ssl_cert_reqs", "required")),
            ssl_check_hostname=_flag("ssl_check_hostname", opts.get("ssl_check_hostname", True)),
            cluster=_flag("cluster", opts.get("cluster", False)),
            auto_create=_flag("auto_create", opts.get("auto_create", False)),
            socket_timeout=_number("socket_timeout", opts.get("socket_timeout", 10), minimum=0.1),
            socket_connect_timeout=_number(
                "socket_connect_timeout", opts.get("socket_connect_timeout", 5), minimum=0.1
            ),
            max_connections=(
                int(_number("max_connections", opts["max_connections"], minimum=1))
                if opts.get("max_connections") not in (None, "")
                else None
            ),
            poll_interval=_number("poll_interval", opts.get("poll_interval", 0.2), minimum=0.01),
            metadata_ttl=_number("metadata_ttl", opts.get("metadata_ttl", 5), minimum=0),
            discover_streams=_flag("discover_streams", opts.get("discover_streams", True)),
            redis_options=passthrough,
        )
        if settings.cluster and settings.db != 0:
            raise ConfigurationError(f"{safe!r}: Redis Cluster has only database 0")
        return settings

    @property
    def block_ms(self) -> int:
        """Longest BLOCK for XREADGROUP: below the socket timeout (redis-py issue 2807)."""
        return max(1, int(min(self.poll_interval, self.socket_timeout / 2) * 1000))

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis`` / ``RedisCluster``."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "decode_responses": False,
            # retry connection errors and timeouts as redis-py does, but not refused
            # credentials (redis_options may replace it)
            "retry": _retry(),
        }
        if not self.cluster:
            kwargs["db"] = self.db
        if self.max_connections is not None:
            kwargs["max_connections"] = self.max_connections
        if self.tls:
            kwargs.update(
                ssl=True,
                ssl_ca_certs=self.ssl_ca_certs,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        kwargs.update(self.redis_options)
        return kwargs
