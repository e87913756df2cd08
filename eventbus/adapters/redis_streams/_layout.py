"""Key layout, stream entry encoding and entry-id arithmetic.

Keys of topic ``T`` (every key of a topic hashes to the slot of ``T``, so one topic lives on
one Redis Cluster shard and multi-key commands on it are legal)::

    T                       partition 0 (a plain stream: existing streams are adopted as is)
    eb:{T}:p<N>             partition N >= 1
    eb:{T}:meta             hash: partitions, retention_ms, max_event_bytes, cleanup_policy,
                            config (JSON), created_ms, format
    eb:{T}:m:<group>        hash: member -> session deadline (server ms)
    eb:{T}:o:<group>        hash: partition -> owning member
    eb:topics               set of topic names created by eventbus (one key, any slot)

The key ``T`` has no hash tag, so Redis hashes all of it; ``eb:{T}:...`` hashes the tag ``T``:
both land on the same slot (topic names cannot contain braces).

Entry fields written by eventbus: ``_eb`` = ``1`` (the marker), ``_k`` (key, when there is
one), ``_v`` (value), ``h:<name>`` per header, verbatim. Entries without the marker come from
other clients and are delivered as records whose value is a JSON object of their fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from eventbus.errors import InvalidPositionError
from eventbus.transport import Offset, Outgoing, Record, offset_key

__all__ = [
    "MARKER",
    "MAX_SEQ",
    "TOPICS_KEY",
    "decode_entry",
    "encode_fields",
    "id_before",
    "id_ms",
    "id_of",
    "members_key",
    "meta_key",
    "offset_order",
    "owners_key",
    "stream_key",
    "text",
]

MARKER = b"_eb"
_KEY = b"_k"
_VALUE = b"_v"
_HEADER = b"h:"
MAX_SEQ = 18446744073709551615
TOPICS_KEY = "eb:topics"
INTERNAL_PREFIX = "eb:"


def stream_key(topic: str, partition: int) -> str:
    """The stream holding one partition; partition 0 is the topic's own name."""
    return topic if partition == 0 else f"eb:{{{topic}}}:p{partition}"


def meta_key(topic: str) -> str:
    return f"eb:{{{topic}}}:meta"


def members_key(topic: str, group: str) -> str:
    return f"eb:{{{topic}}}:m:{group}"


def owners_key(topic: str, group: str) -> str:
    return f"eb:{{{topic}}}:o:{group}"


def text(value: bytes | str) -> str:
    """A reply value as str (replies are bytes: the client does not decode)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def encode_fields(record: Outgoing) -> list[bytes]:
    """Flat field/value list for XADD: marker, key, value, headers."""
    out = [MARKER, b"1"]
    if record.key is not None:
        out += [_KEY, record.key]
    out += [_VALUE, record.value]
    for name, value in record.headers.items():
        out += [_HEADER + name.encode("utf-8"), value]
    return out


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


_MARKER_PAIR = _bulk(MARKER) + _bulk(b"1")
_KEY_FIELD = _bulk(_KEY)
_VALUE_FIELD = _bulk(_VALUE)
_SMALL = [_bulk(str(i).encode()) for i in range(256)]
_HEADER_FIELDS: dict[str, bytes] = {}


def resp_number(value: int) -> bytes:
    """A RESP bulk string of a small non-negative integer (cached up to 255)."""
    return _SMALL[value] if 0 <= value < 256 else _bulk(str(value).encode())


def resp_publish_args(records: Sequence[Outgoing], slots: Sequence[int]) -> tuple[list[bytes], int]:
    """The PUBLISH script's per-record arguments as RESP bulk strings, ready to send, and how
    many bulk strings they are.

    Same arguments :func:`encode_fields` gives the script (slot, pair count, pairs), packed
    here because redis-py's generic packer costs several microseconds per record."""
    out: list[bytes] = []
    bulks = 0
    add = out.append
    for record, slot in zip(records, slots, strict=True):
        headers = record.headers
        key = record.key
        value = record.value
        pairs = len(headers) + (2 if key is None else 3)
        bulks += 2 + 2 * pairs
        add(_SMALL[slot] if slot < 256 else resp_number(slot))
        add(resp_number(pairs))
        add(_MARKER_PAIR)
        if key is not None:
            add(b"%b$%d\r\n%b\r\n" % (_KEY_FIELD, len(key), key))
        add(b"%b$%d\r\n%b\r\n" % (_VALUE_FIELD, len(value), value))
        for name, item in headers.items():
            field = _HEADER_FIELDS.get(name)
            if field is None:
                field = _bulk(_HEADER + name.encode("utf-8"))
                if len(_HEADER_FIELDS) < 4096:  # header names are few; never grow unbounded
                    _HEADER_FIELDS[name] = field
            add(b"%b$%d\r\n%b\r\n" % (field, len(item), item))
    return out, bulks


