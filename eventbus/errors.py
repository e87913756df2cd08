"""The one error hierarchy of eventbus.

Adapters translate their driver's exceptions into these at their edge, so user code never
catches ``redis.*`` or ``confluent_kafka.*`` types. Every message says what happened and what
to do next, and never contains credentials (URLs are redacted before they are formatted in).

::

    EventBusError
    ├── ConfigurationError            bad settings or URL; fix the configuration
    │   ├── UnknownTransportError     the URL scheme names no registered transport
    │   └── MissingExtraError         the transport's driver is not installed
    ├── ConnectionFailedError         the server could not be reached (or dropped us)
    │   └── AuthenticationError       the server refused the credentials
    ├── OperationTimeoutError         an operation did not finish within its timeout
    ├── TopicNotFoundError            the topic does not exist (and auto-create is off)
    ├── TopicExistsError              create of a topic that exists with another shape
    ├── GroupNotFoundError            the consumer group does not exist
    ├── GroupActiveError              the group has live members; stop them first
    ├── EventTooLargeError            the encoded event exceeds the topic's max event bytes
    ├── SerializationError            data could not be encoded, or bytes not decoded
    ├── UnsupportedError              the transport lacks the capability (names the flag)
    ├── InvalidPositionError          a position that does not exist or does not parse
    ├── ClosedError                   the bus, consumer or transport was already closed
    └── FencedError                   a fenced writer was stopped by a newer one of its job
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClosedError",
    "ConfigurationError",
    "ConnectionFailedError",
    "EventBusError",
    "EventTooLargeError",
    "FencedError",
    "GroupActiveError",
    "GroupNotFoundError",
    "InvalidPositionError",
    "MissingExtraError",
    "OperationTimeoutError",
    "SerializationError",
    "TopicExistsError",
    "TopicNotFoundError",
    "UnknownTransportError",
    "UnsupportedError",
]


class EventBusError(Exception):
    """Base class of every error eventbus raises on purpose."""


class ConfigurationError(EventBusError):
    """Settings, URL or arguments are invalid. Fix the configuration and try again."""


class UnknownTransportError(ConfigurationError):
    """The URL scheme names no registered transport."""


class MissingExtraError(ConfigurationError):
    """The transport's driver is not installed; the message names the extra to install."""


class ConnectionFailedError(EventBusError):
    """The server could not be reached, or the connection broke during an operation."""


class AuthenticationError(ConnectionFailedError):
    """The server refused the credentials (the credentials are never part of the message)."""


class OperationTimeoutError(EventBusError, TimeoutError):
    """An operation did not complete within its timeout; its outcome may be unknown."""


class TopicNotFoundError(EventBusError):
    """The topic does not exist. Create it (``create_topic`` / ``eventbus topics create``)."""


class TopicExistsError(EventBusError):
    """A topic of that name already exists."""


class GroupNotFoundError(EventBusError):
    """The consumer group does not exist on this topic."""


class GroupActiveError(EventBusError):
    """The consumer group has live members, so its positions cannot be changed now."""


class EventTooLargeError(EventBusError):
    """The encoded event is larger than the topic accepts; nothing was written."""


class SerializationError(EventBusError):
    """Data could not be encoded to bytes, or bytes could not be decoded into an event."""


class UnsupportedError(EventBusError):
    """The transport cannot do this; the message names the capability flag."""


class InvalidPositionError(EventBusError, ValueError):
    """A position does not parse, or does not exist in the partition."""


class ClosedError(EventBusError):
    """The object was closed; create a new one."""


class FencedError(EventBusError):
    """Another writer of the same job started (another backfill of the topic, or another
    replayer of the journal partition): this one was fenced and stopped. Nothing of its
    unfinished batch is visible on the target. (See ``eventbus.transport.FencedWrites``.)"""
