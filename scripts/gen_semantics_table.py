#!/usr/bin/env python3
"""Write docs/capabilities.md from the adapters' real ``Capabilities`` values.

Each transport is built from a URL through the registry (``eventbus._registry.open_transport``)
and never connected, so no server is needed; the Redis and Kafka drivers must be installed
(``pip install -e '.[all]'``). Each ``Capabilities`` field is a row, its meaning is the first
sentence of the field's docstring in ``eventbus/transport.py``. URL options that change a value
(``auto_create=true``, ``cluster=true``) are tried too and noted in the cell.

Usage: python scripts/gen_semantics_table.py [--check]   (--check: exit 1 if out of date)
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from eventbus._registry import open_transport
from eventbus.transport import Capabilities

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "capabilities.md"
CONTRACT = ROOT / "eventbus" / "transport.py"
COMMAND = "python scripts/gen_semantics_table.py"


@dataclasses.dataclass(frozen=True)
class Column:
    """One transport: the URL it is built from, and URL options that change its capabilities."""

    name: str
    url: str
    variants: tuple[str, ...] = ()


COLUMNS = (
    Column("memory", "memory://", ("auto_create=true",)),
    Column("redis", "redis://127.0.0.1:6379/0", ("auto_create=true", "cluster=true")),
    Column("kafka", "kafka://127.0.0.1:9092", ("auto_create=true",)),
)

# Meanings for fields whose declaration has no docstring yet; a docstring, once written,
# takes precedence over these.
FALLBACK_MEANINGS = {
    "retention_by_time": "Topics can drop events older than a retention time (`retention_ms`).",
    "retention_by_size": "Topics can drop the oldest events past a size per partition "
    "(`retention_bytes`).",
    "compaction": 'Topics can keep only the latest event per key (`cleanup_policy="compact"`).',
    "transactions": "Several publishes and acks can be committed as one atomic transaction.",
    "partitions_can_grow": "A topic's partition count can be raised in place (keys then move).",
}

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def field_docs(source: str) -> dict[str, str]:
    """``{field: docstring}`` for the fields of ``class Capabilities`` in ``source``."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Capabilities":
            docs: dict[str, str] = {}
            body = node.body
            for stmt, after in zip(body, [*body[1:], None], strict=True):
                if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                    continue
                if (
                    isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    docs[stmt.target.id] = after.value.value
            return docs
    raise SystemExit(f"{CONTRACT}: no class Capabilities found")


def _role(match: re.Match[str]) -> str:
    """A Sphinx role as inline code; ``~`` keeps only the last dotted part."""
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def one_line(doc: str) -> str:
    """The first sentence of a docstring, on one line, as Markdown inline text."""
    text = " ".join(doc.split())
    text = _ROLE.sub(_role, text)
    text = text.replace("``", "`")
    match = re.search(r"(?<=[.;:])\s+(?=[A-Z(`])", text)
    sentence = text[: match.start()] if match else text
    if sentence.endswith((";", ":")):
        sentence = sentence[:-1] + "."
    return sentence.replace("|", "\\|")


def meanings() -> dict[str, str]:
    docs = field_docs(CONTRACT.read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for f in dataclasses.fields(Capabilities):
        if f.name in docs:
            out[f.name] = one_line(docs[f.name])
        elif f.name in FALLBACK_MEANINGS:
            out[f.name] = FALLBACK_MEANINGS[f.name]
        elif f.name != "transport":
            raise SystemExit(
                f"Capabilities.{f.name} has no docstring in {CONTRACT.name}: document the field "
                "there (or add a meaning to FALLBACK_MEANINGS)"
            )
    return out


def capabilities(url: str) -> Capabilities:
    """The capabilities of the transport ``url`` picks, built but never connected."""
    caps: Capabilities = open_transport(url).capabilities
    return caps


def show(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{value // size} {unit}"
    return str(value)


def cell(column: Column, name: str) -> str:
    base = capabilities(column.url)
    text = show(getattr(base, name))
    for variant in column.variants:
        sep = "&" if "?" in column.url else "?"
        other = getattr(capabilities(column.url + sep + variant), name)
        if other != getattr(base, name):
            text += f"; {show(other)} with `{variant}`"
    return text


def render() -> str:
    names = [f.name for f in dataclasses.fields(Capabilities) if f.name != "transport"]
    meaning = meanings()
    header = "| capability | " + " | ".join(c.name for c in COLUMNS) + " | meaning |"
    rule = "|---|" + "---|" * len(COLUMNS) + "---|"
    rows = [
        f"| `{name}` | " + " | ".join(cell(c, name) for c in COLUMNS) + f" | {meaning[name]} |"
        for name in names
    ]
    lines = [
        "# Capabilities by transport",
        "",
        f"<!-- Generated by {COMMAND} from the adapters' Capabilities; do not edit by hand. -->",
        "",
        "Every transport declares what it can do in a `Capabilities` value (`bus.capabilities`,",
        "also printed by `eventbus doctor`). The conformance suite reads these flags to decide",
        "which behaviour to check and which clear error to expect instead; a skipped check names",
        "its flag. The guarantees that hold everywhere are on [Semantics](semantics.md).",
        "",
        "Values are those of a transport built from a plain URL (`memory://`,",
        "`redis://host:port/0`, `kafka://host:port`; `redpanda://` is the Kafka transport).",
        "Where a URL option changes a value, the cell says so. A `migrate://` transport",
        "declares a flag only when both its source and its target do.",
        "",
        header,
        rule,
        *rows,
        "",
        "Each adapter's page explains its values: [Redis Streams](redis.md#capabilities),",
        "[Kafka and Redpanda](kafka.md#capabilities).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    text = render()
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
