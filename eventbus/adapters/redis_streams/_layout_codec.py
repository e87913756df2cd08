"""Entries of topics with a declared :class:`~eventbus.topics.StreamLayout`: streams shared
with services that XADD and XREAD their own fields (``type``, ``payload``...).

Writing, a record becomes the layout's fields: its ``eb-type`` header in the type field, its
value (JSON) in the data field (or, for a flat layout, one field per item of the data
object: strings as they are, other values as JSON), its key, ``eb-id`` and ``eb-time`` in
the key, id and time fields. Everything else goes under the layout's ``extras_prefix``
(``P``): ``P + "eb-layout"`` = ``1`` (the marker), ``P + "eb-key"`` (the key, when the
layout has no key field) and ``P + <header name>`` per other header. Other readers ignore
those.

Reading, every entry of such a topic (written by eventbus or by anyone else) becomes a record
whose value is the data's bytes, whose key comes from the key field, and whose headers carry
``eb-type``, ``eb-id`` and ``eb-time`` (ISO 8601) beside the extras. With a data field, the
fields no setting names become headers too (names starting with ``eb-`` excepted). Entries in
eventbus's own format (marker ``_eb``) are read as such. ``raw_fields`` holds the fields
exactly, names decoded with ``surrogateescape`` (so ``name.encode("utf-8",
"surrogateescape")`` gives the bytes back).

Ids: an entry without an id (no id field, no ``eb-id`` extra) gets
``uuid5(NAMESPACE_URL, "redis-stream-entry:<topic>/<partition>/<entry id>")``: the same on
every read, by every reader, and unique per entry.

An entry that does not fit (no type field, no data field, data that is not JSON, a time that
is neither epoch milliseconds nor ISO 8601) is still delivered: as a record whose value is a
JSON object of all its fields and whose ``decode_error`` names the entry and the field, so
decoding raises SerializationError and the consumer dead-letters it with that reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import pydantic_core

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.errors import SerializationError
from eventbus.topics import StreamLayout
from eventbus.transport import Outgoing, Record

__all__ = ["LayoutCodec", "codec_for", "entry_uuid"]

H_ID = "eb-id"
H_TYPE = "eb-type"
H_TIME = "eb-time"
H_CONTENT_TYPE = "eb-content-type"
JSON_TYPE = b"application/json"
LAYOUT_MARKER = "eb-layout"
KEY_EXTRA = "eb-key"


def entry_uuid(topic: str, partition: int, entry_id: str) -> str:
    """The id of an entry that carries none: stable across reads and readers."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"redis-stream-entry:{topic}/{partition}/{entry_id}"))


@lru_cache(maxsize=256)
def codec_for(stream_layout: StreamLayout) -> LayoutCodec:
    """The (cached) codec of a layout."""
    return LayoutCodec(stream_layout)


