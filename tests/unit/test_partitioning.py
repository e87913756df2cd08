"""Kafka's Java-client key hash, pinned with Kafka's and librdkafka's own test vectors."""

import pytest

from eventbus import partition_for_key
from eventbus.partitioning import murmur2

JAVA_SIGNED = [
    ("21", -973932308),
    ("foobar", -790332482),
    ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107),
]
LIBRDKAFKA_UNSIGNED = [
    ("kafka", 0xD067CF64),
    ("giberish123456789", 0x8F552B0C),
    ("1234", 0x9FC97B14),
    ("234", 0xE7C009CA),
    ("34", 0x873930DA),
    ("4", 0x5A4B5CA1),
    ("PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424F1C),
    ("", 0x106E08D9),
]


@pytest.mark.parametrize(("key", "expected"), JAVA_SIGNED)
def test_java_vectors(key: str, expected: int) -> None:
    value = murmur2(key.encode())
    signed = value - (1 << 32) if value >= 1 << 31 else value
    assert signed == expected


@pytest.mark.parametrize(("key", "expected"), LIBRDKAFKA_UNSIGNED)
def test_librdkafka_vectors(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


@pytest.mark.parametrize(
    ("key", "counts", "expected"),
    [
        ("21", (3, 6, 12), (0, 0, 0)),
        ("foobar", (3, 6, 12), (0, 0, 6)),
        ("abc", (3, 6, 12), (0, 3, 3)),
    ],
)
def test_positive_mask_not_abs(
    key: str, counts: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    assert tuple(partition_for_key(key, n) for n in counts) == expected


def test_kafka_key_and_bytes_equal_str() -> None:
    assert partition_for_key("kafka", 12) == 4
    assert partition_for_key("é", 7) == partition_for_key("é".encode(), 7)


def test_partitions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition_for_key("a", 0)
