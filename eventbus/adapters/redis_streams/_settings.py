"""Connection settings for the Redis Streams transport, parsed from a URL plus options.

``RedisSettings.from_url`` is the only constructor callers need. The settings are frozen and
their ``repr`` never shows the password: the URL is kept redacted and the password sits in a
field excluded from ``repr``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote

from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from eventbus._urls import flag, query_options, redact, split
from eventbus.errors import ConfigurationError

__all__ = ["RedisSettings"]


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
    "wait_replicas",
    "wait_timeout_ms",
    "sentinel_username",
    "sentinel_password",
}
# Options only a redis+sentinel:// URL takes.
_SENTINEL_ONLY = {"sentinel_username", "sentinel_password"}

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


_CERT_REQS = ("none", "optional", "required")
_DB = re.compile(r"^[0-9]{1,9}$")


def _text(name: str, value: Any) -> str:
    return str(value)


def _protocol(name: str, value: Any) -> int:
    if str(value).strip() not in ("2", "3"):
        raise ConfigurationError(f"option {name}={value!r}: use 2 (RESP2) or 3 (RESP3)")
    return int(str(value).strip())


def _seconds(name: str, value: Any) -> float:
    return _number(name, value, minimum=0)


# redis-py client arguments a URL may set (its values are text, converted here); any other
# redis-py argument is given from code, typed: options={"redis_options": {...}}
_URL_PASSTHROUGH: dict[str, Callable[[str, Any], Any]] = {
    "health_check_interval": _seconds,
    "client_name": _text,
    "socket_keepalive": flag,
    "retry_on_timeout": flag,
    "single_connection_client": flag,
    "protocol": _protocol,
    "ssl_ca_path": _text,
    "ssl_ciphers": _text,
    "ssl_password": _text,
}
URL_OPTIONS = frozenset((_OWN - {"redis_options"}) | set(_URL_PASSTHROUGH))
"""Every option a ``redis://`` / ``rediss://`` / ``redis+sentinel://`` URL's query may carry
(``sentinel_*`` only the last)."""


@functools.cache
def _client_arguments(cluster: bool) -> frozenset[str] | None:
    """Keyword arguments of the redis-py client class (None: it takes any)."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    init = RedisCluster.__init__ if cluster else Redis.__init__
    params = inspect.signature(init).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.name != "self")


def _unknown_options(safe: str, names: list[str], valid: frozenset[str], where: str) -> str:
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        if close:
            hints.append(f"{name!r} -> did you mean {close[0]}?")
    return (
        f"{safe!r}: unknown {where} {', '.join(repr(n) for n in names)}"
        f"{' (' + '; '.join(hints) + ')' if hints else ''}. Valid options: "
        f"{', '.join(sorted(valid))}"
    )


RETRIES = 10
"""redis-py's default: connection errors and timeouts are retried with jittered backoff."""


class NoAuthRetry(Retry):
    """redis-py's retry policy, except that refused credentials are never retried.

    redis-py's ``AuthenticationError`` is a ``ConnectionError``, so its default ``Retry``
    re-tries a wrong password ten times with backoff (about 4.5 s) before raising it. A wrong
    password does not get better by waiting: fail at once."""

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        # refused credentials leave the retry loop wrapped in an exception it does not catch
        # (the loop's signature differs between redis-py versions: pass the rest through)
        async def attempt() -> Any:
            try:
                return await do()
            except (rx.AuthenticationError, rx.AuthorizationError) as exc:
                raise _Refused(exc) from exc

        try:
            return await super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


