"""Kafka settings: one frozen object built from a ``kafka://`` / ``redpanda://`` URL.

URL form::

    kafka://[user:password@]host:port[,host:port...][?option=value&...]

Query options (and the same keys in the ``options`` mapping given to ``from_url``):

- ``auto_create=true``: publishing to an unknown topic creates it (1 partition).
- ``connect_timeout=5``: seconds ``connect()`` and metadata look-ups wait for the cluster.
- ``client_id=name``: the client id the broker logs.
- ``envelope=eventbus|cloudevents|cloudevents-structured``: how published events are laid out
  (default ``eventbus``: ``eb-`` headers; ``cloudevents``: CloudEvents Kafka binding, binary
  content mode; ``cloudevents-structured``: structured content mode). Reading accepts all
  three whatever this says. See ``_cloudevents``.
- ``ce_source=/eventbus``: the CloudEvents ``source`` of events published without one.
- anything else is a librdkafka setting, with ``_`` or ``.`` between words, for example
  ``security_protocol=SASL_SSL``, ``sasl_mechanism=SCRAM-SHA-512``,
  ``ssl_ca_location=/etc/ca.pem``. ``options["config"]`` (a mapping) passes librdkafka settings
  through verbatim.

User info in the URL sets ``sasl.username`` / ``sasl.password``; without an explicit
``security_protocol`` it implies ``SASL_PLAINTEXT`` and ``sasl_mechanism=PLAIN``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from eventbus._urls import flag, query_options, redact, split
from eventbus.adapters.kafka._cloudevents import DEFAULT_SOURCE, ENVELOPES, check_source
from eventbus.errors import ConfigurationError

__all__ = ["KafkaSettings"]

_LIBRDKAFKA_LOG = logging.getLogger("eventbus.kafka.librdkafka")
"""librdkafka's own log lines go here (not to stderr). They propagate to the application's
handlers; the NullHandler keeps Python's last-resort handler from printing them to stderr
when the application configured no logging (a broker that is down logs a line per retry)."""
_LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
_SECRET_WORDS = ("password", "secret", "token", "jaas")
_OWN_KEYS = {"auto_create", "connect_timeout", "client_id", "config", "envelope", "ce_source"}


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_WORDS)


def _float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"option {name}={value!r} is not a number of seconds") from None
    if not number > 0 or math.isinf(number):  # NaN fails the first test
        raise ConfigurationError(f"option {name} must be a positive number, got {value!r}")
    return number


def _envelope(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ENVELOPES:
        raise ConfigurationError(
            f"option envelope={value!r} is not an envelope: use one of {', '.join(ENVELOPES)}"
        )
    return text


def _librdkafka_key(key: str) -> str:
    return key.replace("_", ".")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Everything the Kafka transport needs; ``repr`` never shows a password or secret."""

    bootstrap_servers: str
    """Comma-separated ``host:port`` list."""
    scheme: str = "kafka"
    """``kafka`` or ``redpanda`` (the same protocol; kept for messages and docs)."""
    auto_create: bool = False
    connect_timeout: float = 5.0
    client_id: str = "eventbus"
    config: Mapping[str, str] = field(default_factory=dict)
    """librdkafka settings given by the user (security, SASL, TLS, tuning), applied last."""
    envelope: str = "eventbus"
    """How published events are laid out: ``eventbus``, ``cloudevents`` (binary content mode)
    or ``cloudevents-structured``."""
    ce_source: str = DEFAULT_SOURCE
    """The CloudEvents ``source`` of events published without one."""

    def __repr__(self) -> str:
        shown = {k: ("***" if _is_secret(k) else v) for k, v in self.config.items()}
        return (
            f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, scheme={self.scheme!r}, "
            f"auto_create={self.auto_create!r}, connect_timeout={self.connect_timeout!r}, "
            f"client_id={self.client_id!r}, config={shown!r}, envelope={self.envelope!r}, "
            f"ce_source={self.ce_source!r})"
        )

    __str__ = __repr__

    @property
    def display(self) -> str:
        """A printable description of where this connects (no credentials)."""
        return f"{self.scheme}://{self.bootstrap_servers}"

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> KafkaSettings:
        """Parse a ``kafka://`` or ``redpanda://`` URL plus options (options win).

        Raises ConfigurationError (with the URL redacted) for a malformed URL or option."""
        parts = split(url)  # accepts broker lists; checks the port of a single broker
        scheme = parts.scheme.lower()
        if scheme not in ("kafka", "redpanda"):
            raise ConfigurationError(
                f"{redact(url)!r} is not a Kafka URL: use kafka://host:port or redpanda://host:port"
            )
        netloc = parts.netloc
        userinfo, _, hosts = netloc.rpartition("@")
        if not hosts:
            raise ConfigurationError(
                f"{redact(url)!r} names no broker: use {scheme}://host:port[,host:port...]"
            )
        for hostport in hosts.split(","):  # split() does not check each broker of a list
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigurationError(
                    f"{redact(url)!r}: {hostport!r} is not host:port; use "
                    f"{scheme}://host:port[,host:port...]"
                )
        merged: dict[str, Any] = {**query_options(parts), **dict(options or {})}
        config: dict[str, str] = {}
        if userinfo:
            user, _, password = userinfo.partition(":")
            config["sasl.username"] = unquote(user)
            config["sasl.password"] = unquote(password)
            config["security.protocol"] = "SASL_PLAINTEXT"
            config["sasl.mechanism"] = "PLAIN"
        for key, value in merged.items():
            if key not in _OWN_KEYS:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                config[_librdkafka_key(key)] = text
        passthrough = merged.get("config") or {}
        if not isinstance(passthrough, Mapping):
            raise ConfigurationError("options['config'] must be a mapping of librdkafka settings")
        for key, value in passthrough.items():
            config[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
        return cls(
            bootstrap_servers=hosts,
            scheme=scheme,
            auto_create=flag("auto_create", merged.get("auto_create", False)),
            connect_timeout=_float("connect_timeout", merged.get("connect_timeout", 5.0)),
            client_id=str(merged.get("client_id", "eventbus")),
            config=config,
            envelope=_envelope(merged.get("envelope", "eventbus")),
            ce_source=check_source(merged.get("ce_source", DEFAULT_SOURCE)),
        )

    def base_config(self) -> dict[str, Any]:
        """The librdkafka settings every client of this transport shares."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "socket.connection.setup.timeout.ms": max(1000, int(self.connect_timeout * 1000)),
            "logger": _LIBRDKAFKA_LOG,
            **self.config,
        }
