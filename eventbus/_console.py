"""The ``eventbus`` console script: runs the CLI, or says which extra it needs.

The script is installed with the package, but the CLI's libraries (typer, rich, PyYAML) come
with the ``cli`` extra; without them the command explains how to install it (exit 1) instead of
failing with a traceback."""

from __future__ import annotations

import sys

__all__ = ["main"]

_CLI_MODULES = {"typer", "rich", "yaml", "click"}


def main() -> None:
    try:
        from eventbus.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _CLI_MODULES:
            raise
        print(
            f"error: the eventbus command needs the cli extra ({exc.name} is not installed): "
            "pip install 'eventbus[cli]' (or 'eventbus[all]' for the drivers too)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    cli_main()
