"""URL helpers: scheme lookup, redaction and option values. Nothing here ever returns a
password."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from eventbus.errors import ConfigurationError

__all__ = ["flag", "query_options", "redact", "split"]


def split(url: str) -> SplitResult:
    """Split a transport URL; raises ConfigurationError (with the URL redacted) when malformed."""
    from eventbus.errors import ConfigurationError

    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # a broker list (kafka://h1:9092,h2:9092) has no one port
            _ = parts.port  # validates the port
    except ValueError as exc:
        # urllib's text may quote the host part (and with it a password): say it in our words
        text = str(exc)
        reason = (
            "the port must be a number from 0 to 65535"
            if "out of range" in text
            else "the port is not a number"
            if "Port" in text
            else "it cannot be parsed"
        )
        raise ConfigurationError(
            f"malformed URL {redact(url)!r}: {reason}; expected "
            "scheme://[user:password@]host:port (percent-encode '@', ':', '/', '?', '#' in "
            "passwords)"
        ) from None
    if not parts.scheme or "://" not in url or "@" in parts.fragment or "@" in parts.query:
        raise ConfigurationError(
            f"URL {redact(url)!r} is not of the form scheme://[user:password@]host:port: start "
            "it with memory://, redis://, rediss://, kafka:// or redpanda:// and percent-encode "
            "'@', ':', '/', '?' and '#' in passwords"
        )
    return parts


_SECRET_PARAM = re.compile(r"(?i)((?:password|secret|token|key_pass)[^=&?#/]*=)[^&#]*")
_PARAM = re.compile(r"([?&][^=&#]*=)([^&#]*)")


def _redact_nested(url: str) -> str:
    """Percent-encoded URLs in query values (``migrate://m?source=redis%3A%2F%2Fu%3Apw%40h``)
    redacted too, and kept encoded."""

    def one(match: re.Match[str]) -> str:
        value = unquote(match.group(2))
        if "://" not in value or "@" not in value:
            return match.group(0)
        return match.group(1) + quote(redact(value), safe=":/*,")

    return _PARAM.sub(one, url)


def redact(url: str) -> str:
    """The URL with any password (and password-like query values) replaced by ``***``, also
    in URLs nested in its query (percent-encoded, as ``migrate://`` takes them).

    Works on malformed URLs too: everything between the user name and the last ``@`` is
    treated as the password, and with no ``://`` everything before the last ``@`` is hidden."""
    url = _redact_nested(url)
    at = url.rfind("@")
    if at >= 0:
        prefix, rest = url[:at], url[at:]
        head, sep, userinfo = prefix.partition("://")
        if sep:
            user, colon, _pw = userinfo.partition(":")
            url = f"{head}://{user}{':***' if colon else ''}{rest}"
        else:
            url = "***" + rest
    # password-like parameters, wherever they stand (even in a malformed query)
    return _SECRET_PARAM.sub(r"\1***", url)


def query_options(parts: SplitResult) -> dict[str, str]:
    """Query parameters as a dict (last one wins)."""
    return dict(parse_qsl(parts.query, keep_blank_values=True))


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def flag(name: str, value: Any) -> bool:
    """A boolean URL option (``?auto_create=true``): a bool as is, else true/false, 1/0,
    yes/no or on/off in any case (empty is false); raises ConfigurationError naming the
    option otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(
        f"option {name}={value!r} is not a boolean: use true or false (also accepted: "
        "1/0, yes/no, on/off)"
    )
