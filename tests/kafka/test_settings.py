"""KafkaSettings from URLs and options, and the commit-metadata codec (no broker needed)."""

from __future__ import annotations

import asyncio

import pytest

from eventbus.adapters.kafka import CAPABILITIES, KafkaSettings, KafkaTransport
from eventbus.adapters.kafka._admin import _group_partition
from eventbus.adapters.kafka._metadata import decode_metadata, encode_metadata
from eventbus.adapters.kafka._producer import _Batch, _Completions
from eventbus.errors import ConfigurationError
from eventbus.transport import Position


def test_plain_url_with_several_brokers() -> None:
    s = KafkaSettings.from_url("kafka://h1:9092,h2:9093", {})
    assert s.bootstrap_servers == "h1:9092,h2:9093"
    assert s.auto_create is False
    assert s.config == {}
    assert s.base_config()["bootstrap.servers"] == "h1:9092,h2:9093"


def test_sasl_scram_over_tls_from_userinfo_and_query() -> None:
    url = (
        "kafka://alice:s3cr%40t@broker:9093?security_protocol=SASL_SSL"
        "&sasl_mechanism=SCRAM-SHA-512&ssl_ca_location=/etc/ca.pem"
    )
    s = KafkaSettings.from_url(url, {})
    assert s.config["sasl.username"] == "alice"
    assert s.config["sasl.password"] == "s3cr@t"
    assert s.config["security.protocol"] == "SASL_SSL"
    assert s.config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert s.config["ssl.ca.location"] == "/etc/ca.pem"
    text = repr(s) + str(s) + s.display
    assert "s3cr" not in text
    assert "***" in repr(s)


def test_userinfo_alone_means_sasl_plain() -> None:
    s = KafkaSettings.from_url("redpanda://bob:pw@rp:9092", {})
    assert s.scheme == "redpanda"
    assert s.config["security.protocol"] == "SASL_PLAINTEXT"
    assert s.config["sasl.mechanism"] == "PLAIN"


def test_options_override_query_and_pass_librdkafka_config_through() -> None:
    s = KafkaSettings.from_url(
        "kafka://h:1?auto_create=false&connect_timeout=9",
        {"auto_create": True, "config": {"ssl.key.password": "k", "linger.ms": 20}},
    )
    assert s.auto_create is True
    assert s.connect_timeout == 9.0
    assert s.config["linger.ms"] == "20"
    assert "'k'" not in repr(s)
    t = KafkaTransport.from_url("kafka://h:1?auto_create=true", {})
    assert t.capabilities.auto_create_topics is True
    assert CAPABILITIES.auto_create_topics is False


@pytest.mark.parametrize(
    "url",
    ["kafka://", "kafka://h:1?auto_create=maybe", "kafka://h:1?connect_timeout=-1", "redis://h:1"],
)
def test_bad_urls_raise_configuration_error_without_secrets(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        KafkaSettings.from_url(url.replace("://", "://u:hunter2@", 1) if "h:1" in url else url)
    assert "hunter2" not in str(info.value)


def test_capabilities_are_what_kafka_can_do() -> None:
    c = CAPABILITIES
    assert c.transport == "kafka"
    assert not c.native_delivery_count and not c.redelivery_on_timeout
    assert c.timestamp_replay and c.retention_by_time and c.retention_by_size and c.compaction
    assert not c.transactions and not c.reset_active_group and not c.atomic_dead_letter
    assert c.max_event_bytes == 1_048_576


def test_commit_metadata_round_trip_and_foreign_metadata() -> None:
    text = encode_metadata(120, {100: 3, 101: 1, 105: 2})
    assert text == "eb1 120 100:3,105:2"
    assert decode_metadata(text) == (120, {100: 3, 105: 2})
    assert decode_metadata(encode_metadata(7, {})) == (7, {})
    assert decode_metadata("") == (-1, {})
    assert decode_metadata("written by someone else") == (-1, {})
    assert decode_metadata("eb1 x 1:2") == (-1, {})
    many = encode_metadata(10**12, {10**11 + i: 2 for i in range(2000)})
    assert len(many) <= 4096


@pytest.mark.parametrize(
    ("committed", "metadata", "delivered", "lowest_pending"),
    [
        (None, None, None, None),  # nothing committed: nothing known delivered
        (0, "", None, None),  # at the start, nothing delivered
        (5, None, 4, None),  # no metadata: what is below committed was delivered and done
        (5, "someone else's", 4, None),  # foreign metadata says nothing more
        (5, "eb1 5", 4, None),  # ours, nothing delivered beyond committed
        (5, "eb1 3", 4, None),  # stale high (e.g. after a reset) never lowers delivered
        (5, "eb1 9 5:2", 8, 5),  # 5-8 delivered, 5 not acked (acks above it unknown)
        (0, "eb1 1", 0, 0),
    ],
)
def test_group_positions_from_commit_metadata(
    committed: int | None,
    metadata: str | None,
    delivered: int | None,
    lowest_pending: int | None,
) -> None:
    part = _group_partition("t", 0, committed, metadata, marks=None)
    assert (part.committed, part.delivered, part.lowest_pending) == (
        committed,
        delivered,
        lowest_pending,
    )
    if delivered is not None:  # what the migration counts as finished is really finished
        done = [
            o
            for o in range(12)
            if o <= delivered and (lowest_pending is None or o < lowest_pending)
        ]
        assert done == list(range(min(committed or 0, delivered + 1)))


@pytest.mark.parametrize(
    "url",
    [
        "kafka://h1:9092,h2",  # a broker of a list without a port
        "kafka://h1:9092,h2:x",
        "kafka://h1:9092,:9093",
        "kafka://h1:notaport",  # a single broker: checked by eventbus._urls.split
        "kafka://u:hunter2@h1:9092,h2:99999x",
    ],
)
def test_each_broker_of_a_list_needs_host_and_port(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"host:port|malformed") as info:
        KafkaSettings.from_url(url)
    assert "hunter2" not in str(info.value)


def test_broker_list_through_the_registry() -> None:
    import eventbus

    bus = eventbus.connect_async("kafka://u:p%40ss@h1:9092,h2:9093?connect_timeout=2")
    transport = bus.transport
    assert isinstance(transport, KafkaTransport)
    assert transport.settings.bootstrap_servers == "h1:9092,h2:9093"
    assert transport.settings.config["sasl.password"] == "p@ss"
    assert "p@ss" not in repr(transport) and "p%40ss" not in repr(transport)


class _Report:
    """A delivery report's message: partition and offset (None: stored, offset unknown)."""

    def __init__(self, partition: int, offset: int | None) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int | None:
        return self._offset


def test_a_record_stored_without_an_offset_is_not_returned_as_a_position() -> None:
    """librdkafka reports success with no offset when a resent request had been written;
    the publish must not return a position without an offset (it raises instead)."""
    loop = asyncio.new_event_loop()
    try:
        batch = _Batch(loop.create_future(), 3, _Completions())
        batch.delivered(0, None, _Report(1, 7))
        batch.delivered(1, None, _Report(1, None))
        batch.delivered(2, None, _Report(2, -1001))
        assert batch.unplaced == 2 and batch.remaining == 0
        assert [p for p in batch.positions if p is not None] == [Position(1, 7)]
    finally:
        loop.close()