def _utf8(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class LayoutCodec:
    """Writes records as a layout's entry fields and reads entries back (module docstring)."""

    def __init__(self, stream_layout: StreamLayout) -> None:
        self.layout = stream_layout
        lay = stream_layout

        def name(value: str | None) -> bytes | None:
            return None if value is None else value.encode("utf-8")

        self.type_f = name(lay.type)
        self.data_f = name(lay.data)
        self.key_f = name(lay.key)
        self.id_f = name(lay.id)
        self.time_f = name(lay.time)
        self.prefix = lay.extras_prefix.encode("utf-8")
        self.marker = self.prefix + LAYOUT_MARKER.encode()
        self.key_extra = self.prefix + KEY_EXTRA.encode()
        self.mapped: dict[bytes, str] = {k.encode("utf-8"): v for k, v in lay.mapped().items()}

    # writing ---------------------------------------------------------------------------------
    def encode(self, record: Outgoing, topic: str) -> list[bytes]:
        """Flat field/value list for XADD. Raises SerializationError when the record cannot
        be written in the layout (no type, data that is not JSON or, flat, not an object)."""
        lay = self.layout
        headers = dict(record.headers)
        out: list[bytes] = [self.marker, b"1"]
        kind = headers.pop(H_TYPE, None)
        if self.type_f is not None:
            if kind is None:
                raise SerializationError(
                    f"topic {topic!r} keeps the event type in field {lay.type!r} (its stream "
                    "layout): give the event a type (publish a pydantic model, or type=...)"
                )
            out += [self.type_f, kind]
        elif kind is not None:
            headers[H_TYPE] = kind  # kept with the extras
        if self.id_f is not None and H_ID in headers:
            out += [self.id_f, headers.pop(H_ID)]
        if self.time_f is not None:
            stamp = self._time(headers.pop(H_TIME, None), record.timestamp_ms)
            if stamp is not None:
                out += [self.time_f, stamp]
        if record.key is not None:
            out += [self.key_extra if self.key_f is None else self.key_f, record.key]
        if self.data_f is not None:
            if headers.get(H_CONTENT_TYPE) != JSON_TYPE:
                self._parse(record.value, topic)  # raises unless it is JSON
            out += [self.data_f, record.value]
        else:
            out += self._flat(record.value, topic)
        prefix = self.prefix
        for header, value in headers.items():
            out += [prefix + header.encode("utf-8"), value]
        return out

    def _time(self, iso: bytes | None, ms: int | None) -> bytes | None:
        if self.layout.time_format == "iso":
            if iso is not None:
                return iso
            return (
                None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().encode()
            )
        if ms is None and iso is not None:
            try:
                ms = int(datetime.fromisoformat(iso.decode()).timestamp() * 1000)
            except ValueError:
                return None
        return None if ms is None else str(ms).encode()

    def _parse(self, value: bytes, topic: str) -> Any:
        try:
            return pydantic_core.from_json(value)
        except ValueError as exc:
            where = f"field {self.layout.data!r}" if self.data_f is not None else "its fields"
            raise SerializationError(
                f"topic {topic!r} keeps the data as JSON in {where} (its stream layout), but "
                f"the event's data is not JSON ({exc}): use the JSON codec"
            ) from None

    def _flat(self, value: bytes, topic: str) -> list[bytes]:
        data = self._parse(value, topic)
        if not isinstance(data, dict):
            raise SerializationError(
                f"topic {topic!r} has a flat stream layout (data: null): the data must be an "
                f"object (a dict or a pydantic model), not {type(data).__name__}"
            )
        out: list[bytes] = []
        for item, val in data.items():
            field = item.encode("utf-8")
            if field in self.mapped or field.startswith(self.prefix) or field == layout.MARKER:
                raise SerializationError(
                    f"topic {topic!r}: data item {item!r} would be written to a field its "
                    "stream layout uses for something else; rename the item"
                )
            out += [
                field,
                val.encode("utf-8") if isinstance(val, str) else pydantic_core.to_json(val),
            ]
        return out

    # reading ---------------------------------------------------------------------------------
    def decode(
        self,
        topic: str,
        partition: int,
        entry_id: bytes | str,
        fields: Mapping[bytes, bytes],
        attempt: int,
    ) -> Record:
        """A stream entry as a Record (see the module docstring). Never raises."""
        if fields.get(layout.MARKER) is not None:  # eventbus's own format
            return layout.decode_entry(topic, partition, entry_id, fields, attempt)
        offset = layout.text(entry_id)
        raw = {k.decode("utf-8", "surrogateescape"): v for k, v in fields.items()}
        values, headers, rest, key = self._split(fields)
        try:
            data = self._fit(values, headers, rest)
        except _Misfit as misfit:
            return Record(
                topic=topic,
                partition=partition,
                offset=offset,
                value=pydantic_core.to_json({_utf8(k): _utf8(v) for k, v in fields.items()}),
                key=key,
                headers={},
                timestamp_ms=layout.id_ms(offset),
                attempt=attempt,
                raw_fields=raw,
                decode_error=f"entry {topic}/{partition}/{offset} does not fit topic {topic!r}'s "
                f"stream layout: {misfit}",
            )
        event_id = values.get("id") or headers.get(H_ID)
        headers[H_ID] = event_id or entry_uuid(topic, partition, offset).encode()
        headers.setdefault(H_CONTENT_TYPE, JSON_TYPE)  # the data is JSON (checked, or built)
        return Record(
            topic=topic,
            partition=partition,
            offset=offset,
            value=data,
            key=key,
            headers=headers,
            timestamp_ms=layout.id_ms(offset),
            attempt=attempt,
            raw_fields=raw,
        )

    def _split(
        self, fields: Mapping[bytes, bytes]
    ) -> tuple[dict[str, bytes], dict[str, bytes], dict[bytes, bytes], bytes | None]:
        """(setting -> value, headers from the extras, the other fields, the key)."""
        values: dict[str, bytes] = {}
        headers: dict[str, bytes] = {}
        rest: dict[bytes, bytes] = {}
        key: bytes | None = None
        prefix, mapped = self.prefix, self.mapped
        for field, value in fields.items():
            setting = mapped.get(field)
            if setting is not None:
                values[setting] = value
            elif field.startswith(prefix):
                name = _utf8(field[len(prefix) :])
                if name == KEY_EXTRA:
                    key = value
                elif name != LAYOUT_MARKER:
                    headers[name] = value
            else:
                rest[field] = value
        return values, headers, rest, values.get("key", key)

    def _fit(
        self, values: dict[str, bytes], headers: dict[str, bytes], rest: dict[bytes, bytes]
    ) -> bytes:
        """The data bytes; adds type, time and (data field) the other fields to ``headers``.
        Raises _Misfit saying which field does not fit."""
        lay = self.layout
        if self.type_f is not None:
            if "type" not in values:
                raise _Misfit(f"no field {lay.type!r} (its type field)")
            headers[H_TYPE] = values["type"]
        if "time" in values:
            headers[H_TIME] = _iso(values["time"], lay.time)
        if self.data_f is None:
            return pydantic_core.to_json({_utf8(k): _utf8(v) for k, v in rest.items()})
        data = values.get("data")
        if data is None:
            raise _Misfit(f"no field {lay.data!r} (its data field)")
        try:
            pydantic_core.from_json(data)
        except ValueError as exc:
            raise _Misfit(f"field {lay.data!r} is not JSON: {exc}") from None
        for field, value in rest.items():
            name = _utf8(field)
            if not name.startswith("eb-"):
                headers.setdefault(name, value)
        return data


class _Misfit(Exception):
    """An entry that does not fit the layout (the message says why)."""


def _iso(value: bytes, field: str | None) -> bytes:
    """A time field (epoch ms, or ISO 8601; naive means UTC) as ISO 8601 bytes."""
    text = value.decode("utf-8", "replace").strip()
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC).isoformat().encode()
        when = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise _Misfit(
            f"field {field!r} = {text[:40]!r} is neither epoch milliseconds nor ISO 8601"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat().encode()
