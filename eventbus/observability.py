"""Tracing and metrics through OpenTelemetry (optional: ``pip install 'eventbus[otel]'``).

Without the ``opentelemetry-api`` package everything here is a no-op costing one attribute
check. With it, eventbus uses the globally configured tracer and meter providers:

- A publish starts a PRODUCER span ``send <topic>`` and writes W3C trace context
  (``traceparent``, ``tracestate``) into every published event's headers, so the context
  travels through Redis, Kafka, dual-write and backfill alike.
- The runner handles each event in a CONSUMER span ``process <topic>`` whose parent is the
  context found in the event's headers: one trace runs from the publisher to the handler.
  Spans (and the trace context written into headers) start only once an SDK tracer provider
  is installed: before that they would record nothing, at a cost larger than a fast
  handler's or a single publish's.
- Span attributes follow the OpenTelemetry messaging conventions: ``messaging.system``,
  ``messaging.destination.name``, ``messaging.operation.name`` / ``.type``,
  ``messaging.message.id``, ``messaging.consumer.group.name``,
  ``messaging.destination.partition.id``, ``messaging.batch.message_count``.
- Counters (unit ``{event}``): ``eventbus.published``, ``eventbus.consumed``,
  ``eventbus.acked``, ``eventbus.nacked``, ``eventbus.redelivered``,
  ``eventbus.dead_lettered``; histogram ``eventbus.handler.duration`` (s); gauges
  ``eventbus.consumer.lag`` and ``eventbus.consumer.backlog`` (per group and partition, as of
  the last ``describe_group``: call it periodically to keep them fresh) and
  ``eventbus.migration.journal.backlog``. Labels: ``messaging.system`` (the transport),
  ``messaging.destination.name`` (topic) and ``messaging.consumer.group.name`` where known.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from eventbus.transport import GroupInfo, Outgoing, Record

__all__ = ["Instruments", "instruments"]

try:  # optional dependency
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import propagate, trace
    from opentelemetry.metrics import _internal as _metrics_internal
    from opentelemetry.propagators.textmap import Getter, Setter

    _OTEL = True
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _OTEL = False
    Getter = Setter = object  # type: ignore[assignment,misc]

# providers configured through the environment (read once: they are chosen at start-up)
_ENV_TRACER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_ENV_METER = "OTEL_PYTHON_METER_PROVIDER" in os.environ

SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
GROUP = "messaging.consumer.group.name"


class _HeaderSetter(Setter[MutableMapping[str, bytes]]):
    def set(self, carrier: MutableMapping[str, bytes], key: str, value: str) -> None:
        carrier[key] = value.encode()


class _HeaderGetter(Getter[Mapping[str, bytes]]):
    def get(self, carrier: Mapping[str, bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value.decode("latin-1")] if value is not None else None

    def keys(self, carrier: Mapping[str, bytes]) -> list[str]:
        return list(carrier)


_UNKNOWN = object()


def _tracing() -> bool:
    """True once the application installed a tracer provider (the API's default is a proxy
    whose spans record nothing until then). Reads the API's global, not
    ``get_tracer_provider()``, which looks up an environment variable on every call; if that
    global ever moves, spans stay on."""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    return provider is not None or _ENV_TRACER


def _metering() -> bool:
    """True once the application installed a meter provider (same reasoning as _tracing)."""
    provider = getattr(_metrics_internal, "_METER_PROVIDER", _UNKNOWN)
    return provider is not None or _ENV_METER


class Instruments:
    """The tracer and meters eventbus reports to. One per process (see :func:`instruments`)."""

    def __init__(self) -> None:
        self.enabled = _OTEL
        if not _OTEL:
            return
        self._tracer = trace.get_tracer("eventbus")
        meter = otel_metrics.get_meter("eventbus")
        unit = "{event}"
        self.published = meter.create_counter("eventbus.published", unit, "events published")
        self.consumed = meter.create_counter("eventbus.consumed", unit, "events delivered")
        self.acked = meter.create_counter("eventbus.acked", unit, "events acked")
        self.nacked = meter.create_counter("eventbus.nacked", unit, "events nacked")
        self.redelivered = meter.create_counter(
            "eventbus.redelivered", unit, "deliveries with attempt > 1"
        )
        self.dead_lettered = meter.create_counter(
            "eventbus.dead_lettered", unit, "events sent to a dead-letter topic"
        )
        self.handler_duration = meter.create_histogram(
            "eventbus.handler.duration", "s", "time a handler took"
        )
        self._lag: dict[tuple[str, str, str, int], int] = {}
        self._group_backlog: dict[tuple[str, str, str, int], int] = {}
        self._backlog: dict[str, int] = {}
        meter.create_observable_gauge(
            "eventbus.consumer.lag", [self._observe_lag], unit, "events not yet consumed"
        )
        meter.create_observable_gauge(
            "eventbus.consumer.backlog",
            [self._observe_group_backlog],
            unit,
            "events the group has not finished (not delivered, or delivered and not acked)",
        )
        meter.create_observable_gauge(
            "eventbus.migration.journal.backlog",
            [self._observe_backlog],
            unit,
            "secondary writes waiting in the dual-write journal",
        )

    # tracing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def publish_span(self, system: str, topic: str, records: Sequence[Outgoing]) -> Iterator[None]:
        """Span around a publish; injects its context into each record's headers. Without an
        SDK tracer provider installed only the counter is kept (the span would record nothing)."""
        if not self.enabled:
            yield
            return
        if not _tracing():
            yield
            self.published.add(len(records), {SYSTEM: system, DESTINATION: topic})
            return
        attributes: dict[str, Any] = {
            SYSTEM: system,
            DESTINATION: topic,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.batch.message_count": len(records),
        }
        if len(records) == 1:
            event_id = records[0].headers.get("eb-id")
            if event_id is not None:
                attributes["messaging.message.id"] = event_id.decode()
        # a record that already carries a trace (a copy: backfill, dual-write, replay --into)
        # continues it, so one trace follows the event across transports
        parent = None
        if len(records) == 1 and "traceparent" in records[0].headers:
            parent = propagate.extract(records[0].headers, getter=_HeaderGetter())
        with self._tracer.start_as_current_span(
            f"send {topic}", context=parent, kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, bytes] = {}
            propagate.inject(carrier, setter=_HeaderSetter())
            if carrier:  # one context for the whole publish: inject once, copy to each record
                for record in records:
                    if isinstance(record.headers, MutableMapping):
                        record.headers.update(carrier)
            yield
        self.published.add(len(records), {SYSTEM: system, DESTINATION: topic})

    def process_active(self) -> bool:
        """Whether :meth:`process_span` would record anything (a span or a duration)."""
        return self.enabled and (_tracing() or _metering())

    @contextlib.contextmanager
    def process_span(self, system: str, group: str, record: Record) -> Iterator[None]:
        """Consumer span around a handler call, continuing the publisher's trace.

        Without an SDK tracer provider installed, spans would record nothing: only the
        handler's duration is measured (a span per event costs more than a fast handler)."""
        if not self.enabled:
            yield
            return
        if not _tracing():
            started = time.perf_counter()
            try:
                yield
            finally:
                self.handler_duration.record(
                    time.perf_counter() - started,
                    {SYSTEM: system, DESTINATION: record.topic, GROUP: group},
                )
            return
        parent = propagate.extract(record.headers, getter=_HeaderGetter())
        attributes: dict[str, Any] = {
            SYSTEM: system,
            DESTINATION: record.topic,
            GROUP: group,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.partition.id": str(record.partition),
        }
        event_id = record.headers.get("eb-id")
        if event_id is not None:
            attributes["messaging.message.id"] = event_id.decode(errors="replace")
        token = otel_context.attach(parent)
        started = time.perf_counter()
        try:
            with self._tracer.start_as_current_span(
                f"process {record.topic}", kind=trace.SpanKind.CONSUMER, attributes=attributes
            ):
                yield
        finally:
            otel_context.detach(token)
            self.handler_duration.record(
                time.perf_counter() - started,
                {SYSTEM: system, DESTINATION: record.topic, GROUP: group},
            )

    # metrics ------------------------------------------------------------------------------
    def count(self, name: str, amount: int, system: str, topic: str, group: str | None) -> None:
        """Add ``amount`` to counter ``name`` (consumed, acked, nacked, ...)."""
        if not self.enabled or amount == 0:
            return
        labels = {SYSTEM: system, DESTINATION: topic}
        if group is not None:
            labels[GROUP] = group
        getattr(self, name).add(amount, labels)

    def observe_group(self, system: str, info: GroupInfo) -> None:
        """Remember per-partition lag and backlog for their gauges (reported at the next
        collection; a partition keeps its last known value until described again)."""
        if not self.enabled:
            return
        for part in info.partitions:
            key = (system, info.group, part.topic, part.partition)
            if part.lag is not None:
                self._lag[key] = part.lag
            if part.backlog is not None:
                self._group_backlog[key] = part.backlog

    def observe_backlog(self, topic: str, backlog: int) -> None:
        if self.enabled:
            self._backlog[topic] = backlog

    def _observe_lag(self, options: Any) -> list[Any]:
        return _partition_observations(self._lag)

    def _observe_group_backlog(self, options: Any) -> list[Any]:
        return _partition_observations(self._group_backlog)

    def _observe_backlog(self, options: Any) -> list[Any]:
        return [otel_metrics.Observation(n, {DESTINATION: t}) for t, n in self._backlog.items()]


def _partition_observations(values: Mapping[tuple[str, str, str, int], int]) -> list[Any]:
    return [
        otel_metrics.Observation(
            n, {SYSTEM: s, GROUP: g, DESTINATION: t, "messaging.destination.partition.id": p}
        )
        for (s, g, t, p), n in list(values.items())  # copy: describe_group may run meanwhile
    ]


_INSTRUMENTS: Instruments | None = None


def instruments() -> Instruments:
    """The process-wide instruments, created on first use (after providers are configured)."""
    global _INSTRUMENTS
    if _INSTRUMENTS is None:
        _INSTRUMENTS = Instruments()
    return _INSTRUMENTS
