"""The migration's writers that cannot leave a copy behind to land later.

The backfill, the journal replay and the control record (on a source without
ConditionalAppend) ask the side for a fenced writer of their job (:func:`transactional_id`):
a transport with ``FencedWrites`` (Kafka: transactional, see
``eventbus.adapters.kafka._transactional``) fences every earlier writer of the job when the
writer opens, and writes each batch whole or not at all. Other sides (memory, Redis) get
:class:`PublishWriter`: their writes are single commands that either landed or not before the
writer gave up (memory: in-process; Redis: one command that Redis executes as soon as it reads
it, never sent again), so there is nothing left to fence.

Copies written directly by dual-write go through the side's copy client
(:func:`copy_writer`): a transport with ``CopyClients`` (Kafka) gives a client of its own
whose records expire, so a copy write that failed leaves nothing queued to land later.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.errors import FencedError
from eventbus.transport import (
    CopyClients,
    FencedWriter,
    FencedWrites,
    Outgoing,
    Position,
    Transport,
)

__all__ = [
    "FencedError",
    "FencedWriter",
    "PublishWriter",
    "copy_writer",
    "open_fenced_writer",
    "transactional_id",
]


def transactional_id(purpose: str, migration: str, topic: str, partition: int | None = None) -> str:
    """The job id (``transactional.id`` on Kafka) of one job: ``backfill`` (per migration and
    topic), ``rollback`` (the reverse backfill after a rollback from target-only), ``replay``
    (the journal replay, per partition), ``control`` (the control record)."""
    tail = "" if partition is None else f".{partition}"
    return f"eventbus-{purpose}.{migration}.{topic}{tail}"


async def open_fenced_writer(
    target: Transport,
    tid: str,
    *,
    topic: str,
    timeout: float = 60.0,
) -> FencedWriter:
    """A writer into ``target`` for the job ``tid`` (see :func:`transactional_id`). Where the
    target fences (FencedWrites) every earlier writer of the job is fenced before it returns:
    open it before reading what is already there."""
    if isinstance(target, FencedWrites):
        return await target.fenced_writer(tid, topic, timeout=timeout)
    return PublishWriter(target)


class PublishWriter:
    """Plain publishes to the target (no fence needed, see the module docstring)."""

    fenced = False

    def __init__(self, target: Transport) -> None:
        self.target = target

    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> Position | None:
        if not records:
            return None
        positions = await self.target.publish(topic, records, timeout=timeout)
        return positions[-1]

    async def close(self) -> None:
        return None


def copy_writer(transport: Transport, timeout: float) -> Transport:
    """What writes copies to ``transport``'s side: where it has copy clients (Kafka) a client
    of its own whose records expire after ``timeout`` s, so a copy write that failed leaves
    nothing queued that could land after its replacement; elsewhere ``transport`` itself
    (memory writes are synchronous; a Redis command that timed out is not sent again)."""
    if isinstance(transport, CopyClients):
        return transport.copy_client(timeout)
    return transport
