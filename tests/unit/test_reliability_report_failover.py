"""``report.py``: the Sentinel failover rows (loss measured without WAIT) and their section."""

from __future__ import annotations

from tests.reliability import report

VERSIONS = {"redis": "7", "kafka": "4"}
ROW = {
    "fault": "Redis primary SIGKILL, Sentinel failover, no replica wait, under load",
    "transport": "redis",
    "trials": 2,
    "faults": 2,
    "published": 100,
    "lost": 3,
    "duplicates": 0,
    "errors": {},
    "seconds": 40.0,
    "passed": True,
    "extra": {"loss_measured": True, "failover_seconds": [2.3, 2.4]},
}


def test_measured_loss_is_reported_not_failed_and_the_section_is_kept() -> None:
    page = report.render([ROW], VERSIONS)
    line = next(x for x in page.splitlines() if x.startswith("| Redis primary SIGKILL"))
    assert line.endswith("| 3 | 0 | - | 40.0 | loss measured |")
    assert "## Redis failover with Sentinel" in page and "[2.3, 2.4] s" in page
    strict = report.render([{**ROW, "extra": {}}], VERSIONS)
    assert "**FAIL**" in strict, "a loss where none is allowed still fails"
    other = {**ROW, "fault": "other fault", "lost": 0, "extra": {}}
    merged = report.render([other], VERSIONS, page)
    assert merged.count("## Redis failover with Sentinel") == 1
    assert "[2.3, 2.4] s" in merged
