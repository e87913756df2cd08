"""StreamLayout validation, plan diffs of layouts, topic files, the entry codec (no server)
and the proposal of ``eventbus topics adopt``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

import eventbus
from eventbus import StreamLayout, TopicSpec
from eventbus.adapters.redis_streams._layout_codec import LayoutCodec, entry_uuid
from eventbus.cli._adopt import fits, propose
from eventbus.cli._specfile import SpecFileError, load_specs
from eventbus.errors import SerializationError
from eventbus.event import JsonCodec, decode_record, encode_event
from eventbus.topics import plan

pytestmark = pytest.mark.timeout(60)

LAYOUT = StreamLayout(type="type", data="payload", key="task_id")


# validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "a", "data": "a"}, "'type' and 'data' both name the entry field 'a'"),
        ({"key": ""}, "layout field 'key' is empty"),
        ({"id": "_eb.id"}, "starts with extras_prefix '_eb.'"),
        ({"time": "x-ts", "extras_prefix": "x-"}, "starts with extras_prefix 'x-'"),
        ({"extras_prefix": ""}, "extras_prefix is empty"),
        ({"extras_prefix": "_eb"}, "eventbus's own entry format"),
        ({"data": "_v"}, "eventbus's own entry format"),
        ({"typ": "type"}, "Extra inputs are not permitted"),
        ({"time_format": "seconds"}, "'iso' or 'ms'"),
    ],
)
def test_invalid_layouts_say_why(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StreamLayout(**fields)  # type: ignore[arg-type]


def test_layout_is_frozen_public_and_maps_fields() -> None:
    assert "StreamLayout" in eventbus.__all__
    assert LAYOUT.mapped() == {"type": "type", "payload": "data", "task_id": "key"}
    with pytest.raises(ValidationError):
        LAYOUT.type = "kind"  # type: ignore[misc]
    spec = TopicSpec(name="t", layout={"type": "type", "data": "payload"})  # type: ignore[arg-type]
    assert spec.layout == StreamLayout(type="type", data="payload")
    assert TopicSpec.model_validate_json(spec.model_dump_json()) == spec


# plan -----------------------------------------------------------------------------------------


def test_plan_compares_layouts_only_where_stored() -> None:
    have = {"t": TopicSpec(name="t")}
    want = [TopicSpec(name="t", layout=LAYOUT)]
    change = plan(have, want).changes[0]
    assert change.fields["layout"] == (None, {"type": "type", "data": "payload", "key": "task_id"})
    assert not change.destructive and "layout" in change.warnings[0]
    assert plan(have, want, stores_layout=False).empty  # Kafka: accepted, ignored
    stored = {"t": TopicSpec(name="t", layout=LAYOUT)}
    assert plan(stored, want).empty
    assert plan(stored, [TopicSpec(name="t")]).empty  # no layout given: keep the stored one


def test_memory_transport_keeps_the_layout() -> None:
    with eventbus.connect(f"memory://layout-{uuid.uuid4().hex[:8]}") as bus:
        assert bus.capabilities.stream_layout
        bus.apply([TopicSpec(name="t", layout=LAYOUT)])
        assert bus.describe_topic("t").spec.layout == LAYOUT
        assert bus.plan([TopicSpec(name="t", layout=LAYOUT)]).empty
        bus.apply([TopicSpec(name="t", partitions=2)])
        assert bus.describe_topic("t").spec.layout == LAYOUT


# topic files ----------------------------------------------------------------------------------


def test_topic_files_accept_layouts(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  - name: tasks\n    layout: {type: type, data: payload}\n")
    (spec,) = load_specs(path).specs
    assert spec.layout == StreamLayout(type="type", data="payload")
    path.write_text("topics:\n  - name: tasks\n    layout: {typ: type}\n")
    with pytest.raises(SpecFileError, match="unknown layout field; use type, data"):
        load_specs(path)
    path.write_text("topics:\n  - name: tasks\n    layout: {type: a, data: a}\n")
    with pytest.raises(SpecFileError, match="both name the entry field 'a'"):
        load_specs(path)


# the entry codec ------------------------------------------------------------------------------


def test_codec_round_trips_an_event_and_keeps_the_envelope() -> None:
    codec = LayoutCodec(LAYOUT)
    event = eventbus.Event(
        type="TaskCreated", key="7", data={"task_id": 7}, source="svc", headers={"trace": "x"}
    )
    fields = codec.encode(encode_event(event, JsonCodec()), "tasks")
    flat = dict(zip(fields[::2], fields[1::2], strict=True))
    assert flat[b"type"] == b"TaskCreated" and flat[b"task_id"] == b"7"
    assert json.loads(flat[b"payload"]) == {"task_id": 7}
    assert flat[b"_eb.eb-source"] == b"svc" and flat[b"_eb.trace"] == b"x"
    assert flat[b"_eb.eb-layout"] == b"1"
    record = codec.decode("tasks", 0, b"1-0", flat, 1)
    back = decode_record(record, JsonCodec())
    assert (back.id, back.type, back.key, back.source, back.headers, back.data) == (
        event.id,
        "TaskCreated",
        "7",
        "svc",
        {"trace": "x"},
        {"task_id": 7},
    )
    assert back.time == event.time


def test_codec_reads_foreign_entries() -> None:
    codec = LayoutCodec(StreamLayout(type="type", data="payload"))
    record = codec.decode(
        "tasks",
        0,
        b"5-1",
        {b"type": b"T", b"payload": b"[1]", b"trace": b"t1", b"eb-id": b"spoof"},
        2,
    )
    headers = dict(record.headers)
    assert headers.pop("eb-content-type", b"application/json") == b"application/json"
    assert headers == {
        "eb-type": b"T",
        "trace": b"t1",
        "eb-id": entry_uuid("tasks", 0, "5-1").encode(),
    }
    assert record.value == b"[1]" and record.key is None and record.attempt == 2
    assert entry_uuid("tasks", 0, "5-1") == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "redis-stream-entry:tasks/0/5-1")
    )
    native = codec.decode("tasks", 0, b"6-0", {b"_eb": b"1", b"_v": b"1", b"h:eb-id": b"x"}, 1)
    assert native.headers == {"eb-id": b"x"} and native.raw_fields is None


def test_codec_marks_misfits_and_decoding_raises() -> None:
    codec = LayoutCodec(LAYOUT)
    missing = codec.decode("tasks", 0, b"1-0", {b"payload": b"{}"}, 1)
    assert missing.decode_error is not None
    assert "entry tasks/0/1-0" in missing.decode_error and "no field 'type'" in missing.decode_error
    with pytest.raises(SerializationError, match="no field 'type'"):
        decode_record(missing, JsonCodec())
    assert json.loads(missing.value) == {"payload": "{}"}
    no_data = codec.decode("tasks", 0, b"1-1", {b"type": b"T"}, 1)
    assert no_data.decode_error is not None and "no field 'payload'" in no_data.decode_error


def test_codec_refuses_what_it_cannot_write() -> None:
    flat = LayoutCodec(StreamLayout(type="type"))
    encoded = encode_event(eventbus.Event(type="T", data=[1]), JsonCodec())
    with pytest.raises(SerializationError, match="must be an object"):
        flat.encode(encoded, "t")
    clash = encode_event(eventbus.Event(type="T", data={"type": "x"}), JsonCodec())
    with pytest.raises(SerializationError, match="data item 'type'"):
        flat.encode(clash, "t")
    untyped = encode_event(eventbus.Event(data={"a": 1}), JsonCodec())
    with pytest.raises(SerializationError, match="give the event a type"):
        flat.encode(untyped, "t")


# the adopt proposal ---------------------------------------------------------------------------


def entry(**fields: str) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_proposal_finds_type_data_key_id_and_time() -> None:
    entries = [
        entry(
            type="TaskCreated",
            payload=json.dumps({"task_id": i}),
            task_id=str(i),
            event_id=f"e{i}",
            ts=str(1_700_000_000_000 + i),
        )
        for i in range(20)
    ]
    entries.append({b"_eb": b"1", b"_v": b"{}"})  # eventbus's own entries are left out
    proposal = propose(entries)
    assert proposal.layout == StreamLayout(
        type="type", data="payload", key="task_id", id="event_id", time="ts", time_format="ms"
    )
    assert (proposal.sampled, proposal.native) == (20, 1)
    assert proposal.as_json()["fields"][0]["present"] == 20
    assert all(fits(proposal.layout, e) is None for e in entries)


def test_proposal_of_a_flat_stream_lists_key_candidates() -> None:
    entries = [entry(event="Moved", order_id=str(i), at="2024-05-01T12:00:00") for i in range(10)]
    proposal = propose(entries)
    assert proposal.layout == StreamLayout(type="event")
    assert proposal.key_candidates == ["order_id"]
    assert any("flat" in note for note in proposal.notes)


def test_proposal_ignores_rare_fields_and_reports_misfits() -> None:
    entries = [entry(kind="K", body=json.dumps({"n": i})) for i in range(9)]
    entries.append(entry(kind="K", body="oops", id="only-once"))
    proposal = propose(entries)
    assert proposal.layout == StreamLayout(type="kind", data="body")
    assert fits(proposal.layout, entries[-1]) == "'body' is not JSON"
    assert propose([]).layout == StreamLayout()
