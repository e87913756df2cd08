"""What both sides of a migration hold, read back for the tests' checks."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

from eventbus.migration import Migration
from eventbus.migration.ops import event_id, scan
from eventbus.transport import Transport

__all__ = ["Held", "held", "partition_events"]

Entry = tuple[str, str, str]
"""(event id, key, sha256 of the payload) of one record."""


async def partition_events(side: Transport, topic: str, partitions: int) -> dict[int, list[Entry]]:
    """Every record of every partition, in order (Kafka: read committed)."""
    out: dict[int, list[Entry]] = {}
    for p in range(partitions):
        # large pages: each Kafka read costs up to fetch.wait.max.ms, whatever its size
        out[p] = [
            (
                event_id(r),
                (r.key or b"").decode(errors="replace"),
                hashlib.sha256(r.value).hexdigest(),
            )
            async for r in scan(side, topic, p, page=20_000)
        ]
    return out


class Held:
    """Both sides of one topic, per partition."""

    def __init__(self, source: dict[int, list[Entry]], target: dict[int, list[Entry]]) -> None:
        self.source = source
        self.target = target

    @staticmethod
    def duplicates(side: dict[int, list[Entry]]) -> int:
        counts = Counter(e[0] for entries in side.values() for e in entries)
        return sum(n - 1 for n in counts.values())

    def missing_on_target(self) -> set[str]:
        there = {e[0] for entries in self.target.values() for e in entries}
        return {e[0] for entries in self.source.values() for e in entries} - there

    def assert_identical(self) -> None:
        """Each partition holds the same events on both sides, each once, in the same order,
        with the same keys and payloads."""
        for name, side in (("source", self.source), ("target", self.target)):
            dupes = self.duplicates(side)
            assert not dupes, f"{dupes} duplicate events on the {name}"
        missing = self.missing_on_target()
        assert not missing, f"{len(missing)} events missing on the target: {sorted(missing)[:5]}"
        for p in sorted(self.source):
            src, dst = self.source[p], self.target.get(p, [])
            if src != dst:
                first = next(
                    (i for i, (a, b) in enumerate(zip(src, dst, strict=False)) if a != b),
                    min(len(src), len(dst)),
                )
                raise AssertionError(
                    f"partition {p} differs from index {first}: source has {len(src)} events, "
                    f"target {len(dst)}; source {src[first : first + 2]}, target "
                    f"{dst[first : first + 2]}"
                )

    def assert_same_events(self) -> None:
        """Each partition holds the same events on both sides, each once, with the same keys
        and payloads, and each key's events in the same order. (Concurrent producers can
        interleave different keys differently on the two sides, so the partitions' orders
        may differ across keys.)"""
        for name, side in (("source", self.source), ("target", self.target)):
            dupes = self.duplicates(side)
            assert not dupes, f"{dupes} duplicate events on the {name}"
        for p in sorted(self.source):
            src, dst = self.source[p], self.target.get(p, [])
            only_src = {e[0] for e in src} - {e[0] for e in dst}
            only_dst = {e[0] for e in dst} - {e[0] for e in src}
            assert not only_src, f"partition {p}: {len(only_src)} events missing on the target"
            assert not only_dst, f"partition {p}: {len(only_dst)} events only on the target"
            assert set(src) == set(dst), f"partition {p}: keys or payloads differ"
            for key in {e[1] for e in src}:
                a = [e[0] for e in src if e[1] == key]
                b = [e[0] for e in dst if e[1] == key]
                assert a == b, f"partition {p}: key {key} is in a different order on the target"


def held(name: str, source_url: str, target_url: str, topic: str, partitions: int) -> Held:
    """Read both sides of ``topic`` in migration ``name``."""

    async def read() -> Held:
        m = await Migration.open(name, source_url, target_url)
        try:
            return Held(
                await partition_events(m.source, topic, partitions),
                await partition_events(m.target, topic, partitions),
            )
        finally:
            await m.close()

    return asyncio.run(read())
