"""``eventbus demo``: the main job on embedded transports, and on the real servers."""

from __future__ import annotations

import json

import pytest

from tests.cli.clihelp import run


def _tally(args: list[str]) -> dict[str, object]:
    result = run(["demo", "-o", "json", "--rate", "100", *args])
    assert result.exit_code == 0, result.output
    tally: dict[str, object] = json.loads(result.stdout)
    return tally


def test_demo_on_embedded_transports_loses_nothing() -> None:
    tally = _tally([])
    assert isinstance(tally["published"], int) and tally["published"] > 0
    assert tally["handled"] == tally["published"]
    assert (tally["lost"], tally["handled_twice"], tally["order_violations"]) == (0, 0, 0)
    assert tally["stages"] == [
        "source-only",
        "dual-source-primary",
        "dual-source-primary",
        "dual-target-primary",
        "dual-target-primary",
        "target-only",
    ]


@pytest.mark.redis
@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_demo_redis_to_kafka(redis_url: str, kafka_url: str) -> None:
    tally = _tally(["--from", redis_url, "--to", kafka_url])
    assert (tally["lost"], tally["handled_twice"], tally["order_violations"]) == (0, 0, 0)
