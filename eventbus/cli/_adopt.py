"""What ``eventbus topics adopt`` proposes: a :class:`~eventbus.topics.StreamLayout` learnt from
a sample of a stream's entries.

:func:`propose` looks at every field of the sampled entries (entries in eventbus's own format
are counted and left out) and picks, each from fields present in at least
:data:`MOST` of the entries:

* ``data``: the field whose values most often parse as a JSON object (at least half the
  entries); none means a flat layout (the other fields are the data);
* ``type``: the first of :data:`TYPE_NAMES` present (case-insensitive);
* ``id``: the first of :data:`ID_NAMES`; ``time``: the first of :data:`TIME_NAMES` whose
  values read as epoch milliseconds or ISO 8601 (``time_format`` follows what most are);
* ``key``: with a data field, the most common field named ``key`` or ``*_id`` (not the id).
  A flat layout gets none (the key field would leave the data object); candidates are listed.

It never touches a server; the command reads the sample and writes the layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventbus.topics import StreamLayout

__all__ = ["MOST", "FieldStats", "Proposal", "fits", "propose"]

MOST = 0.9
"""Share of the sampled entries a field must be present in to be proposed."""
TYPE_NAMES = ("type", "event_type", "eventtype", "event", "event_name", "kind")
ID_NAMES = ("id", "event_id", "eventid", "message_id", "msg_id", "uuid")
TIME_NAMES = ("time", "timestamp", "ts", "event_time", "occurred_at", "created_at")
DATA_NAMES = ("payload", "data", "body", "event_data", "message")
NATIVE_MARKER = b"_eb"
DEFAULT_PREFIX = "_eb."


@dataclass
class FieldStats:
    """One field across the sample: in how many entries, how many as a JSON object, as a
    time; an example value (shortened)."""

    name: str
    present: int = 0
    json_objects: int = 0
    times_ms: int = 0
    times_iso: int = 0
    example: str = ""


@dataclass
class Proposal:
    """The layout proposed, and what it was learnt from."""

    layout: StreamLayout
    sampled: int
    """Entries looked at (those in eventbus's own format excluded)."""
    native: int
    """Entries in eventbus's own format (readable whatever the layout)."""
    fields: list[FieldStats]
    key_candidates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def roles(self) -> dict[str, str]:
        """Field name -> the layout setting it holds."""
        return self.layout.mapped()

    def as_json(self) -> dict[str, Any]:
        roles = self.roles()
        return {
            "layout": self.layout.model_dump(),
            "sampled": self.sampled,
            "eventbus_entries": self.native,
            "fields": [
                {
                    "name": f.name,
                    "present": f.present,
                    "json_objects": f.json_objects,
                    "role": roles.get(f.name),
                    "example": f.example,
                }
                for f in self.fields
            ],
            "key_candidates": self.key_candidates,
            "notes": self.notes,
        }


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _is_object(value: bytes) -> bool:
    if not value.lstrip().startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def _time_kind(value: bytes) -> str | None:
    text = _text(value).strip()
    if text.isdigit() and 10 <= len(text) <= 14:
        return "ms"
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return None
    return "iso"


def _stats(entries: Sequence[Mapping[bytes, bytes]], prefix: str) -> list[FieldStats]:
    found: dict[str, FieldStats] = {}
    for fields in entries:
        for raw_name, value in fields.items():
            name = _text(raw_name)
            if name.startswith(prefix):
                continue  # eventbus's own extras
            stats = found.get(name)
            if stats is None:
                stats = found[name] = FieldStats(name, example=_text(value)[:40])
            stats.present += 1
            stats.json_objects += _is_object(value)
            kind = _time_kind(value)
            stats.times_ms += kind == "ms"
            stats.times_iso += kind == "iso"
    return sorted(found.values(), key=lambda s: (-s.present, s.name))


def _named(stats: Sequence[FieldStats], names: Sequence[str], common: int) -> FieldStats | None:
    by_name = {s.name.lower(): s for s in stats if s.present >= common}
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


def _data_field(stats: Sequence[FieldStats], total: int) -> FieldStats | None:
    """The field most often holding a JSON object, if it does in at least half the entries."""
    objects = [s for s in stats if s.json_objects * 2 >= max(total, 1) and s.json_objects]
    objects.sort(
        key=lambda s: (-s.json_objects, s.name.lower() not in DATA_NAMES, -s.present, s.name)
    )
    return objects[0] if objects else None


def propose(
    entries: Sequence[Mapping[bytes, bytes]], *, extras_prefix: str = DEFAULT_PREFIX
) -> Proposal:
    """A layout for entries like ``entries`` (see the module docstring). Never raises."""
    foreign = [e for e in entries if NATIVE_MARKER not in e]
    native = len(entries) - len(foreign)
    stats = _stats(foreign, extras_prefix)
    total = len(foreign)
    common = max(1, math.ceil(total * MOST))
    notes: list[str] = []
    taken: set[str] = set()

    data = _data_field(stats, total)
    if data is not None:
        taken.add(data.name)
    else:
        notes.append("no field holds a JSON object: flat layout (the other fields are the data)")

    def pick(names: Sequence[str]) -> FieldStats | None:
        found = _named([s for s in stats if s.name not in taken], names, common)
        if found is not None:
            taken.add(found.name)
        return found

    kind = pick(TYPE_NAMES)
    if kind is None and total:
        notes.append("no type field found (looked for " + ", ".join(TYPE_NAMES) + ")")
    ident = pick(ID_NAMES)
    when_candidates = [
        s for s in stats if s.name not in taken and s.times_ms + s.times_iso >= common
    ]
    when = _named(when_candidates, TIME_NAMES, common)
    if when is not None:
        taken.add(when.name)
    candidates = [
        s.name
        for s in stats
        if s.name not in taken
        and s.present >= common
        and (s.name.lower() == "key" or s.name.lower().endswith("_id"))
    ]
    key = candidates[0] if candidates and data is not None else None
    if candidates and data is None:
        notes.append(
            "key candidates " + ", ".join(candidates) + " left out: in a flat layout a key field "
            "leaves the data object (give --key-field to choose one anyway)"
        )
    layout = StreamLayout(
        type=None if kind is None else kind.name,
        data=None if data is None else data.name,
        key=key,
        id=None if ident is None else ident.name,
        time=None if when is None else when.name,
        time_format="ms" if when is not None and when.times_ms > when.times_iso else "iso",
        extras_prefix=extras_prefix,
    )
    return Proposal(layout, total, native, stats, candidates, notes)


def fits(layout: StreamLayout, fields: Mapping[bytes, bytes]) -> str | None:
    """Why an entry would not fit ``layout`` (None: it fits, or it is in eventbus's format)."""
    if NATIVE_MARKER in fields:
        return None
    if layout.type is not None and layout.type.encode() not in fields:
        return f"no field {layout.type!r}"
    if layout.data is not None:
        value = fields.get(layout.data.encode())
        if value is None:
            return f"no field {layout.data!r}"
        try:
            json.loads(value)
        except ValueError:
            return f"{layout.data!r} is not JSON"
    if layout.time is not None:
        value = fields.get(layout.time.encode())
        if value is not None and _time_kind(value) is None:
            return f"{layout.time!r} is not a time"
    return None
