"""The lazy registry of transports, picked by URL scheme.

Importing eventbus imports no driver: an adapter module is imported only when a URL with its
scheme is opened. Each adapter class offers ``from_url(url, options) -> Transport``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventbus._urls import redact, split
from eventbus.errors import MissingExtraError, UnknownTransportError
from eventbus.transport import Transport

__all__ = ["TransportEntry", "known_schemes", "open_transport", "register"]


@dataclass(frozen=True)
class TransportEntry:
    target: str
    """``"module:Class"``; the class has ``from_url(url, options)``."""
    extra: str | None = None
    """The pip extra that installs the driver, named in the error when it is missing."""
    driver: str | None = None
    """The driver's top-level module, to tell a missing driver from a broken adapter."""


_REGISTRY: dict[str, TransportEntry] = {
    "memory": TransportEntry("eventbus.adapters.memory:MemoryTransport"),
    "redis": TransportEntry("eventbus.adapters.redis_streams:RedisTransport", "redis", "redis"),
    "rediss": TransportEntry("eventbus.adapters.redis_streams:RedisTransport", "redis", "redis"),
    "redis+sentinel": TransportEntry(
        "eventbus.adapters.redis_streams:RedisTransport", "redis", "redis"
    ),
    "kafka": TransportEntry("eventbus.adapters.kafka:KafkaTransport", "kafka", "confluent_kafka"),
    "migrate": TransportEntry("eventbus.migration.transport:MigrationTransport"),
    "redpanda": TransportEntry(
        "eventbus.adapters.kafka:KafkaTransport", "kafka", "confluent_kafka"
    ),
}


def register(scheme: str, entry: TransportEntry) -> None:
    """Register (or replace) the transport for a URL scheme, for third-party adapters."""
    _REGISTRY[scheme.lower()] = entry


def known_schemes() -> list[str]:
    return sorted(_REGISTRY)


def open_transport(url: str, options: Mapping[str, Any] | None = None) -> Transport:
    """Build the transport for ``url`` (not yet connected).

    Raises UnknownTransportError (listing known schemes, suggesting the closest),
    MissingExtraError (naming the pip extra), or ConfigurationError for a malformed URL."""
    scheme = split(url).scheme.lower()
    entry = _REGISTRY.get(scheme)
    if entry is None:
        close = difflib.get_close_matches(scheme, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]}://?" if close else ""
        raise UnknownTransportError(
            f"no transport for URL scheme {scheme!r} in {redact(url)!r}. Known schemes: "
            f"{', '.join(s + '://' for s in known_schemes())}.{hint}"
        )
    module_name, _, class_name = entry.target.partition(":")
    if entry.driver is not None:
        try:
            importlib.import_module(entry.driver)
        except ImportError:
            raise MissingExtraError(
                f"{scheme}:// needs the {entry.driver!r} driver, which is not installed: run "
                f"pip install 'eventbus[{entry.extra}]'"
            ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    transport: Transport = cls.from_url(url, dict(options or {}))
    return transport
