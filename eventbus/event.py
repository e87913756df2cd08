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


def new_event_id() -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds, then random bits; sorts by creation time."""
    ms = _time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFFFFFFFFFFFFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
    headers: dict[str, bytes] = {H_ID: event.id.encode()}
    if event.type is not None:
        headers[H_TYPE] = event.type.encode()
    if event.source is not None:
        headers[H_SOURCE] = event.source.encode()
    headers[H_TIME] = event.time.isoformat().encode()
    headers[H_CONTENT_TYPE] = codec.content_type.encode()
    if event.schema_version is not None:
        headers[H_SCHEMA] = str(event.schema_version).encode()
    if event.headers:
        _check_headers(event.headers)
        for name, value in event.headers.items():
            headers[name] = value.encode()
    return Outgoing(
        value=codec.encode(event.data),
        key=event.key.encode() if event.key is not None else None,
        headers=headers,
        timestamp_ms=int(event.time.timestamp() * 1000),
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def decode_record(record: Record, codec: Codec, model: type[BaseModel] | None = None) -> Event:
    """The event a record carries. With ``model``, ``data`` is validated into it.

    Raises SerializationError (with the reason) when an eventbus record's bytes do not decode,
    or when ``model`` is given and the data does not validate, or the record is raw."""
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
    return Event.model_construct(
        id=event_id.decode(errors="replace"),
        type=_text(headers[H_TYPE]) if H_TYPE in headers else None,
        source=_text(headers[H_SOURCE]) if H_SOURCE in headers else None,
        time=when,
        key=key,
        headers={k: _text(v) for k, v in headers.items() if not k.startswith(RESERVED_PREFIX)},
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
    return Event.model_construct(
        id=f"{record.topic}/{record.partition}/{record.offset}",
        type=None,
        source=None,
        time=_ms(record),
        key=key,
        headers={k: _text(v) for k, v in record.headers.items()},
        data=data,
        schema_version=None,
    )