class _Refused(Exception):
    """Carries a credentials error through redis-py's retry loop, which does not retry it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _retry() -> NoAuthRetry:
    return NoAuthRetry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), RETRIES)


def _number(name: str, value: Any, *, minimum: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"option {name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigurationError(f"option {name}={value!r} must be a finite number")
    if number < minimum:
        raise ConfigurationError(f"option {name}={value!r} must be at least {minimum}")
    return number


def _checked_options(
    safe: str, query: dict[str, Any], options: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """The merged options (``options`` win), the redis-py pass-through arguments, and
    whether it is a cluster; ConfigurationError for any option that is not known."""
    unknown = sorted(set(query) - URL_OPTIONS)
    if unknown:
        raise ConfigurationError(
            _unknown_options(safe, unknown, URL_OPTIONS, "URL option(s)")
            + " (other redis-py client arguments: options={'redis_options': {...}} in code)"
        )
    for key, convert in _URL_PASSTHROUGH.items():
        if key in query:
            query[key] = convert(key, query[key])
    opts: dict[str, Any] = {**query, **dict(options or {})}
    extra = opts.pop("redis_options", None) or {}
    if not isinstance(extra, Mapping):
        raise ConfigurationError("options['redis_options'] must be a mapping of redis-py arguments")
    passthrough = dict(extra)
    passthrough.update({k: v for k, v in opts.items() if k not in _OWN})
    cluster = flag("cluster", opts.get("cluster", False))
    accepted = _client_arguments(cluster)
    if accepted is not None:
        bad = sorted(str(k) for k in passthrough if k not in accepted)
        if bad:
            raise ConfigurationError(
                _unknown_options(safe, bad, URL_OPTIONS | accepted, "option(s)")
            )
    return opts, passthrough, cluster


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
    sentinels: tuple[tuple[str, int], ...] = ()
    """``redis+sentinel://`` URLs: the Sentinel nodes asked for the current primary."""
    service_name: str | None = None
    """``redis+sentinel://`` URLs: the name the Sentinels monitor the primary under."""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    """Credentials of the Sentinel nodes themselves (the URL's are the data nodes')."""
    wait_replicas: int = 0
    """After each publish round trip, ``WAIT wait_replicas wait_timeout_ms``; fewer
    acknowledging replicas raise OperationTimeoutError (0: no WAIT)."""
    wait_timeout_ms: int = 0

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> RedisSettings:
        """Parse ``redis[s]://[user:password@]host:port/db?opt=value`` (or
        ``redis+sentinel://[user:password@]host:port,host:port/service[/db]?opt=value``) plus
        ``options``.

        ``options`` win over query parameters. The query accepts :data:`URL_OPTIONS` only.
        ``options`` (given in code) may also name any keyword argument of the redis-py client
        class, passed through as given (also accepted as a dict under
        ``options["redis_options"]``). Raises ConfigurationError (with the URL redacted) for
        anything malformed, and for an unknown option, naming the valid ones."""
        if split(url).scheme.lower() == SENTINEL_SCHEME:
            return cls._from_sentinel_url(url, options)
        parts, safe, port = _checked_url(url)
        opts, passthrough, cluster = _checked_options(safe, query_options(parts), options)
        _no_sentinel_options(safe, opts)
        cert_reqs = _cert_reqs(opts)
        db = _checked_db(safe, parts.path, opts)
        settings = cls(
            url=safe,
            host=parts.hostname or "127.0.0.1",
            port=port or 6379,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme.lower() == "rediss",
            **_tls_options(opts, cert_reqs),
            cluster=cluster,
            **_tuning(opts),
            **_durability(safe, opts),
            redis_options=passthrough,
        )
        if settings.cluster and settings.db != 0:
            raise ConfigurationError(f"{safe!r}: Redis Cluster has only database 0")
        if settings.cluster and settings.wait_replicas:
            raise ConfigurationError(
                f"{safe!r}: wait_replicas is not supported with cluster=true (WAIT counts the "
                "replicas of one shard; publish spreads over shards)"
            )
        return settings

    @classmethod
    def _from_sentinel_url(cls, url: str, options: Mapping[str, Any] | None) -> RedisSettings:
        """``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]``:
        the primary of ``service`` as the Sentinels name it, followed through failovers."""
        parts = split(url)
        safe = redact(url)
        sentinels = _sentinel_hosts(safe, parts.netloc.rpartition("@")[2])
        service, db_text = _service_and_db(safe, parts.path)
        opts, passthrough, cluster = _checked_options(safe, query_options(parts), options)
        if cluster:
            raise ConfigurationError(
                f"{safe!r}: a redis+sentinel:// URL names a primary with replicas, not a Redis "
                "Cluster; drop ?cluster=true (or use redis://node:port/0?cluster=true)"
            )
        db = _checked_db(safe, db_text, opts)
        return cls(
            url=safe,
            host=sentinels[0][0],
            port=sentinels[0][1],
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            **_tls_options(opts, _cert_reqs(opts)),
            **_tuning(opts),
            **_durability(safe, opts),
            redis_options=passthrough,
            sentinels=sentinels,
            service_name=service,
            sentinel_username=_opt_text(opts.get("sentinel_username")),
            sentinel_password=_opt_text(opts.get("sentinel_password")),
        )

    @property
    def block_ms(self) -> int:
        """Longest BLOCK for XREADGROUP: below the socket timeout (redis-py issue 2807)."""
        return max(1, int(min(self.poll_interval, self.socket_timeout / 2) * 1000))

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the clients that talk to the Sentinel nodes (not retried:
        redis-py asks the next Sentinel instead)."""
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
        }
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis`` / ``RedisCluster`` (with a
        Sentinel URL: for ``Sentinel.master_for``, whose pool finds host and port)."""
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
        if self.sentinels:
            kwargs.pop("host", None)
            kwargs.pop("port", None)
        return kwargs


