"""Translate librdkafka errors into eventbus errors, at the adapter's edge.

Only this module and the client wrappers look at ``confluent_kafka`` error types; everything
above them sees :mod:`eventbus.errors`. Messages never contain credentials.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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

__all__ = ["CREDENTIAL_ERRORS", "CredentialWatch", "kafka_error", "translate"]

log = logging.getLogger("eventbus.kafka")
T = TypeVar("T")

_TOPIC_MISSING = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_ID,
}
CREDENTIAL_ERRORS = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
"""The broker refused the login: wrong user or password, or a SASL mechanism it does not
enable. librdkafka reports these only as error events (``error_cb``), see CredentialWatch."""
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
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
            set(CREDENTIAL_ERRORS),
            AuthenticationError,
            f"{what}: the Kafka cluster{at} refused the SASL login ({text}); check the user name "
            "and password (URL user info, or sasl.username/sasl.password) and that "
            "sasl_mechanism is one the broker enables (such as PLAIN or SCRAM-SHA-512)",
        ),
        (
            _DENIED,
            AuthenticationError,
            f"{what}: the Kafka cluster{at} denied this user access ({text}); the login worked "
            "but the user lacks an ACL for the operation: have it granted by the cluster admin",
        ),
        (
            {KafkaError._SSL},
            AuthenticationError,
            f"{what}: the TLS handshake with the Kafka cluster{at} failed ({text}); check "
            "security_protocol, ssl_ca_location and any client certificate settings",
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


_CHECK_EVERY = 0.1
"""Seconds between two looks for a refused login while a guarded operation waits."""


class CredentialWatch:
    """The ``error_cb`` of every client of one transport: notices refused logins.

    When the broker refuses the login, librdkafka does not fail the request that waits for a
    connection: it retries the login in the background and tells only ``error_cb``, which runs
    inside the client's ``poll()``. The request ends at its own timeout with a generic
    transport error. Waits in this adapter take a :meth:`mark`, keep the client polled, and
    raise the :class:`AuthenticationError` from :meth:`failure` as soon as a refusal arrives
    after the mark, instead of waiting out their timeout.

    ``error_cb`` runs on whichever thread polls the client, so the state sits under a lock.
    Every error event is logged (at debug level unless fatal: librdkafka logs the same broker
    failures itself, to ``eventbus.kafka.librdkafka``).
    """

    def __init__(self, where: str) -> None:
        self._where = where
        self._lock = threading.Lock()
        self._refusals = 0
        self._last: Any = None

    def __call__(self, err: Any) -> None:
        if err.code() in CREDENTIAL_ERRORS:
            with self._lock:
                self._refusals += 1
                self._last = err
        level = logging.ERROR if err.fatal() else logging.DEBUG
        log.log(level, "librdkafka error event at %s: %s", self._where, err.str())

    def mark(self) -> int:
        """A point to compare :meth:`failure` against: refusals seen so far."""
        with self._lock:
            return self._refusals

    def failure(self, mark: int, what: str) -> EventBusError | None:
        """The error for a refusal seen after ``mark`` (while doing ``what``), else None."""
        with self._lock:
            err = self._last if self._refusals > mark else None
        return None if err is None else translate(err, what, where=self._where)

    async def guard(
        self,
        operation: Awaitable[T],
        what: str,
        *,
        poll: Callable[[float], Any] | None = None,
    ) -> T:
        """Await ``operation``; raise AuthenticationError as soon as a refusal arrives instead.

        ``poll`` is the client's ``poll`` when nothing else serves its events (the admin
        client); the producer and consumers have their own polling. On a refusal the operation
        is cancelled (a produce may still be delivered: its outcome is unknown)."""
        if poll is not None:
            poll(0)  # deliver events queued before now, so they do not count as new
        mark = self.mark()
        task = asyncio.ensure_future(operation)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_CHECK_EVERY)
                if done:
                    return task.result()
                if poll is not None:
                    poll(0)
                failure = self.failure(mark, what)
                if failure is not None:
                    raise failure
        finally:
            if not task.done():
                task.cancel()
                task.add_done_callback(_settled)


def _settled(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of an operation abandoned by ``guard`` (nobody awaits it)."""
    if not task.cancelled():
        task.exception()
