"""The event envelope and the codec that turns it into bytes and headers and back.

On the wire an event is a record: the codec's bytes of ``data`` as the value, the key as UTF-8
bytes, and the envelope in reserved ``eb-`` headers next to the user's own headers. The same
layout is used on every transport, so a record copied from Redis to Kafka stays the same event.
Records without ``eb-id`` (written by other clients) decode as raw events, never as errors.
"""

from __future__ import annotations

import os
import time as _time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventbus.errors import ConfigurationError, SerializationError
from eventbus.transport import Outgoing, Record

__all__ = [
    "RESERVED_PREFIX",
    "Codec",
    "Event",
    "JsonCodec",
    "decode_record",
    "encode_event",
    "new_event_id",
]

RESERVED_PREFIX = "eb-"
H_ID = "eb-id"
H_TYPE = "eb-type"
H_SOURCE = "eb-source"
H_TIME = "eb-time"
H_SCHEMA = "eb-schema"
H_CONTENT_TYPE = "eb-content-type"


class _Ids:
    """UUIDv7 with a monotonic random tail (RFC 9562, 6.2 method 2).

    Each process starts its 74-bit tail at a random point and steps it by one per id; the
    millisecond prefix is formatted once per millisecond. Ids of one process are unique and
    ordered; two processes collide only if their random tails overlap in the same millisecond
    (odds around n^2 / 2^74). A forked child draws a new tail, so it never repeats its parent.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.tail = int.from_bytes(os.urandom(10), "big") >> 6
        self.ms = -1
        self.high = -1
        self.head = ""

    def next(self) -> str:
        ms = _time.time_ns() // 1_000_000
        tail = self.tail = (self.tail + 1) & _TAIL
        high = tail >> 48
        if ms != self.ms or high != self.high:
            # the id's text up to its last group changes once per millisecond or every 2^48
            # ids; formatting only the last 12 digits per id halves the cost of an id
            self.ms, self.high = ms, high
            self.head = "%08x-%04x-7%03x-%04x-" % (  # noqa: UP031 (faster than format here)
                ms >> 16 & 0xFFFFFFFF,
                ms & 0xFFFF,
                high >> 14,
                0x8000 | (high & 0x3FFF),
            )
        return "%s%012x" % (self.head, tail & 0xFFFFFFFFFFFF)  # noqa: UP031


_TAIL = (1 << 74) - 1
_ids = _Ids()


def new_event_id() -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds, then 74 bits that are random per process
    and count up per id; ids sort by creation time and are unique per process."""
    return _ids.next()


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One event: envelope attributes (CloudEvents names where they overlap) and its data.

    ``data`` is a pydantic model or any JSON value; after typed consumption it is an instance
    of the subscriber's model. ``headers`` are the user's string headers (``eb-`` is reserved).
    For raw records written by other clients, ``id`` is ``"<topic>/<partition>/<offset>"``,
    ``type`` is ``None`` and ``data`` is the decoded JSON value, or the bytes when not JSON.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str = Field(default_factory=new_event_id)
    type: str | None = None
    source: str | None = None
    time: datetime = Field(default_factory=_now)
    key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    data: Any = None
    schema_version: int | None = None

    def __init__(
        self,
        *,
        id: str | None = None,
        type: str | None = None,
        source: str | None = None,
        time: datetime | None = None,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        schema_version: int | None = None,
    ) -> None:
        """Build an event; ``id`` and ``time`` default to a new UUIDv7 and now (UTC).

        Raises pydantic's ValidationError when a field has the wrong type. Every field counts
        as set (``model_fields_set``) on events built from well-typed arguments."""
        # Fast path for well-typed arguments (publishing builds one per event; full
        # validation costs ~2 us); anything else goes through pydantic's validation.
        if (
            (id is None or id.__class__ is str)
            and (type is None or type.__class__ is str)
            and (source is None or source.__class__ is str)
            and (time is None or (time.__class__ is datetime and time.tzinfo is not None))
            and (key is None or key.__class__ is str)
            and not headers
            and (schema_version is None or schema_version.__class__ is int)
        ):
            fields = {
                "id": new_event_id() if id is None else id,
                "type": type,
                "source": source,
                "time": datetime.now(UTC) if time is None else time,
                "key": key,
                "headers": {},
                "data": data,
                "schema_version": schema_version,
            }
            _set(self, "__dict__", fields)
            _set(self, "__pydantic_fields_set__", _ALL_SET.copy())  # cheaper than tracking
            _set(self, "__pydantic_extra__", None)
            _set(self, "__pydantic_private__", None)
            return
        given = {
            name: value
            for name, value in (
                ("id", id),
                ("type", type),
                ("source", source),
                ("time", time),
                ("key", key),
                ("headers", headers),
                ("data", data),
                ("schema_version", schema_version),
            )
            if value is not None
        }
        super().__init__(**given)


