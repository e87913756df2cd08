"""URL helpers: scheme lookup and redaction. Nothing here ever returns a password."""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

__all__ = ["query_options", "redact", "split"]


def split(url: str) -> SplitResult:
    """Split a transport URL; raises ConfigurationError (with the URL redacted) when malformed."""
    from eventbus.errors import ConfigurationError

    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # a broker list (kafka://h1:9092,h2:9092) has no one port
            _ = parts.port  # validates the port
    except ValueError as exc:
        raise ConfigurationError(
            f"malformed URL {redact(url)!r}: {exc}; expected scheme://[user:password@]host:port"
        ) from None
    if not parts.scheme or "://" not in url:
        raise ConfigurationError(
            f"URL {redact(url)!r} has no scheme: start it with memory://, redis://, rediss://, "
            "kafka:// or redpanda://"
        )
    return parts


def redact(url: str) -> str:
    """The URL with any password (and password-like query values) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _pw = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if sep else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            secret = any(s in key.lower() for s in ("password", "secret", "token", "key_pass"))
            pairs.append(f"{key}={'***' if secret else value}")
        query = "&".join(pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def query_options(parts: SplitResult) -> dict[str, str]:
    """Query parameters as a dict (last one wins)."""
    return dict(parse_qsl(parts.query, keep_blank_values=True))
