"""Topic specs and plans, without a server."""

import pytest
from pydantic import ValidationError

from eventbus.topics import TopicSpec, parse_duration_ms, plan


def test_spec_parses_durations_and_sizes() -> None:
    spec = TopicSpec(name="a", retention_ms="7d", retention_bytes="1GiB", max_event_bytes="512KiB")
    assert spec.retention_ms == 7 * 86_400_000
    assert spec.retention_bytes == 1024**3
    assert spec.max_event_bytes == 512 * 1024
    assert parse_duration_ms("500ms") == 500


def test_bad_names_and_durations_are_explained() -> None:
    with pytest.raises(ValidationError, match="not a valid topic name"):
        TopicSpec(name="no spaces")
    with pytest.raises(ValidationError, match="not a duration"):
        TopicSpec(name="a", retention_ms="soon")


def test_plan_create_update_delete() -> None:
    actual = {"keep": TopicSpec(name="keep"), "old": TopicSpec(name="old", partitions=4)}
    wanted = [TopicSpec(name="keep"), TopicSpec(name="old", partitions=2), TopicSpec(name="new")]
    result = plan(actual, wanted)
    actions = {(c.action, c.topic) for c in result.changes}
    assert actions == {("update", "old"), ("create", "new")}
    assert result.destructive
    assert plan(actual, wanted[:1]).empty
    assert [c.action for c in plan(actual, wanted[:1], delete_missing=True).changes] == ["delete"]


def test_plan_ignores_unset_retention_and_rejects_duplicates() -> None:
    actual = {"a": TopicSpec(name="a", retention_ms=1000)}
    assert plan(actual, [TopicSpec(name="a")]).empty
    with pytest.raises(ValueError, match="twice"):
        plan({}, [TopicSpec(name="a"), TopicSpec(name="a")])