_set = object.__setattr__


def built_event(
    id: str,
    type: str | None,
    source: str | None,
    time: datetime,
    key: str | None,
    headers: dict[str, str],
    data: Any,
    schema_version: int | None,
) -> Event:
    """An Event from values that are already valid (decoded records), without validation;
    ``model_construct`` does the same at several times the cost."""
    event = Event.__new__(Event)
    _set(
        event,
        "__dict__",
        {
            "id": id,
            "type": type,
            "source": source,
            "time": time,
            "key": key,
            "headers": headers,
            "data": data,
            "schema_version": schema_version,
        },
    )
    _set(event, "__pydantic_fields_set__", _ALL_SET.copy())
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


_FIELDS = ("id", "type", "source", "time", "key", "headers", "data", "schema_version")
_ALL_SET = set(_FIELDS)


@runtime_checkable
class Codec(Protocol):
    """Turns ``data`` into bytes and back. ``decode`` raises on bytes it cannot read."""

    content_type: str

    def encode(self, data: Any) -> bytes: ...

    def decode(self, payload: bytes) -> Any: ...


class JsonCodec:
    """JSON via pydantic-core: models, datetimes, UUIDs, dataclasses encode as JSON."""

    content_type = "application/json"

    def encode(self, data: Any) -> bytes:
        try:
            return pydantic_core.to_json(data)
        except pydantic_core.PydanticSerializationError as exc:
            raise SerializationError(
                f"cannot encode {type(data).__name__} as JSON: {exc}. Pass a pydantic model, "
                "a dataclass or JSON-compatible values, or give the bus another codec"
            ) from None

    def decode(self, payload: bytes) -> Any:
        return pydantic_core.from_json(payload)


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigurationError(f"header {name!r}: header names and values must be strings")
        if name.startswith(RESERVED_PREFIX):
            raise ConfigurationError(
                f"header {name!r} uses the reserved prefix {RESERVED_PREFIX!r}; rename it"
            )


def encode_event(event: Event, codec: Codec) -> Outgoing:
    """The record that carries ``event``. Raises SerializationError or ConfigurationError."""
    when = event.time
    stamp, iso = _stamp(when)
    headers: dict[str, bytes] = {H_ID: event.id.encode()}
    kind = event.type
    if kind is None and isinstance(event.data, BaseModel):
        kind = event.data.__class__.__name__  # as publish() names a model's events
    if kind is not None:
        headers[H_TYPE] = kind.encode()
    if event.source is not None:
        headers[H_SOURCE] = event.source.encode()
    headers[H_TIME] = iso
    headers[H_CONTENT_TYPE] = _ascii(codec.content_type)
    if event.schema_version is not None:
        headers[H_SCHEMA] = str(event.schema_version).encode()
    if event.headers:
        _check_headers(event.headers)
        for name, value in event.headers.items():
            headers[name] = value.encode()
    key = event.key
    return Outgoing(codec.encode(event.data), None if key is None else key.encode(), headers, stamp)


class _Seconds:
    """The last UTC second formatted; events published together mostly share it."""

    second = -1
    text = b""


