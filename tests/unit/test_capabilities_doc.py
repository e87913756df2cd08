"""docs/capabilities.md matches the adapters' real Capabilities (built from URLs, never
connected), like docs/cli.md matches the CLI's --help."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from eventbus import Capabilities

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_semantics_table.py"
DOC = ROOT / "docs" / "capabilities.md"


def _generator() -> ModuleType:
    """scripts/ is not a package: load the script as a module (once per session)."""
    name = "gen_semantics_table"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_capabilities_doc_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == _generator().render(), (
        "docs/capabilities.md is out of date: run python scripts/gen_semantics_table.py"
    )


def test_every_field_is_a_row_with_a_meaning() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): line.rstrip(" |").rsplit("|", 1)[-1].strip()
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    }
    fields = {f.name for f in dataclasses.fields(Capabilities)} - {"transport"}
    assert set(rows) == fields
    assert all(rows.values()), [name for name, meaning in rows.items() if not meaning]


def test_cells_are_the_transports_values() -> None:
    gen = _generator()
    kafka = gen.capabilities("kafka://127.0.0.1:9092")
    redis_cluster = gen.capabilities("redis://127.0.0.1:6379/0?cluster=true")
    assert kafka.transport == "kafka" and not kafka.reset_active_group
    assert not redis_cluster.atomic_dead_letter
    columns = {c.name: c for c in gen.COLUMNS}
    assert gen.cell(columns["kafka"], "reset_active_group") == "no"
    assert gen.cell(columns["redis"], "atomic_dead_letter") == "yes; no with `cluster=true`"