def resp_command(head: Sequence[bytes | str], arg_count: int) -> bytes:
    """RESP array header plus ``head`` as bulk strings; ``arg_count`` more bulks follow."""
    out = [b"*%d\r\n" % (len(head) + arg_count)]
    for item in head:
        out.append(_bulk(item.encode("utf-8") if isinstance(item, str) else item))
    return b"".join(out)


_FIELD_NAMES: dict[bytes, str] = {MARKER: "", _KEY: "", _VALUE: ""}
"""Entry field -> header name ("" for fields that are not headers); header names repeat."""


def _field_name(field: bytes) -> str:
    name = field[len(_HEADER) :].decode("utf-8", "replace") if field.startswith(_HEADER) else ""
    if len(_FIELD_NAMES) < 4096:  # bounded: foreign writers may use many distinct fields
        _FIELD_NAMES[field] = name
    return name


def decode_entry(
    topic: str, partition: int, entry_id: bytes | str, fields: Mapping[bytes, bytes], attempt: int
) -> Record:
    """A stream entry as a Record. Never raises on foreign entries: any fields are accepted."""
    offset = text(entry_id)
    ms = id_ms(offset)
    if fields.get(MARKER) is not None:
        headers: dict[str, bytes] = {}
        names = _FIELD_NAMES
        for k, v in fields.items():
            name = names.get(k)
            if name is None:
                name = _field_name(k)
            if name:
                headers[name] = v
        return Record(
            topic=topic,
            partition=partition,
            offset=offset,
            value=fields.get(_VALUE, b""),
            key=fields.get(_KEY),
            headers=headers,
            timestamp_ms=ms,
            attempt=attempt,
        )
    raw = {text(k): v for k, v in fields.items()}
    value = json.dumps({k: v.decode("utf-8", "replace") for k, v in raw.items()}).encode()
    return Record(
        topic=topic,
        partition=partition,
        offset=offset,
        value=value,
        key=None,
        headers={},
        timestamp_ms=ms,
        attempt=attempt,
        raw_fields=raw,
    )


def offset_order(entry_id: Offset) -> tuple[int, int]:
    """Sort key of an entry id."""
    return offset_key(entry_id)


def id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def id_of(offset: Offset, topic: str) -> str:
    """Validate a Redis entry id given as an offset; raises InvalidPositionError."""
    if isinstance(offset, str):
        ms, sep, seq = offset.partition("-")
        if ms.isdigit() and (not sep or seq.isdigit()):
            return f"{int(ms)}-{int(seq or 0)}"
    raise InvalidPositionError(
        f"{offset!r} is not a position in Redis topic {topic!r}: Redis positions are entry ids "
        "such as 1700000000000-0"
    )


def id_before(entry_id: str) -> str:
    """The largest id smaller than ``entry_id`` ("0-0" for the smallest): as a group's
    last-delivered id it makes ``entry_id`` the next entry the group reads."""
    ms, _, seq = entry_id.partition("-")
    m, s = int(ms), int(seq or 0)
    if s > 0:
        return f"{m}-{s - 1}"
    if m > 0:
        return f"{m - 1}-{MAX_SEQ}"
    return "0-0"


def time_id(when: datetime) -> str:
    """The first id at or after a time."""
    return f"{max(0, int(when.timestamp() * 1000))}-0"