def _stamp(when: datetime) -> tuple[int, bytes]:
    """Epoch milliseconds and ISO-8601 bytes of ``when`` (what ``isoformat`` gives)."""
    epoch = when.timestamp()
    if when.tzinfo is not UTC or epoch < 0:
        return int(epoch * 1000), when.isoformat().encode()
    us = when.microsecond
    second = int(epoch)  # exact: a float keeps .999999 below the next second until year 2200
    if second != _Seconds.second:
        _Seconds.text = when.replace(microsecond=0, tzinfo=None).isoformat().encode()
        _Seconds.second = second
    if us:
        return second * 1000 + us // 1000, b"%s.%06d+00:00" % (_Seconds.text, us)
    return second * 1000, _Seconds.text + b"+00:00"


@lru_cache(maxsize=64)
def _ascii(text: str) -> bytes:
    return text.encode()


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def decode_record(record: Record, codec: Codec, model: type[BaseModel] | None = None) -> Event:
    """The event a record carries. With ``model``, ``data`` is validated into it.

    Raises SerializationError (with the reason) when an eventbus record's bytes do not decode,
    or when ``model`` is given and the data does not validate, or the record is raw, or the
    transport marked it undecodable (``Record.decode_error``: an entry that does not fit its
    topic's stream layout)."""
    headers = record.headers
    key = _text(record.key) if record.key is not None else None
    event_id = headers.get(H_ID)
    if event_id is None:
        return _raw_event(record, key, model)
    try:
        data = codec.decode(record.value)
    except ValueError as exc:
        raise SerializationError(f"value does not decode as {codec.content_type}: {exc}") from None
    if model is not None:
        data = _validate(model, data)
    time_raw = headers.get(H_TIME)
    try:
        when = datetime.fromisoformat(time_raw.decode()) if time_raw else _ms(record)
    except ValueError:
        when = _ms(record)
    schema = headers.get(H_SCHEMA)
    kind = headers.get(H_TYPE)
    source = headers.get(H_SOURCE)
    reserved = 2 + (kind is not None) + (source is not None) + (schema is not None)
    reserved += H_CONTENT_TYPE in headers
    user: dict[str, str] = {}
    if len(headers) > reserved - (time_raw is None):  # some header is the user's (or unknown)
        user = {k: _text(v) for k, v in headers.items() if not k.startswith(RESERVED_PREFIX)}
    return built_event(
        id=event_id.decode(errors="replace"),
        type=None if kind is None else _text(kind),
        source=None if source is None else _text(source),
        time=when,
        key=key,
        headers=user,
        data=data,
        schema_version=int(schema) if schema and schema.isdigit() else None,
    )


def _ms(record: Record) -> datetime:
    return datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)


def _validate(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SerializationError(
            f"data does not validate as {model.__name__}: {exc.error_count()} error(s): "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        ) from None


def _raw_event(record: Record, key: str | None, model: type[BaseModel] | None) -> Event:
    if record.decode_error is not None:  # an entry that does not fit its topic's layout
        raise SerializationError(record.decode_error)
    return raw_event(record, key, model)


def raw_event(
    record: Record, key: str | None = None, model: type[BaseModel] | None = None
) -> Event:
    """``record`` as a raw event (id ``"<topic>/<partition>/<offset>"``, no type, its value
    decoded as JSON when it is). Raises SerializationError when ``model`` is given."""
    if model is not None:
        raise SerializationError(
            f"record {record.topic}/{record.partition}/{record.offset} was not written by "
            f"eventbus (no {H_ID} header), so it cannot be read as {model.__name__}"
        )
    data: Any
    try:
        data = pydantic_core.from_json(record.value) if record.value else None
    except ValueError:
        data = record.value
    return built_event(
        id=f"{record.topic}/{record.partition}/{record.offset}",
        type=None,
        source=None,
        time=_ms(record),
        key=key,
        headers={k: _text(v) for k, v in record.headers.items()},
        data=data,
        schema_version=None,
    )
