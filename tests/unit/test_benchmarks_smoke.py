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


def test_latency_metric_with_two_targets_renders() -> None:
    from benchmarks.harness import Metric, judge_value, render_targets
    from benchmarks.latency import _quantiles

    p50, p99, top = _quantiles([float(i) for i in range(100)])
    assert (p50, p99, top) == (50.0, 99.0, 99.0)
    metric = Metric(
        "kafka.latency.1proc",
        "e2e latency",
        {"eventbus p50 ms": p50, "p99 ratio": 1.5},
        "ms",
        targets=[
            judge_value("p50 within raw + 1 ms", 0.5, 1.0, "one process"),
            judge_value("p99 <= 1.5x raw", 1.5, 1.5, "one process", inclusive=True),
        ],
    )
    assert all(t.met for t in metric.all_targets)
    assert "p99 <= 1.5x raw" in render([], [metric])
    assert render_targets([], [metric]).count("| met |") == 2


def test_kafka_trace_summary_attributes_stages() -> None:
    from benchmarks.kafka_trace import _Stamps, summarize

    stamps = _Stamps()
    for i in range(2000):
        t = 1000.0 + i / 1000
        stamps.by_i[i].update(publish=t, produced=t + 0.001, delivered=t + 0.002)
        stamps.by_offset[i].update(
            appended=t + 0.001, polled=t + 0.003, fetched=t + 0.003, handler=t + 0.004
        )
        stamps.offset_of[i] = i
    out = summarize(stamps, 1000, {})
    assert round(out["appended -> polled"]["p50"], 3) == 2.0
    assert round(out["end to end"]["p50"], 3) == 4.0