def _checked_url(url: str) -> tuple[SplitResult, str, int | None]:
    """The URL's parts, its redacted form and its port; raises ConfigurationError for a
    scheme other than redis/rediss, a list of hosts or a port that is not a number."""
    parts = split(url)
    safe = redact(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError(f"{safe!r} is not a redis://, rediss:// or redis+sentinel:// URL")
    if "," in parts.netloc.rpartition("@")[2]:
        raise ConfigurationError(
            f"{safe!r}: a Redis URL names one host (host:port), not a list; for Redis "
            "Cluster name one seed node and add ?cluster=true "
            "(redis://node1:7000/0?cluster=true), the other nodes are discovered"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{safe!r}: the port must be a number from 0 to 65535") from None
    return parts, safe, port


def _cert_reqs(opts: Mapping[str, Any]) -> str:
    cert_reqs = str(opts.get("ssl_cert_reqs", "required")).strip().lower()
    if cert_reqs not in _CERT_REQS:
        raise ConfigurationError(
            f"option ssl_cert_reqs={opts['ssl_cert_reqs']!r}: use none, optional or required"
        )
    return cert_reqs


def _tls_options(opts: Mapping[str, Any], cert_reqs: str) -> dict[str, Any]:
    """The ``ssl_*`` settings from the checked options."""
    return {
        "ssl_ca_certs": opts.get("ssl_ca_certs"),
        "ssl_certfile": opts.get("ssl_certfile"),
        "ssl_keyfile": opts.get("ssl_keyfile"),
        "ssl_cert_reqs": cert_reqs,
        "ssl_check_hostname": flag("ssl_check_hostname", opts.get("ssl_check_hostname", True)),
    }


def _checked_db(safe: str, url_path: str, opts: Mapping[str, Any]) -> int:
    """The database number: the URL's path, else the ``db`` option, else 0."""
    path = url_path.strip("/") or str(opts.get("db", "0"))
    if not _DB.match(path):
        raise ConfigurationError(
            f"{safe!r}: the path must be a database number such as /0, not /{path}"
        )
    return int(path)


def _tuning(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The transport's behaviour and timeouts from the checked options."""
    return {
        "auto_create": flag("auto_create", opts.get("auto_create", False)),
        "socket_timeout": _number("socket_timeout", opts.get("socket_timeout", 10), minimum=0.1),
        "socket_connect_timeout": _number(
            "socket_connect_timeout", opts.get("socket_connect_timeout", 5), minimum=0.1
        ),
        "max_connections": (
            int(_number("max_connections", opts["max_connections"], minimum=1))
            if opts.get("max_connections") not in (None, "")
            else None
        ),
        "poll_interval": _number("poll_interval", opts.get("poll_interval", 0.2), minimum=0.01),
        "metadata_ttl": _number("metadata_ttl", opts.get("metadata_ttl", 5), minimum=0),
        "discover_streams": flag("discover_streams", opts.get("discover_streams", True)),
    }


def _opt_text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _no_sentinel_options(safe: str, opts: Mapping[str, Any]) -> None:
    named = sorted(k for k in _SENTINEL_ONLY if k in opts)
    if named:
        raise ConfigurationError(
            f"{safe!r}: option(s) {', '.join(named)} are for redis+sentinel:// URLs only "
            "(redis+sentinel://host1:26379,host2:26379/service_name)"
        )


def _sentinel_hosts(safe: str, hosts: str) -> tuple[tuple[str, int], ...]:
    """``host[:port],host[:port]...`` (IPv6 in brackets), each port 1..65535 (default 26379)."""
    found: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
            bad_rest = bool(rest) and not rest.startswith(":")
        else:
            host, colon, port_text = item.partition(":")
            bad_rest = ":" in port_text
            if not colon:
                port_text = ""
        if not host or bad_rest:
            raise ConfigurationError(
                f"{safe!r}: each Sentinel must be host or host:port, comma-separated "
                "(redis+sentinel://host1:26379,host2:26379/service_name); got an empty or "
                "malformed entry"
            )
        if port_text == "":
            port = DEFAULT_SENTINEL_PORT
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ConfigurationError(
                f"{safe!r}: the Sentinel port of {host!r} must be a number from 1 to 65535"
            )
        found.append((host, port))
    return tuple(found)


def _service_and_db(safe: str, path: str) -> tuple[str, str]:
    """The service name and the db (text, may be empty) from ``/service[/db]``."""
    pieces = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if not pieces:
        raise ConfigurationError(
            f"{safe!r}: name the service the Sentinels monitor after the hosts "
            "(redis+sentinel://host1:26379,host2:26379/mymaster[/db])"
        )
    if len(pieces) > 2 or not _SERVICE.match(pieces[0]):
        raise ConfigurationError(
            f"{safe!r}: the path must be /service_name or /service_name/db (a service name "
            "of letters, digits, '.', '_' and '-')"
        )
    return pieces[0], pieces[1] if len(pieces) == 2 else ""


def _durability(safe: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """``wait_replicas`` and ``wait_timeout_ms`` (default 100 when replicas are asked for)."""
    replicas = _number("wait_replicas", opts.get("wait_replicas", 0), minimum=0)
    if replicas != int(replicas):
        raise ConfigurationError(f"option wait_replicas={replicas!r} must be a whole number")
    timeout = _number("wait_timeout_ms", opts.get("wait_timeout_ms", 100), minimum=0)
    if timeout != int(timeout):
        raise ConfigurationError(f"option wait_timeout_ms={timeout!r} must be a whole number")
    if not replicas:
        return {"wait_replicas": 0, "wait_timeout_ms": 0}
    if timeout < 1:
        raise ConfigurationError(
            f"{safe!r}: wait_timeout_ms must be at least 1 (WAIT with 0 blocks until the "
            "replicas answer, which may be never)"
        )
    socket_timeout = _number("socket_timeout", opts.get("socket_timeout", 10), minimum=0.1)
    if timeout / 1000 >= socket_timeout:
        raise ConfigurationError(
            f"{safe!r}: wait_timeout_ms={int(timeout)} must be shorter than socket_timeout "
            f"({socket_timeout} s), or every unanswered WAIT becomes a socket timeout"
        )
    return {"wait_replicas": int(replicas), "wait_timeout_ms": int(timeout)}
