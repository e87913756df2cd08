"""The CloudEvents mapping of the Kafka adapter (``_cloudevents``) and its URL options; no broker.

Records go eventbus envelope -> CloudEvents (binary or structured) -> back, and records as a
Java / Dapr / Knative producer writes them are read as events. Malformed ones carry a
``decode_error`` that the core turns into SerializationError (so they are dead-lettered).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel

from eventbus import Event, JsonCodec
from eventbus.adapters.kafka import KafkaSettings
from eventbus.adapters.kafka._cloudevents import DEFAULT_SOURCE, DEFAULT_TYPE, from_kafka, writer
from eventbus.errors import ConfigurationError, SerializationError
from eventbus.event import decode_record, encode_event
from eventbus.transport import Outgoing, Record

pytestmark = pytest.mark.timeout(30)


class Order(BaseModel):
    order_id: int
    total: float


def _event(**changes: object) -> Event:
    fields: dict[str, object] = {
        "data": Order(order_id=7, total=2.5),
        "key": "customer-1",
        "type": "com.example.order.placed",
        "source": "/orders",
        "headers": {"trace": "abc", "ce_subject": "order-7"},
        "schema_version": 2,
        "time": datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def _encode(envelope: str, event: Event, source: str = DEFAULT_SOURCE) -> Outgoing:
    translate = writer(envelope, source)
    assert translate is not None
    [out] = translate([encode_event(event, JsonCodec())])
    return out


def _as_read(out: Outgoing, offset: int = 3) -> Record:
    return Record("orders", 1, offset, out.value, out.key, dict(out.headers), 1_777_000_000_000)


def _decoded(record: Record, model: type[BaseModel] | None = Order) -> Event:
    return decode_record(from_kafka(record), JsonCodec(), model)


def _same(back: Event, event: Event) -> None:
    assert (back.id, back.type, back.source, back.time, back.key) == (
        event.id,
        event.type,
        event.source,
        event.time,
        event.key,
    )
    assert back.headers == event.headers
    assert back.data == event.data
    assert back.schema_version == event.schema_version


# -- writing ---------------------------------------------------------------------------------


def test_eventbus_envelope_has_no_translation() -> None:
    assert writer("eventbus", DEFAULT_SOURCE) is None


def test_binary_mode_headers_value_and_key() -> None:
    event = _event()
    out = _encode("cloudevents", event)
    assert out.headers == {
        "ce_specversion": b"1.0",
        "ce_id": event.id.encode(),
        "ce_type": b"com.example.order.placed",
        "ce_source": b"/orders",
        "ce_time": b"2026-05-01T12:30:15.123456+00:00",
        "content-type": b"application/json",
        "ce_ebschema": b"2",
        "trace": b"abc",
        "ce_subject": b"order-7",
    }
    assert json.loads(out.value) == {"order_id": 7, "total": 2.5}  # the plain JSON data
    assert out.key == b"customer-1"
    assert out.timestamp_ms == int(event.time.timestamp() * 1000)


def test_defaults_for_events_without_type_or_source() -> None:
    out = _encode("cloudevents", Event(data={"n": 1}), source="/services/billing")
    assert out.headers["ce_type"] == DEFAULT_TYPE.encode()
    assert out.headers["ce_source"] == b"/services/billing"
    back = _decoded(_as_read(out), None)
    assert back.type == DEFAULT_TYPE and back.source == "/services/billing"
    model_event = encode_event(Event(data=Order(order_id=1, total=1)), JsonCodec())
    [named] = writer("cloudevents", DEFAULT_SOURCE)([model_event])  # type: ignore[misc]
    assert named.headers["ce_type"] == b"Order"  # as publish() names a model's events


def test_structured_mode_value_is_a_cloudevent() -> None:
    event = _event()
    out = _encode("cloudevents-structured", event)
    assert out.headers == {
        "content-type": b"application/cloudevents+json; charset=UTF-8",
        "trace": b"abc",
    }
    assert out.key == b"customer-1"
    assert json.loads(out.value) == {
        "specversion": "1.0",
        "id": event.id,
        "type": "com.example.order.placed",
        "source": "/orders",
        "time": "2026-05-01T12:30:15.123456+00:00",
        "datacontenttype": "application/json",
        "ebschema": "2",
        "subject": "order-7",
        "data": {"order_id": 7, "total": 2.5},
    }


class _Text:
    content_type = "text/plain; charset=utf-8"

    def encode(self, data: object) -> bytes:
        return str(data).encode()

    def decode(self, payload: bytes) -> object:
        return payload.decode()


def test_structured_mode_puts_non_json_data_in_data_base64() -> None:
    translate = writer("cloudevents-structured", DEFAULT_SOURCE)
    assert translate is not None
    [out] = translate([encode_event(Event(data="héllo"), _Text())])
    body = json.loads(out.value)
    assert body["datacontenttype"] == "text/plain; charset=utf-8"
    assert base64.b64decode(body["data_base64"]) == "héllo".encode()
    assert "data" not in body
    back = decode_record(from_kafka(_as_read(out)), _Text())
    assert back.data == "héllo"


def test_naive_times_are_written_with_an_offset() -> None:
    event = _event()
    out = encode_event(event, JsonCodec())
    headers = {**out.headers, "eb-time": b"2026-05-01T12:30:15"}
    [ce] = writer("cloudevents", DEFAULT_SOURCE)([Outgoing(out.value, None, headers)])  # type: ignore[misc]
    expected = datetime(2026, 5, 1, 12, 30, 15).astimezone(UTC)
    assert datetime.fromisoformat(ce.headers["ce_time"].decode()) == expected


def test_records_that_are_not_events_are_written_as_they_are() -> None:
    raw = Outgoing(b"not json", b"k", {"content-type": b"text/plain", "x": b"1"})
    for envelope in ("cloudevents", "cloudevents-structured"):
        translate = writer(envelope, DEFAULT_SOURCE)
        assert translate is not None
        assert translate([raw]) == [raw]


@pytest.mark.parametrize("envelope", ["cloudevents", "cloudevents-structured"])
@pytest.mark.parametrize("header", ["ce_id", "ce_type", "ce_ebschema", "content-type"])
def test_user_headers_that_would_replace_ce_headers_are_refused(envelope: str, header: str) -> None:
    event = _event()
    out = encode_event(event, JsonCodec())
    headers = {**out.headers, header: b"mine"}
    translate = writer(envelope, DEFAULT_SOURCE)
    assert translate is not None
    with pytest.raises(ConfigurationError, match=header):
        translate([Outgoing(out.value, out.key, headers)])


def test_an_empty_event_id_is_refused() -> None:
    out = encode_event(_event(id=""), JsonCodec())
    with pytest.raises(ConfigurationError, match="non-empty id"):
        writer("cloudevents", DEFAULT_SOURCE)([out])  # type: ignore[misc]


def test_eventbus_headers_without_an_extension_name_stay_as_they_are() -> None:
    out = encode_event(_event(), JsonCodec())
    headers = {**out.headers, "eb-future": b"x", "eb-dlq-reason": b"why"}
    for envelope in ("cloudevents", "cloudevents-structured"):
        [ce] = writer(envelope, DEFAULT_SOURCE)([Outgoing(out.value, out.key, headers)])  # type: ignore[misc]
        assert ce.headers["eb-future"] == b"x"
        back = from_kafka(_as_read(ce))
        assert back.headers["eb-future"] == b"x"
        assert back.headers["eb-dlq-reason"] == b"why"


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ["cloudevents", "cloudevents-structured"])
def test_round_trip_is_the_same_event(envelope: str) -> None:
    event = _event()
    back = _decoded(_as_read(_encode(envelope, event)))
    _same(back, event)


@pytest.mark.parametrize("envelope", ["cloudevents", "cloudevents-structured"])
def test_round_trip_of_other_offsets_and_data(envelope: str) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    for data in (None, [1, "two", {"three": 3.0}], "text", 42):
        event = _event(data=data, time=when, headers={}, schema_version=None)
        back = _decoded(_as_read(_encode(envelope, event)), None)
        _same(back, event)


def test_read_translation_gives_eventbus_headers() -> None:
    event = _event()
    expected = encode_event(event, JsonCodec())
    for envelope in ("cloudevents", "cloudevents-structured"):
        back = from_kafka(_as_read(_encode(envelope, event)))
        assert back.headers == dict(expected.headers)
        assert json.loads(back.value) == json.loads(expected.value)
        assert back.decode_error is None


# -- reading what others write ---------------------------------------------------------------


def test_reads_binary_mode_as_a_java_producer_writes_it() -> None:
    record = Record(
        "orders",
        0,
        12,
        b'{"order_id": 9, "total": 10.0}',
        b"customer-9",
        {
            "ce_specversion": b"1.0",
            "ce_id": b"A234-1234-1234",
            "ce_type": b"com.example.order.placed",
            "ce_source": b"https://example.com/orders",
            "ce_time": b"2018-04-05T17:31:00.123456789Z",
            "ce_subject": b"order-9",
            "ce_partitionkey": b"customer-9",
            "content-type": b"application/json",
            "traceparent": b"00-abc-def-01",
        },
        1_700_000_000_000,
    )
    event = _decoded(record)
    assert event.id == "A234-1234-1234"
    assert event.type == "com.example.order.placed"
    assert event.source == "https://example.com/orders"
    assert event.time == datetime(2018, 4, 5, 17, 31, 0, 123456, tzinfo=UTC)
    assert event.key == "customer-9"
    assert event.data == Order(order_id=9, total=10.0)
    assert event.headers == {
        "ce_subject": "order-9",
        "ce_partitionkey": "customer-9",
        "traceparent": "00-abc-def-01",
    }


def test_reads_structured_mode_as_a_dapr_producer_writes_it() -> None:
    body = {
        "specversion": "1.0",
        "id": "5929aaac-a5e2-4ca1-859c-edfe73f11565",
        "type": "com.dapr.event.sent",
        "source": "checkout",
        "time": "2026-02-03t04:05:06z",
        "datacontenttype": "application/json",
        "subject": "s1",
        "traceparent": "00-1-2-01",
        "pubsubname": "orderpubsub",
        "ebschema": 3,
        "data": {"order_id": 1, "total": 0.5},
    }
    record = Record(
        "orders",
        0,
        1,
        json.dumps(body).encode(),
        None,
        {"content-type": b"application/cloudevents+json", "ce_id": b"dup", "other": b"x"},
        1_700_000_000_000,
    )
    event = _decoded(record)
    assert event.id == "5929aaac-a5e2-4ca1-859c-edfe73f11565"
    assert event.type == "com.dapr.event.sent" and event.source == "checkout"
    assert event.time == datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert event.key is None and event.schema_version == 3
    assert event.data == Order(order_id=1, total=0.5)
    assert event.headers == {
        "ce_subject": "s1",
        "ce_traceparent": "00-1-2-01",
        "ce_pubsubname": "orderpubsub",
        "other": "x",
    }


def test_structured_without_time_or_data_uses_the_record_time_and_null() -> None:
    body = {"specversion": "1.0", "id": "1", "type": "t", "source": "/s"}
    record = Record(
        "t",
        0,
        0,
        json.dumps(body).encode(),
        None,
        {"content-type": b"application/cloudevents+json; charset=utf-8"},
        1_700_000_000_000,
    )
    event = _decoded(record, None)
    assert event.data is None
    assert event.time == datetime.fromtimestamp(1_700_000_000, UTC)


def test_binary_without_data_reads_as_null() -> None:
    headers = {"ce_specversion": b"1.0", "ce_id": b"1", "ce_type": b"t", "ce_source": b"/s"}
    event = _decoded(Record("t", 0, 0, b"", None, headers, 1), None)
    assert event.data is None and event.id == "1"


def test_records_that_are_not_cloudevents_are_left_alone() -> None:
    record = Record("t", 0, 4, b'{"a": 1}', None, {"content-type": b"application/json"}, 1)
    assert from_kafka(record) is record
    event = decode_record(record, JsonCodec())
    assert event.id == "t/0/4" and event.data == {"a": 1}


def _structured(body: object, content_type: bytes = b"application/cloudevents+json") -> Record:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Record("t", 2, 9, value, None, {"content-type": content_type}, 1)


_GOOD = {"specversion": "1.0", "id": "1", "type": "t", "source": "/s", "data": 1}
_BINARY = {"ce_specversion": b"1.0", "ce_id": b"1", "ce_type": b"t", "ce_source": b"/s"}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_structured(b"{not json"), "the structured value is not JSON"),
        (_structured([1, 2]), "is a JSON list, not an object"),
        (_structured({**_GOOD, "id": None}), "required attribute 'id' is missing"),
        (_structured({k: v for k, v in _GOOD.items() if k != "type"}), "'type' is missing"),
        (_structured({**_GOOD, "source": ""}), "required attribute 'source' is empty"),
        (_structured({**_GOOD, "id": 5}), "attribute 'id' is not a string"),
        (_structured({**_GOOD, "specversion": "0.3"}), "specversion '0.3' is not supported"),
        (_structured({**_GOOD, "time": "yesterday"}), "is not an RFC 3339 time"),
        (_structured({**_GOOD, "time": "2026-01-01T00:00:00"}), "has no UTC offset"),
        (_structured({**_GOOD, "data_base64": "!!"}), "both 'data' and 'data_base64'"),
        (
            _structured({k: v for k, v in _GOOD.items() if k != "data"} | {"data_base64": "@"}),
            "'data_base64' is not base64",
        ),
        (_structured(_GOOD, b"application/cloudevents+avro"), "event format"),
        (Record("t", 2, 9, b"1", None, {**_BINARY, "ce_type": b""}, 1), "'type' is empty"),
        (Record("t", 2, 9, b"1", None, {"ce_id": b"1"}, 1), "'specversion' is missing"),
        (
            Record("t", 2, 9, b"1", None, {**_BINARY, "ce_id": b"\xff"}, 1),
            "'id' is not UTF-8",
        ),
    ],
)
def test_malformed_cloudevents_are_decode_errors_with_the_reason(
    record: Record, reason: str
) -> None:
    original = (record.value, dict(record.headers))
    translated = from_kafka(record)
    assert translated.decode_error is not None
    assert reason in translated.decode_error
    assert "t/2/9 is not a valid CloudEvent" in translated.decode_error
    assert (translated.value, translated.headers) == original  # dead-lettered as it came
    with pytest.raises(SerializationError, match="not a valid CloudEvent"):
        decode_record(translated, JsonCodec())


# -- URL options -----------------------------------------------------------------------------


def test_envelope_and_ce_source_options() -> None:
    s = KafkaSettings.from_url("kafka://h:9092", {})
    assert (s.envelope, s.ce_source) == ("eventbus", "/eventbus")
    s = KafkaSettings.from_url("kafka://h:9092?envelope=CloudEvents&ce_source=/svc/a", {})
    assert (s.envelope, s.ce_source) == ("cloudevents", "/svc/a")
    assert "envelope" not in s.config and "ce.source" not in s.config
    s = KafkaSettings.from_url("kafka://h:9092", {"envelope": "cloudevents-structured"})
    assert s.envelope == "cloudevents-structured"
    assert "envelope='cloudevents-structured'" in repr(s)


def test_bad_envelope_names_the_accepted_values() -> None:
    with pytest.raises(ConfigurationError) as info:
        KafkaSettings.from_url("kafka://h:9092?envelope=json", {})
    assert "eventbus, cloudevents, cloudevents-structured" in str(info.value)


@pytest.mark.parametrize("source", ["", "has space", "tab\there"])
def test_bad_ce_source_is_refused(source: str) -> None:
    with pytest.raises(ConfigurationError, match="URI-reference"):
        KafkaSettings.from_url("kafka://h:9092", {"ce_source": source})
