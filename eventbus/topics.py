"""Topic specs and the plan/apply diff between what is wanted and what a server has.

A :class:`TopicSpec` is the same on every transport. :func:`plan` compares specs with the
topics a server reports and returns the changes; the bus's ``apply`` makes them, and applying
the same specs twice changes nothing the second time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "FOREVER",
    "Change",
    "Plan",
    "StreamLayout",
    "TopicSpec",
    "parse_duration_ms",
    "parse_size",
    "plan",
]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_SIZE = re.compile(r"^\s*(\d+)\s*(?:([KMGT])(i)?B?|B)?\s*$", re.IGNORECASE)
_POWER = {"K": 1, "M": 2, "G": 3, "T": 4}
FOREVER = "forever"
"""A retention (``retention: forever``, ``--retention forever``): keep events until deleted,
the same as ``None``."""


def parse_duration_ms(value: str | int) -> int:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"500ms"`` or an int of ms, to milliseconds.

    Raises ValueError with the accepted forms."""
    if isinstance(value, int):
        return value
    match = _DURATION.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a duration: use a number with ms, s, m, h, d or w (e.g. 7d)"
        )
    return int(match.group(1)) * _UNIT_MS[match.group(2) or "ms"]


def parse_size(value: str | int) -> int:
    """A byte size: an int, or a number with a unit, case-insensitive.

    Binary (IEC) units are powers of 1024: ``KiB``, ``MiB``, ``GiB``, ``TiB`` (also ``Ki``,
    ``Mi``...). Decimal (SI) units are powers of 1000: ``KB``, ``MB``, ``GB``, ``TB`` (also
    ``K``, ``M``...), as in pydantic's ``ByteSize``. ``B`` or no unit: bytes.
    Raises ValueError with the accepted forms."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a size: use bytes or a number with a unit: KiB, MiB, GiB "
            "(1024^n) or KB, MB, GB (1000^n), e.g. 512KiB or 1GB"
        )
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(number) * base ** _POWER[unit.upper()] if unit else int(number)


_LAYOUT_FIELDS = ("type", "data", "key", "id", "time")
_NATIVE_FIELDS = ("_eb", "_k", "_v")


class StreamLayout(BaseModel):
    """How the entries of a Redis stream shared with services that do not use eventbus map to
    an event: which entry field holds the type, the data, the key, the id and the time.

    Set as ``TopicSpec.layout`` (or proposed by ``eventbus topics adopt``), it makes eventbus
    write entries in the fields those services read and read theirs as events. Example: the
    entries of ``XADD tasks * type TaskCreated payload {"task_id":1}`` fit
    ``StreamLayout(type="type", data="payload")``.

    * ``type``: the field holding the event type (``None``: no type field).
    * ``data``: the field holding the data as JSON. ``None`` makes the layout *flat*: the
      fields no other setting names form the data object (values as strings); eventbus then
      writes a dict's items as fields (strings as they are, other values as JSON).
    * ``key``, ``id``, ``time``: the fields holding the key, the event id and the time
      (epoch milliseconds or ISO 8601 on read; written as ``time_format`` says).
    * ``extras_prefix``: eventbus keeps the rest of its envelope (headers no setting names,
      the key when ``key`` is unset, a marker) in fields with this prefix, which other
      readers can ignore.

    An entry with no ``id`` field gets a deterministic id, the same on every read: a UUIDv5
    of the topic and the entry id (see ``eventbus.adapters.redis_streams._layout_codec``).
    The layout needs the JSON codec. Raises ValueError when two settings name the same field,
    a name is empty or starts with ``extras_prefix``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str | None = None
    data: str | None = None
    key: str | None = None
    id: str | None = None
    time: str | None = None
    time_format: Literal["iso", "ms"] = "iso"
    """How eventbus writes ``time``: ISO 8601 (``2024-05-01T12:00:00.123000+00:00``) or epoch
    milliseconds (``1714564800123``). Reading accepts both."""
    extras_prefix: str = "_eb."

    @model_validator(mode="after")
    def _check(self) -> StreamLayout:
        prefix = self.extras_prefix
        if not prefix:
            raise ValueError(
                "extras_prefix is empty: eventbus needs a prefix for the fields it keeps for "
                "itself (the default is '_eb.')"
            )
        if prefix in _NATIVE_FIELDS:
            raise ValueError(
                f"extras_prefix {prefix!r} is a field of eventbus's own entry format; use "
                "another prefix, such as '_eb.'"
            )
        seen: dict[str, str] = {}
        for setting in _LAYOUT_FIELDS:
            name = getattr(self, setting)
            if name is None:
                continue
            if not name:
                raise ValueError(
                    f"layout field {setting!r} is empty: name an entry field, or leave it out"
                )
            if name in seen:
                raise ValueError(
                    f"layout fields {seen[name]!r} and {setting!r} both name the entry field "
                    f"{name!r}: each field can hold one thing"
                )
            if name.startswith(prefix):
                raise ValueError(
                    f"layout field {setting!r} = {name!r} starts with extras_prefix "
                    f"{prefix!r}, where eventbus keeps its own fields: rename one of them"
                )
            if name in _NATIVE_FIELDS:
                raise ValueError(
                    f"layout field {setting!r} = {name!r} is a field of eventbus's own entry "
                    "format; a layout cannot use it"
                )
            seen[name] = setting
        return self

    def mapped(self) -> dict[str, str]:
        """Entry field -> setting (``type``, ``data``, ``key``, ``id``, ``time``) it holds."""
        return {
            name: setting
            for setting in _LAYOUT_FIELDS
            if (name := getattr(self, setting)) is not None
        }


