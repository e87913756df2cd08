"""The ``migrate://`` URL and its options (see ``MigrationTransport``), and what the
migration transport can promise (what both sides can)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from eventbus._urls import query_options, split
from eventbus.errors import ConfigurationError
from eventbus.migration.journal import JOURNAL_LIMIT
from eventbus.transport import Capabilities

__all__ = ["combine", "parse_url"]


def combine(a: Capabilities, b: Capabilities) -> Capabilities:
    """What holds on both sides: a flag is true only if it is true on each."""
    flags = {
        f.name: getattr(a, f.name) and getattr(b, f.name)
        for f in dataclasses.fields(Capabilities)
        if f.type in ("bool", bool)
    }
    return dataclasses.replace(
        a,
        transport=f"migrate({a.transport}->{b.transport})",
        max_event_bytes=min(a.max_event_bytes, b.max_event_bytes),
        **flags,
    )


_OPTIONS = {
    "source",
    "target",
    "poll_interval",
    "secondary_timeout",
    "auto_create",
    "journal_limit",
}


def _with(url: str, name: str, value: str) -> str:
    """``url`` with one more query option."""
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


def _seconds(opts: Mapping[str, Any], name: str, default: float) -> float:
    """A positive, finite number of seconds from the URL's options; ConfigurationError else."""
    value = opts.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (0 < number < math.inf):
        raise ConfigurationError(f"migrate:// option {name}={value!r}: give seconds > 0")
    return number


def parse_url(url: str, options: Mapping[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """(name, source URL, target URL, settings of ``MigrationTransport.create``) from a
    ``migrate://`` URL and its options; ConfigurationError for what is missing or unknown."""
    parts = split(url)
    opts = {**query_options(parts), **options}
    name = parts.netloc or parts.path.strip("/")
    source_url = unquote(str(opts.get("source", "")))
    target_url = unquote(str(opts.get("target", "")))
    if not name or not source_url or not target_url:
        raise ConfigurationError(
            "migrate:// needs a name, a source and a target: "
            "migrate://NAME?source=<url-encoded URL>&target=<url-encoded URL>"
        )
    unknown = sorted(set(opts) - _OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"migrate:// does not know the option(s) {', '.join(unknown)}; its options are "
            f"{', '.join(sorted(_OPTIONS))} (a side's own options go in its URL)"
        )
    if "auto_create" in opts:  # a setting of both sides, as if given in each side's URL
        flag = str(opts["auto_create"])
        source_url, target_url = (_with(u, "auto_create", flag) for u in (source_url, target_url))
    settings = {
        "poll_interval": _seconds(opts, "poll_interval", 1.0),
        "secondary_timeout": _seconds(opts, "secondary_timeout", 5.0),
        "journal_limit": int(_seconds(opts, "journal_limit", JOURNAL_LIMIT)),
    }
    return name, source_url, target_url, settings
