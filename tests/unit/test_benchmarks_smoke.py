"""The benchmark code keeps working: one memory-only row with a tiny count (no timing checks)."""

from __future__ import annotations

from benchmarks import memory_cases
from benchmarks.harness import Env, measure, render


def test_memory_row_runs_and_reports_a_ratio() -> None:
    env = Env(quick=True)
    try:
        with memory_cases.publish_many(env, 100, count=20) as row:
            result = measure(row, repeats=2, warmup=False)
    finally:
        env.close()
    assert [s.label for s in result.sides] == [s.label for s in row.sides]
    assert all(len(s.rates) == 2 for s in result.sides)
    assert len(result.ratios) == 1
    assert "publish_many on memory://" in render([result], [])
