"""Child processes of the migration tests: output to a file, always ended when the test ends.

``with Children(tmp_path) as kids:`` starts processes with ``kids.start(name, argv)``; leaving the
block (normally or by an exception, a failed assertion or a pytest timeout's exception) sends
SIGKILL to every child still running (a SIGSTOPped one is continued first so it can die) and
reaps it, so no test leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from eventbus.testing.conformance import wait_until

__all__ = ["Children", "cli", "migrate_url", "read_lines"]


def migrate_url(name: str, source: str, target: str, poll_interval: float = 0.1) -> str:
    return (
        f"migrate://{name}?source={quote(source, safe='')}&target={quote(target, safe='')}"
        f"&poll_interval={poll_interval}"
    )


def cli(*args: str) -> list[str]:
    """argv of ``eventbus ARGS`` run with this interpreter."""
    return [sys.executable, "-m", "eventbus.cli", *args]


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


class Children:
    """The child processes of one test (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], *, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (in ``cwd``); stdout and stderr go to ``<folder>/<name>.log``."""
        log = open(self.log_path(name), "ab")  # noqa: SIM115 (handed to the child, closed below)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def log(self, name: str) -> str:
        return "\n".join(read_lines(self.log_path(name)))

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30) -> int:
        """Send ``sig`` to the child and wait until it has ended; returns its exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        return proc.wait(timeout)

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` (SIGSTOP, SIGCONT, ...) without waiting."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)

    def wait(self, name: str, timeout: float) -> int:
        """Wait for the child to exit by itself; fail the test (with its log) if it does not."""
        proc = self.procs[name]
        wait_until(lambda: proc.poll() is not None, timeout, f"{name} to exit:\n{self.log(name)}")
        return proc.wait()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # a stopped child cannot act on SIGKILL
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
