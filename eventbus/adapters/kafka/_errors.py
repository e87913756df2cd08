"""Translate librdkafka errors into eventbus errors, at the adapter's edge.

Only this module and the client wrappers look at ``confluent_kafka`` error types; everything
above them sees :mod:`eventbus.errors`. Messages never contain credentials.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from eventbus.errors import (
    AuthenticationError,
    ConnectionFailedError,
    EventBusError,
    EventTooLargeError,
    GroupActiveError,
    GroupNotFoundError,
    OperationTimeoutError,
    TopicExistsError,
    TopicNotFoundError,
)

__all__ = ["kafka_error", "translate"]

_TOPIC_MISSING = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_ID,
}
_AUTH = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError._SSL,
}
_TIMEOUT = {KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._MSG_TIMED_OUT}
_DOWN = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError._DESTROY,
}
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}
_GROUP_ACTIVE = {
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.NON_EMPTY_GROUP,
    KafkaError.GROUP_SUBSCRIBED_TO_TOPIC,
}


def kafka_error(exc: BaseException) -> Any:
    """The ``KafkaError`` inside a ``KafkaException`` (or the error itself), else ``None``."""
    if isinstance(exc, KafkaException) and exc.args:
        inner = exc.args[0]
        return inner if isinstance(inner, KafkaError) else None
    return exc if isinstance(exc, KafkaError) else None


def translate(err: Any, what: str, *, where: str = "") -> EventBusError:
    """An eventbus error for a ``KafkaError``/``KafkaException`` raised while doing ``what``.

    ``where`` names the cluster (already redacted) for connection messages."""
    inner = kafka_error(err) if isinstance(err, BaseException) else err
    if inner is None:
        return ConnectionFailedError(f"{what} failed: {err}")
    code = inner.code()
    text = inner.str()
    at = f" at {where}" if where else ""
    table: list[tuple[set[int], type[EventBusError], str]] = [
        (
            _TOPIC_MISSING,
            TopicNotFoundError,
            f"{what}: topic does not exist ({text}); create it first (eventbus topics create)",
        ),
        ({KafkaError.TOPIC_ALREADY_EXISTS}, TopicExistsError, f"{what}: topic already exists"),
        (
            _AUTH,
            AuthenticationError,
            f"{what}: the cluster{at} refused the credentials or TLS setup ({text}); check the "
            "user, password, sasl_mechanism, security_protocol and CA file",
        ),
        (
            _TOO_LARGE,
            EventTooLargeError,
            f"{what}: the broker rejected the event as too large ({text}); raise the topic's "
            "max_event_bytes (Kafka config max.message.bytes)",
        ),
        (_TIMEOUT, OperationTimeoutError, f"{what} timed out{at} ({text})"),
        (
            _GROUP_ACTIVE,
            GroupActiveError,
            f"{what}: the group has live members ({text}); stop its consumers first",
        ),
        ({KafkaError.GROUP_ID_NOT_FOUND}, GroupNotFoundError, f"{what}: {text}"),
        (
            _DOWN,
            ConnectionFailedError,
            f"{what}: cannot reach the cluster{at} ({text}); check the host, port and network",
        ),
    ]
    for codes, kind, message in table:
        if code in codes:
            return kind(message)
    return ConnectionFailedError(f"{what} failed{at}: {text}")
