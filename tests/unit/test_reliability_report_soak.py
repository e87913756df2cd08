"""``report.py --soak``: a soak run's figures get their own section next to the CI-sized table."""

from __future__ import annotations

from tests.reliability import report

VERSIONS = {"redis": "7", "kafka": "4"}
ROW = {
    "fault": "some fault",
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
SOAK = [
    {**ROW, "trials": 20, "faults": 60, "published": 70_000, "soak": True},
    {**ROW, "transport": "redis cluster", "published": 40_000, "duplicates": 2, "soak": True},
    {**ROW, "transport": "kafka, 3 brokers", "faults": 12, "published": 90_000, "soak": True},
]


def _soak_part(page: str) -> str:
    return page.split("## Soak run (EVENTBUS_SOAK=1)", 1)[1].split("\n## ", 1)[0]


def test_soak_figures_get_their_own_section_and_the_ci_table_stays() -> None:
    ci_page = report.render([ROW, {**ROW, "transport": "kafka"}], VERSIONS)
    run_line = next(x for x in ci_page.splitlines() if x.startswith("Run: "))
    page = report.render(SOAK, VERSIONS, ci_page, soak_note="Rerun: one test.")
    assert next(x for x in page.splitlines() if x.startswith("Run: ")) == run_line
    ci_part = page.split("## Soak run", 1)[0]
    assert "Totals: 4 trials, 6 faults, 20 events published, 0 lost." in ci_part
    assert "(run of " not in ci_part, "the CI table keeps its own run line, rows unmarked"
    soak = _soak_part(page)
    assert "| redis | 2 | 22 | 63 | 110000 | 0 | 2 | yes |" in soak
    assert "| kafka | 1 | 2 | 12 | 90000 | 0 | 0 | **no** |" in soak
    assert "Partial: not in this soak run" in soak and "some fault (kafka)" in soak
    assert "\n\nRerun: one test.\n\n| fault |" in soak
    assert report.generated_text() in page


def test_a_later_ci_run_keeps_the_soak_section_and_does_not_read_its_rows() -> None:
    page = report.render(SOAK, VERSIONS, report.render([ROW], VERSIONS))
    later = report.render([{**ROW, "published": 11}], VERSIONS, page)
    assert _soak_part(later) == _soak_part(page)
    ci_part = later.split("## Soak run", 1)[0]
    assert "Totals: 2 trials, 3 faults, 11 events published, 0 lost." in ci_part
    assert "redis cluster" not in ci_part
