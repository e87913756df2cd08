"""Functions the CLI tests share: run commands in-process (CliRunner) or as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from typer.testing import CliRunner, Result

from eventbus.cli import app


def run(args: Sequence[str], input: str | None = None, **env: str) -> Result:
    """Invoke ``eventbus ARGS`` in-process; never raises for a non-zero exit."""
    runner = CliRunner()
    result = runner.invoke(app, list(args), input=input, env=env or None)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unexpected exception: {result.exception!r}\n{result.stderr}")
    return result


def ok(args: Sequence[str], input: str | None = None) -> Result:
    """``run`` and assert exit code 0."""
    result = run(args, input)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


def ok_json(args: Sequence[str], input: str | None = None) -> Any:
    """``run`` with ``-o json``, assert exit 0, return the parsed document."""
    return json.loads(ok([*args, "-o", "json"], input).stdout)


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def eventbus_subprocess(
    *args: str, input: str | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m eventbus.cli ARGS`` in a child process (its own memory brokers)."""
    full_env = dict(os.environ)
    full_env.pop("EVENTBUS_URL", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "eventbus.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
