"""Verification: both sides compared per partition (counts, event ids missing, extra or
duplicated, the order of ids per key, SHA-256 of payloads), over what both sides retain.
The report is stored in the control record."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime

from eventbus.migration._context import MigrationContext
from eventbus.migration.common import family, refuse_companion, update
from eventbus.migration.control import MigrationState, PartitionDiff, VerifyReport
from eventbus.migration.copying import Progress, scan
from eventbus.migration.marks import event_id
from eventbus.transport import Transport


async def verify(
    m: MigrationContext, topic: str, *, progress: Progress | None = None, grace: float = 5.0
) -> VerifyReport:
    """The work of :meth:`Migration.verify` (documented there)."""
    state = await m.control.require()
    refuse_companion(state, topic)
    members = family(state, topic)
    report = await verify_one(m, topic, progress, grace)
    for t in members[1:]:
        report.related.append(await verify_one(m, t, progress, grace))
    return report


async def verify_one(
    m: MigrationContext, topic: str, progress: Progress | None, grace: float
) -> VerifyReport:
    state = await m.control.require()
    mig = state.topic(topic)
    partitions: dict[int, PartitionDiff] = {}
    for p in range(mig.partitions):
        s_trims = await trims(m.source, topic, p)
        t_trims = await trims(m.target, topic, p)
        src = await _digest(m.source, topic, p, progress)
        tgt = await _digest(m.target, topic, p, progress)
        diff = _compare(src, tgt, source_trims=s_trims, target_trims=t_trims)
        deadline = time.monotonic() + grace
        while not diff.ok and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # copies in flight: look again shortly
            src2 = await _digest(m.source, topic, p, None)
            tgt2 = await _digest(m.target, topic, p, None)
            diff = _compare(
                src,
                tgt,
                later_source=src2,
                later_target=tgt2,
                source_trims=s_trims,
                target_trims=t_trims,
            )
        partitions[p] = diff
    report = VerifyReport(topic=topic, checked_at=datetime.now(UTC), partitions=partitions)

    def store(s: MigrationState) -> None:
        s.topic(topic).verify = report

    await update(m, store)
    return report


class _Digest:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.keys: dict[str, list[str]] = {}
        self.hashes: dict[str, str] = {}
        self.times: dict[str, int] = {}
        self.oldest: int | None = None
        """The oldest record timestamp held (ms), None when empty."""


async def _digest(side: Transport, topic: str, p: int, progress: Progress | None) -> _Digest:
    digest = _Digest()
    async for record in scan(side, topic, p):
        eid = event_id(record)
        digest.ids.append(eid)
        if record.key is not None:
            digest.keys.setdefault(record.key.decode(errors="replace"), []).append(eid)
        digest.hashes[eid] = hashlib.sha256(record.value).hexdigest()
        digest.times[eid] = record.timestamp_ms
        if digest.oldest is None or record.timestamp_ms < digest.oldest:
            digest.oldest = record.timestamp_ms
        if progress is not None:
            progress(1)
    return digest


HORIZON_SLACK_MS = 1000
"""How much newer than a trimming side's oldest event a record only the other side holds may
be and still count as trimmed: a copy's timestamp can trail its original's by the copy's
latency, and concurrent producers interleave the two sides differently."""


def _aged(ids: list[str], times: dict[str, int], other: _Digest) -> set[str]:
    """The ids ``other`` (a side that trims) does not hold and that are no newer than its
    oldest event (plus ``HORIZON_SLACK_MS``): trimmed there, not missing."""
    if other.oldest is None:
        return set()
    held = set(other.ids)
    horizon = other.oldest + HORIZON_SLACK_MS
    return {i for i in ids if i not in held and times[i] <= horizon}


async def trims(side: Transport, topic: str, partition: int) -> bool:
    """Whether ``side`` removed old events of ``topic``'s ``partition`` (or may have): it has
    time or size retention and, where offsets are numbers (Kafka, memory), the partition no
    longer starts at 0. (Kafka reports its default retention for every topic; without the
    second condition a target missing its oldest events would pass verify.)"""
    info = await side.describe_topic(topic)
    spec = info.spec
    if spec.retention_ms is None and spec.retention_bytes is None:
        return False
    part = next((x for x in info.partitions if x.partition == partition), None)
    first = part.first if part is not None else None
    return not isinstance(first, int) or first > 0


def _compare(
    src: _Digest,
    tgt: _Digest,
    *,
    later_source: _Digest | None = None,
    later_target: _Digest | None = None,
    source_trims: bool = False,
    target_trims: bool = False,
) -> PartitionDiff:
    """The differences between one partition's digests. With later digests, an id counts as
    missing (extra) only if the later target (source) still lacks it. A side that trims
    (retention) is compared only from the oldest event it still holds: events of the other
    side older than that are counted apart, not as missing or extra."""
    src_ids, tgt_ids = set(src.ids), set(tgt.ids)
    seen_target = set(later_target.ids) if later_target is not None else tgt_ids
    seen_source = set(later_source.ids) if later_source is not None else src_ids
    aged_src = _aged(src.ids, src.times, tgt) if target_trims else set()
    aged_tgt = _aged(tgt.ids, tgt.times, src) if source_trims else set()
    missing = [
        i for i in src.ids if i not in tgt_ids and i not in seen_target and i not in aged_src
    ]
    extra = [i for i in tgt.ids if i not in src_ids and i not in seen_source and i not in aged_tgt]
    duplicates = len(tgt.ids) - len(tgt_ids)
    reordered = []
    for key, ids in src.keys.items():
        theirs = [i for i in tgt.keys.get(key, []) if i in src_ids]
        ours = [i for i in ids if i in tgt_ids]
        if theirs != ours:
            reordered.append(key)
    mismatch = [i for i in src_ids & tgt_ids if src.hashes[i] != tgt.hashes[i]]
    return PartitionDiff(
        source_count=len(src.ids),
        target_count=len(tgt.ids),
        missing=missing[:50],
        extra=extra[:50],
        missing_count=len(missing),
        extra_count=len(extra) + duplicates,
        reordered_keys=sorted(reordered)[:50],
        payload_mismatch=sorted(mismatch)[:50],
        beyond_source_retention=len(aged_tgt),
        beyond_target_retention=len(aged_src),
    )
