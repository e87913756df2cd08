"""CloudEvents on Kafka: eventbus's envelope to and from the CloudEvents Kafka binding 1.0.

This module is the whole mapping. It works at the record edge of the Kafka adapter, so everything
above it (the codec, the runner, dead letters, migration copies, dedupe by event id) only ever
sees eventbus's own layout: the value holds the data's bytes, the envelope sits in ``eb-``
headers.

Contract
--------

Writing (``envelope=`` URL option; only records that carry ``eb-id`` are translated, anything
else, such as the dead-letter copy of a record that is not an event, is written as it is):

- ``eventbus`` (default): nothing here runs; the record is written exactly as the core built it.
- ``cloudevents`` (binary content mode): the value and key are unchanged (the value is the data,
  JSON for the JSON codec, so a consumer that only reads the value keeps working). Headers:
  ``ce_specversion: 1.0``, ``ce_id`` (eb-id), ``ce_type`` (eb-type, or :data:`DEFAULT_TYPE` for
  an event without one), ``ce_source`` (eb-source, or the ``ce_source`` URL option),
  ``ce_time`` (eb-time, RFC 3339), ``content-type`` (eb-content-type), the other eventbus
  headers as extensions ``ce_<name>`` (:data:`EXTENSIONS`: ``eb-schema`` is ``ce_ebschema``),
  then the user's headers unchanged (a user header ``ce_subject`` is the ``subject``
  attribute). An ``eb-`` header without an extension name stays as it is.
- ``cloudevents-structured``: header ``content-type: application/cloudevents+json;
  charset=UTF-8``, the key unchanged, the user's headers unchanged except ``ce_<name>`` ones,
  which become attributes; the value is one JSON object with ``specversion``, ``id``, ``type``,
  ``source``, ``time``, ``datacontenttype``, the extensions, and ``data`` (the JSON data
  embedded as JSON) or ``data_base64`` (data of a content type that is not JSON).
- A user header that would take the place of a CloudEvents header (``ce_id``,
  ``content-type``, ...) is refused with ConfigurationError before anything is written.

Reading (whatever ``envelope`` says; called only for records without ``eb-id``):

- a ``content-type`` header starting with ``application/cloudevents`` is structured mode (only
  the JSON format, ``application/cloudevents+json``, is read); otherwise a ``ce_specversion``
  or ``ce_id`` header is binary mode; anything else is not a CloudEvent and is left alone.
- A CloudEvent becomes the record eventbus would have written: ``eb-id``, ``eb-type``,
  ``eb-source``, ``eb-time`` (from ``time``; absent: the record timestamp is used),
  ``eb-content-type`` (from ``content-type`` / ``datacontenttype``), known extensions back to
  their ``eb-`` names, every other attribute (``subject``, ``dataschema``, foreign extensions)
  as a user header ``ce_<name>``; the value is the data's bytes (``data`` re-encoded as JSON,
  ``data_base64`` decoded; an event without data reads as JSON ``null``).
- A malformed CloudEvent (structured value not a JSON object, a required attribute missing or
  empty, a ``specversion`` other than 1.x, a ``time`` that is not RFC 3339, bad
  ``data_base64``, an event format other than JSON) keeps its original bytes and gets
  ``Record.decode_error``; the core then raises SerializationError with that reason, which
  dead-letters it like any record that does not decode.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pydantic_core

from eventbus.errors import ConfigurationError
from eventbus.transport import Outgoing, Record

__all__ = [
    "DEFAULT_SOURCE",
    "DEFAULT_TYPE",
    "ENVELOPES",
    "EXTENSIONS",
    "check_source",
    "from_kafka",
    "writer",
]

ENVELOPES = ("eventbus", "cloudevents", "cloudevents-structured")
"""Accepted values of the ``envelope`` URL option."""
DEFAULT_SOURCE = "/eventbus"
"""``source`` of events published without one (URL option ``ce_source``)."""
DEFAULT_TYPE = "eventbus.event"
"""``type`` of events published without one (no ``type=`` and data that is not a model); it
reads back as written, not as ``None``."""
SPECVERSION = "1.0"
STRUCTURED_TYPE = b"application/cloudevents+json; charset=UTF-8"

EXTENSIONS: Mapping[str, str] = {
    "eb-schema": "ebschema",
    "eb-dlq-reason": "ebdlqreason",
    "eb-dlq-attempts": "ebdlqattempts",
    "eb-dlq-source": "ebdlqsource",
    "eb-dlq-time": "ebdlqtime",
    "eb-dlq-group": "ebdlqgroup",
    "eb-mig-gen": "ebmiggen",
    "eb-copy": "ebcopy",
    "eb-copy-of": "ebcopyof",
    "eb-maybe-copied": "ebmaybecopied",
}
"""eventbus headers written as CloudEvents extension attributes (names: a-z0-9 only). Other
``eb-`` headers are written as they are, so every header reads back under its own name."""
_EB_OF = {ext: name for name, ext in EXTENSIONS.items()}

_EB_ID = "eb-id"
_EB_TYPE = "eb-type"
_EB_SOURCE = "eb-source"
_EB_TIME = "eb-time"
_EB_CONTENT_TYPE = "eb-content-type"
_ENVELOPE = frozenset((_EB_ID, _EB_TYPE, _EB_SOURCE, _EB_TIME, _EB_CONTENT_TYPE))
_CONTENT_TYPE = "content-type"
_BINARY_CORE = frozenset(
    ("ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", _CONTENT_TYPE)
)
_STRUCTURED_CORE = frozenset(
    ("specversion", "id", "type", "source", "time", "datacontenttype", "data", "data_base64")
)
_NAME = re.compile(r"[a-z0-9]+\Z")
"""A CloudEvents attribute name."""
_OFFSET = re.compile(rb"(Z|z|[+-]\d\d:\d\d)\Z")


def check_source(value: Any) -> str:
    """The ``ce_source`` option, checked as a URI-reference (non-empty, no spaces or control
    characters). Raises ConfigurationError."""
    text = str(value)
    if not text or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigurationError(
            f"option ce_source={value!r} is not a URI-reference: use for example /eventbus, "
            "/services/orders or https://example.com/orders (no spaces)"
        )
    return text


def writer(envelope: str, source: str) -> Callable[[Sequence[Outgoing]], Sequence[Outgoing]] | None:
    """The translation ``publish`` applies to its records; None for the ``eventbus`` envelope."""
    if envelope == "eventbus":
        return None
    encode = _structured if envelope == "cloudevents-structured" else _binary
    fallback = source.encode()

    def translate(records: Sequence[Outgoing]) -> Sequence[Outgoing]:
        return [encode(record, fallback) for record in records]

    return translate


# -- writing ---------------------------------------------------------------------------------


def _attributes(headers: Mapping[str, bytes], source: bytes) -> list[tuple[str, bytes]]:
    """The required and time attributes of an eventbus record, as (name, UTF-8 value)."""
    event_id = headers[_EB_ID]
    if not event_id:
        raise ConfigurationError("a CloudEvent needs a non-empty id; the event's id is empty")
    attrs = [
        ("specversion", SPECVERSION.encode()),
        ("id", event_id),
        ("type", headers.get(_EB_TYPE) or DEFAULT_TYPE.encode()),
        ("source", headers.get(_EB_SOURCE) or source),
    ]
    when = headers.get(_EB_TIME)
    if when is not None:
        attrs.append(("time", _rfc3339_out(when)))
    return attrs


def _rfc3339_out(raw: bytes) -> bytes:
    """eb-time (``datetime.isoformat``) as RFC 3339: with an offset it already is one."""
    if _OFFSET.search(raw):
        return raw
    try:
        when = datetime.fromisoformat(raw.decode())
    except ValueError:
        raise ConfigurationError(f"eb-time {raw!r} is not an ISO 8601 time") from None
    return when.astimezone(UTC).isoformat().encode()  # naive: local time, as its timestamp


def _collision(name: str) -> ConfigurationError:
    return ConfigurationError(
        f"header {name!r} would replace a CloudEvents header this envelope writes; rename it "
        "(ce_ headers that name other attributes, such as ce_subject, are fine)"
    )


def _binary(record: Outgoing, source: bytes) -> Outgoing:
    headers = record.headers
    if _EB_ID not in headers:
        return record
    out = {"ce_" + name: value for name, value in _attributes(headers, source)}
    content_type = headers.get(_EB_CONTENT_TYPE)
    if content_type is not None:
        out[_CONTENT_TYPE] = content_type
    rest: list[tuple[str, bytes]] = []
    for name, value in headers.items():
        if name in _ENVELOPE:
            continue
        ext = EXTENSIONS.get(name)
        if ext is not None:
            out["ce_" + ext] = value
        else:
            rest.append((name, value))
    for name, value in rest:
        if name in out or (name.startswith("ce_") and name[3:] in _EB_OF):
            raise _collision(name)
        out[name] = value
    return Outgoing(record.value, record.key, out, record.timestamp_ms, record.partition)


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def _structured(record: Outgoing, source: bytes) -> Outgoing:
    headers = record.headers
    if _EB_ID not in headers:
        return record
    attrs: dict[str, str] = {name: value.decode() for name, value in _attributes(headers, source)}
    content_type_raw = headers.get(_EB_CONTENT_TYPE)
    content_type = None if content_type_raw is None else content_type_raw.decode()
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    out: dict[str, bytes] = {_CONTENT_TYPE: STRUCTURED_TYPE}
    for name, value in headers.items():
        if name in _ENVELOPE:
            continue
        ext = EXTENSIONS.get(name)
        if ext is not None:
            attrs[ext] = value.decode(errors="replace")
            continue
        attribute = name[3:] if name.startswith("ce_") else ""
        if attribute in attrs or attribute in _STRUCTURED_CORE or attribute in _EB_OF:
            raise _collision(name)
        if name == _CONTENT_TYPE:
            raise _collision(name)
        if _NAME.match(attribute):
            attrs[attribute] = value.decode(errors="replace")
        else:
            out[name] = value
    head = pydantic_core.to_json(attrs)
    if _is_json(content_type) and record.value:
        value = b"".join((head[:-1], b',"data":', record.value, b"}"))
    else:
        data = base64.b64encode(record.value).decode()
        value = pydantic_core.to_json({**attrs, "data_base64": data})
    return Outgoing(value, record.key, out, record.timestamp_ms, record.partition)


# -- reading ---------------------------------------------------------------------------------


class _Malformed(Exception):
    """A CloudEvent eventbus cannot read; the message is the reason."""


def from_kafka(record: Record) -> Record:
    """The record in eventbus's layout when it is a CloudEvent (binary or structured), with
    ``decode_error`` set when it is a malformed one, or the record itself when it is neither.

    Called by the adapter for records without ``eb-id`` only."""
    headers = record.headers
    content_type = headers.get(_CONTENT_TYPE)
    try:
        if content_type is not None and content_type[:23].lower() == b"application/cloudevents":
            return _read_structured(record, content_type)
        if "ce_specversion" in headers or "ce_id" in headers:
            return _read_binary(record)
    except _Malformed as exc:
        record.decode_error = (
            f"record {record.topic}/{record.partition}/{record.offset} is not a valid "
            f"CloudEvent: {exc}"
        )
    return record


def _required(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        try:
            text = value.decode()
        except UnicodeDecodeError:
            raise _Malformed(f"attribute {name!r} is not UTF-8") from None
    elif isinstance(value, str):
        text = value
    elif value is None:
        raise _Malformed(f"required attribute {name!r} is missing")
    else:
        raise _Malformed(f"attribute {name!r} is not a string")
    if not text:
        raise _Malformed(f"required attribute {name!r} is empty")
    return text.encode()


def _specversion(value: Any) -> None:
    version = _required("specversion", value).decode()
    if version.partition(".")[0] != "1":
        raise _Malformed(f"specversion {version!r} is not supported (eventbus reads 1.x)")


def _rfc3339_in(value: Any) -> bytes:
    """A CloudEvents time as ``eb-time`` bytes (what ``datetime.fromisoformat`` reads)."""
    raw = _required("time", value)
    text = raw.decode()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:  # RFC 3339 allows a lower-case t and z
            when = datetime.fromisoformat(text.upper())
        except ValueError:
            raise _Malformed(f"time {text!r} is not an RFC 3339 time") from None
        raw = when.isoformat().encode()
    if when.tzinfo is None:
        raise _Malformed(f"time {text!r} has no UTC offset (RFC 3339 needs one)")
    return raw


def _envelope(
    event_id: Any, kind: Any, source: Any, when: Any, content_type: bytes | None
) -> dict[str, bytes]:
    out = {
        _EB_ID: _required("id", event_id),
        _EB_TYPE: _required("type", kind),
        _EB_SOURCE: _required("source", source),
    }
    if when is not None:
        out[_EB_TIME] = _rfc3339_in(when)
    if content_type is not None:
        out[_EB_CONTENT_TYPE] = content_type
    return out


def _rebuilt(record: Record, value: bytes, headers: dict[str, bytes]) -> Record:
    return Record(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        value=value,
        key=record.key,
        headers=headers,
        timestamp_ms=record.timestamp_ms,
        attempt=record.attempt,
    )


def _read_binary(record: Record) -> Record:
    headers = record.headers
    _specversion(headers.get("ce_specversion"))
    content_type = headers.get(_CONTENT_TYPE)
    out = _envelope(
        headers.get("ce_id"),
        headers.get("ce_type"),
        headers.get("ce_source"),
        headers.get("ce_time"),
        content_type,
    )
    for name, value in headers.items():
        if name in _BINARY_CORE:
            continue
        eb = _EB_OF.get(name[3:]) if name.startswith("ce_") else None
        out[eb or name] = value
    value = record.value
    if not value and _is_json(None if content_type is None else _text(content_type)):
        value = b"null"  # a CloudEvent without data
    return _rebuilt(record, value, out)


def _text(value: bytes) -> str:
    return value.decode(errors="replace")


def _read_structured(record: Record, content_type: bytes) -> Record:
    media = content_type.partition(b";")[0].strip().lower()
    if media != b"application/cloudevents+json":
        raise _Malformed(
            f"event format {_text(media)!r} is not supported (eventbus reads "
            "application/cloudevents+json)"
        )
    try:
        event = pydantic_core.from_json(record.value)
    except ValueError as exc:
        raise _Malformed(f"the structured value is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise _Malformed(f"the structured value is a JSON {type(event).__name__}, not an object")
    _specversion(event.get("specversion"))
    data_type = event.get("datacontenttype")
    if data_type is not None and not isinstance(data_type, str):
        raise _Malformed("attribute 'datacontenttype' is not a string")
    json_data = _is_json(data_type)
    out = _envelope(
        event.get("id"),
        event.get("type"),
        event.get("source"),
        event.get("time"),
        (data_type or "application/json").encode(),
    )
    for name, attribute in event.items():
        if name in _STRUCTURED_CORE or attribute is None:
            continue
        text = attribute if isinstance(attribute, str) else pydantic_core.to_json(attribute)
        out[_EB_OF.get(name) or "ce_" + name] = text.encode() if isinstance(text, str) else text
    for name, header in record.headers.items():
        if name == _CONTENT_TYPE or (name.startswith("ce_") and name[3:] in event):
            continue  # the value says it (binary-mode copies of attributes are allowed)
        out.setdefault(name, header)
    return _rebuilt(record, _structured_data(event, json_data), out)


def _structured_data(event: dict[str, Any], json_data: bool) -> bytes:
    """The data's bytes: ``data_base64`` decoded, JSON ``data`` re-encoded, text as UTF-8."""
    if "data_base64" in event:
        if "data" in event:
            raise _Malformed("both 'data' and 'data_base64' are present")
        encoded = event["data_base64"]
        if not isinstance(encoded, str):
            raise _Malformed("'data_base64' is not a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Malformed(f"'data_base64' is not base64: {exc}") from None
    if "data" not in event:
        return b"null" if json_data else b""  # an event without data
    data = event["data"]
    if not json_data and isinstance(data, str):
        return data.encode()
    return pydantic_core.to_json(data)
