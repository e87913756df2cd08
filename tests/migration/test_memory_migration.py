"""The whole migration, live, between two in-memory brokers."""

import uuid

from tests.migration.scenario import check, run_scenario


def test_migration_end_to_end_on_memory() -> None:
    tally = run_scenario(
        f"memory://src-{uuid.uuid4().hex[:6]}", f"memory://dst-{uuid.uuid4().hex[:6]}"
    )
    assert len(tally.published) > 30
    check(tally)
