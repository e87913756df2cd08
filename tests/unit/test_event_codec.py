"""The envelope and codec: round trips, raw records, typed validation, reserved headers."""

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from eventbus import Event, JsonCodec
from eventbus.errors import ConfigurationError, SerializationError
from eventbus.event import decode_record, encode_event, new_event_id
from eventbus.transport import Position, Record, parse_offset


class Order(BaseModel):
    order_id: int
    total: float


def _record(out_value: bytes, headers: dict[str, bytes], key: bytes | None = None) -> Record:
    return Record("t", 0, 5, out_value, key, headers, 1_700_000_000_000)


def test_round_trip_keeps_envelope() -> None:
    event = Event(
        data=Order(order_id=1, total=2.5),
        key="k",
        type="OrderPlaced",
        source="svc",
        headers={"trace": "x"},
        schema_version=2,
    )
    out = encode_event(event, JsonCodec())
    back = decode_record(_record(out.value, dict(out.headers), out.key), JsonCodec(), Order)
    assert back.id == event.id and back.key == "k" and back.type == "OrderPlaced"
    assert back.source == "svc" and back.headers == {"trace": "x"} and back.schema_version == 2
    assert back.data == Order(order_id=1, total=2.5)
    assert back.time == event.time
    assert out.timestamp_ms == int(event.time.timestamp() * 1000)


def test_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(100)]
    assert all(i[14] == "7" for i in ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)
    assert len(set(ids)) == 100


def test_reserved_header_prefix_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="reserved"):
        encode_event(Event(data=1, headers={"eb-id": "x"}), JsonCodec())


def test_raw_record_decodes_as_raw_event() -> None:
    event = decode_record(_record(b'{"a": "b"}', {}), JsonCodec())
    assert event.id == "t/0/5" and event.type is None and event.data == {"a": "b"}
    assert event.time == datetime.fromtimestamp(1_700_000_000, UTC)
    binary = decode_record(_record(b"\xff\x00", {}), JsonCodec())
    assert binary.data == b"\xff\x00"


def test_raw_record_refused_for_typed_subscriber() -> None:
    with pytest.raises(SerializationError, match="not written by eventbus"):
        decode_record(_record(b"{}", {}), JsonCodec(), Order)


def test_invalid_payload_reports_validation_errors() -> None:
    out = encode_event(Event(data={"order_id": "x"}), JsonCodec())
    with pytest.raises(SerializationError, match="does not validate as Order") as info:
        decode_record(_record(out.value, dict(out.headers)), JsonCodec(), Order)
    assert "order_id" in str(info.value)


def test_corrupt_eventbus_value_is_a_serialization_error() -> None:
    out = encode_event(Event(data=1), JsonCodec())
    with pytest.raises(SerializationError, match="does not decode"):
        decode_record(_record(b"{not json", dict(out.headers)), JsonCodec())


def test_unencodable_data() -> None:
    with pytest.raises(SerializationError, match="cannot encode"):
        encode_event(Event(data=object()), JsonCodec())


def test_positions_parse_and_print() -> None:
    assert str(Position(2, 41)) == "2:41"
    assert Position.parse("2:41") == Position(2, 41)
    assert Position.parse("0:1700000000000-3") == Position(0, "1700000000000-3")
    assert parse_offset("17") == 17
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        Position.parse("nope")
