"""``report.py --merge``: a partial run keeps the earlier page's rows it has no figures for."""

from __future__ import annotations

from tests.reliability import report

ROW = {
    "fault": "new fault",
    "transport": "redis",
    "trials": 2,
    "faults": 3,
    "published": 10,
    "lost": 0,
    "duplicates": 0,
    "errors": {},
    "seconds": 1.0,
    "passed": True,
}


def test_merge_keeps_rows_without_figures_and_marks_their_run() -> None:
    earlier = report.render(
        [{**ROW, "fault": "old fault"}, {**ROW, "published": 99}], {"redis": "7", "kafka": "4"}
    )
    page = report.render([ROW], {"redis": "7", "kafka": "4"}, earlier)
    old = next(line for line in page.splitlines() if line.startswith("| old fault "))
    assert "| pass (run of " in old
    new = next(line for line in page.splitlines() if line.startswith("| new fault "))
    assert new.endswith("| 10 | 0 | 0 | - | 1.0 | pass |"), "figures on disk replace the row"
    assert "Totals: 4 trials, 6 faults, 20 events published, 0 lost." in page
    again = report.render([ROW], {"redis": "7", "kafka": "4"}, page)
    assert again.count("(run of ") == 1, "a kept row is marked once"
    assert report.generated_text() in page
