"""Generated pages must match what they are generated from (as docs/capabilities.md and
docs/cli.md are checked elsewhere)."""

from pathlib import Path

from tests.reliability import report

ROOT = Path(__file__).resolve().parents[2]


def test_reliability_page_matches_its_tests() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text()
    assert report.generated_text() in page, (
        "docs/reliability.md is stale (what the tests do, or the known-bug list, changed): "
        "run python -m pytest tests/reliability && python tests/reliability/report.py"
    )


def test_reliability_page_names_the_code_it_measured() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text()
    run_line = next(line for line in page.splitlines() if line.startswith("Run: "))
    assert ", code " in run_line, "regenerate docs/reliability.md: its run line names no commit"