class TopicSpec(BaseModel):
    """What a topic should look like, on any transport.

    ``retention_ms`` / ``retention_bytes`` of ``None`` keep events until deleted (or the
    server's default on Kafka); ``retention_bytes`` is per partition, as on Kafka.
    ``dead_letter`` and ``groups`` document intent for tooling; the server does not store them.
    ``layout`` declares how a Redis stream shared with non-eventbus services maps to events
    (see :class:`StreamLayout`); transports whose ``Capabilities.stream_layout`` is false
    (Kafka) accept and ignore it. A spec without one keeps the layout a topic has.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    partitions: int = Field(default=1, ge=1, le=10_000)
    retention_ms: int | None = Field(default=None, ge=1)
    retention_bytes: int | None = Field(default=None, ge=1)
    max_event_bytes: int = Field(default=1_048_576, ge=1)
    cleanup_policy: Literal["delete", "compact"] = "delete"
    dead_letter: str | None = None
    groups: tuple[str, ...] = ()
    config: dict[str, str] = Field(default_factory=dict)
    layout: StreamLayout | None = None

    @field_validator("name", "dead_letter")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid topic name: use 1-249 characters from letters, "
                "digits, '.', '_' and '-'"
            )
        return value

    @field_validator("retention_ms", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == FOREVER:
            return None
        return parse_duration_ms(value) if isinstance(value, str) else value

    @field_validator("retention_bytes", "max_event_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("config", mode="before")
    @classmethod
    def _config_strings(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()
            }
        return value


Action = Literal["create", "update", "delete"]
_COMPARED = ("partitions", "retention_ms", "retention_bytes", "max_event_bytes", "cleanup_policy")


@dataclass(frozen=True)
class Change:
    """One change a plan makes: what, to which topic, each field's (actual, desired)."""

    action: Action
    topic: str
    fields: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    destructive: bool = False
    warnings: tuple[str, ...] = ()
    spec: TopicSpec | None = None

    def describe(self) -> str:
        if self.action != "update":
            return f"{self.action} {self.topic}"
        parts = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in self.fields.items())
        return f"update {self.topic} ({parts})"


@dataclass(frozen=True)
class Plan:
    """The changes that make a server match a set of specs. Empty means nothing to do."""

    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def destructive(self) -> bool:
        return any(c.destructive for c in self.changes)

    def __bool__(self) -> bool:
        return bool(self.changes)


def _diff(actual: TopicSpec, desired: TopicSpec, stores_layout: bool) -> Change | None:
    fields: dict[str, tuple[Any, Any]] = {}
    for name in _COMPARED:
        want = getattr(desired, name)
        have = getattr(actual, name)
        if name.startswith("retention") and want is None:
            continue  # not given: keep whatever the server has
        if want != have:
            fields[name] = (have, want)
    for key, want in desired.config.items():
        if actual.config.get(key) != want:
            fields[f"config.{key}"] = (actual.config.get(key), want)
    if stores_layout and desired.layout is not None and desired.layout != actual.layout:
        fields["layout"] = (
            None if actual.layout is None else actual.layout.model_dump(exclude_defaults=True),
            desired.layout.model_dump(exclude_defaults=True),
        )
    if not fields:
        return None
    warnings: list[str] = []
    destructive = False
    if "partitions" in fields:
        have, want = fields["partitions"]
        if want < have:
            destructive = True
            warnings.append(
                f"{desired.name}: partitions cannot shrink ({have} -> {want}); recreate the "
                "topic (deleting its events) to change this"
            )
        else:
            warnings.append(
                f"{desired.name}: adding partitions ({have} -> {want}) moves existing keys to "
                "other partitions; per-key order across the change is not kept"
            )
    if "cleanup_policy" in fields:
        destructive = True
        warnings.append(f"{desired.name}: changing the cleanup policy changes what is retained")
    if "layout" in fields:
        warnings.append(
            f"{desired.name}: the layout decides the fields new entries are written in and how "
            "every entry is read; services reading the stream directly must expect them"
        )
    return Change("update", desired.name, fields, destructive, tuple(warnings), desired)


def plan(
    actual: Mapping[str, TopicSpec],
    desired: Iterable[TopicSpec],
    *,
    delete_missing: bool = False,
    stores_layout: bool = True,
) -> Plan:
    """Changes that take topics from ``actual`` (name -> spec read back) to ``desired``.

    With ``delete_missing``, topics in ``actual`` but not in ``desired`` are deleted
    (destructive). ``stores_layout`` (the transport's ``Capabilities.stream_layout``) false
    leaves layouts out of the comparison (a transport that ignores them reports none), and a
    desired spec without a layout never removes one. Raises ValueError when ``desired`` names
    a topic twice."""
    changes: list[Change] = []
    seen: set[str] = set()
    for spec in desired:
        if spec.name in seen:
            raise ValueError(f"topic {spec.name!r} is specified twice; keep one entry")
        seen.add(spec.name)
        current = actual.get(spec.name)
        if current is None:
            changes.append(Change("create", spec.name, spec=spec))
        elif (change := _diff(current, spec, stores_layout)) is not None:
            changes.append(change)
    if delete_missing:
        for name in sorted(set(actual) - seen):
            changes.append(Change("delete", name, destructive=True))
    return Plan(tuple(changes))
