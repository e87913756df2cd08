"""The ``eventbus`` console script without the ``cli`` extra says what to install."""

import subprocess
import sys

# Blocks typer as if the cli extra were not installed, then runs the console script's entry.
_WITHOUT_TYPER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "typer":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from eventbus._console import main
main()
"""


def test_console_script_without_the_cli_extra_names_it() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TYPER, "topics", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "pip install 'eventbus[cli]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_script_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from eventbus._console import main; main()", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "topics" in result.stdout
