"""The publish path on Redis: size checks, the partition of each record (key hash, given,
or round robin), and appends through the PUBLISH script, hand-packed and pipelined on one
pooled connection (or one call per chunk on Cluster and for declared layouts), as
:class:`Publisher`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._admin import TopicAdmin, TopicMeta
from eventbus.adapters.redis_streams._errors import demoted
from eventbus.adapters.redis_streams._settings import RedisSettings
from eventbus.errors import (
    EventTooLargeError,
    InvalidPositionError,
    OperationTimeoutError,
    TopicNotFoundError,
)
from eventbus.partitioning import partition_for_key
from eventbus.transport import (
    Outgoing,
    Position,
    record_size,
)

__all__ = ["PUBLISH_CHUNK", "PUBLISH_SLICE", "Publisher"]

PUBLISH_CHUNK = 1000
"""Records per round trip of a publish (the deadline is checked between chunks)."""
PUBLISH_SLICE = 250
"""Records per publish script call: each call is all-or-nothing and blocks the server briefly."""


class Publisher(TopicAdmin):
    """Topic admin plus publishing (see the module docstring)."""

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__(settings)
        self._round_robin: dict[str, itertools.count[int]] = {}

    # publish ---------------------------------------------------------------------------------
    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float = 10.0
    ) -> list[Position]:
        """Append records (see the Transport contract). Batches go in round trips of
        PUBLISH_CHUNK records, pipelined Lua calls of PUBLISH_SLICE records each (on Redis
        Cluster one call per chunk); each call is all-or-nothing on the server."""
        self._check()
        if not records:
            return []
        deadline = time.monotonic() + timeout
        return await self.with_timeout(
            self._publish(topic, records, deadline), timeout, f"publish to {topic!r}"
        )

    def check_sizes(self, meta: TopicMeta, records: Sequence[Outgoing]) -> None:
        limit = meta.max_event_bytes
        for record in records:
            size = record_size(record)
            if size > limit:
                raise EventTooLargeError(
                    f"event of {size} bytes exceeds topic {meta.name!r}'s limit of {limit} "
                    "bytes; nothing was written. Make it smaller, or raise the topic's "
                    "max_event_bytes (alter_topic / eventbus topics alter)"
                )

    def partition_of(self, meta: TopicMeta, record: Outgoing) -> int:
        if record.partition is not None:
            if not 0 <= record.partition < meta.partitions:
                raise InvalidPositionError(
                    f"topic {meta.name!r} has partitions 0..{meta.partitions - 1}, "
                    f"not {record.partition}"
                )
            return record.partition
        if record.key is not None:
            return partition_for_key(record.key, meta.partitions)
        counter = self._round_robin.setdefault(meta.name, itertools.count())
        return next(counter) % meta.partitions

    async def _publish(
        self, topic: str, records: Sequence[Outgoing], deadline: float
    ) -> list[Position]:
        meta = await self.meta(topic, create=self.settings.auto_create)
        self.check_sizes(meta, records)
        parts = [self.partition_of(meta, r) for r in records]
        encoded = None
        if meta.layout is not None:  # all encoded first: a record that cannot be, fails alone
            encoded = list(map(self.encoder(meta), records))
        positions: list[Position] = []
        for start in range(0, len(records), PUBLISH_CHUNK):
            # redis-py finishes a command even when cancelled, so wait_for alone may
            # return late: check the deadline between chunks as well
            if time.monotonic() > deadline:
                raise OperationTimeoutError(
                    f"publish to {topic!r} on {self.settings.url} passed its timeout after "
                    f"{start} of {len(records)} records were written; raise the timeout or "
                    "publish smaller batches"
                )
            chunk = records[start : start + PUBLISH_CHUNK]
            chunk_parts = parts[start : start + PUBLISH_CHUNK]
            ids = await self._append(
                meta,
                chunk,
                chunk_parts,
                None if encoded is None else encoded[start : start + PUBLISH_CHUNK],
            )
            positions += [Position(p, i.decode()) for p, i in zip(chunk_parts, ids, strict=True)]
        return positions

    async def _append(
        self,
        meta: TopicMeta,
        records: Sequence[Outgoing],
        parts: Sequence[int],
        encoded: Sequence[list[bytes]] | None = None,
    ) -> list[bytes]:
        if encoded is None and not self.settings.cluster:
            return await self._append_packed(meta, records, parts)
        used = sorted(set(parts))
        index = {p: i + 1 for i, p in enumerate(used)}
        args: list[Any] = [meta.minid()]
        if encoded is None:
            encoded = [layout.encode_fields(record) for record in records]
        for fields, p in zip(encoded, parts, strict=True):
            args += [index[p], len(fields) // 2, *fields]
        keys = [layout.stream_key(meta.name, p) for p in used]
        try:
            with self.edge(f"publish to {meta.name!r}"):
                if self.settings.wait_replicas:  # the script and WAIT on one connection
                    pipe = self.client.pipeline(transaction=False)
                    await self.script("PUBLISH")(keys=keys, args=args, client=pipe)
                    pipe.execute_command(*self._wait_command())
                    ids, acked = await pipe.execute()
                    self.check_replicas(meta.name, len(ids), acked)
                else:
                    ids = await self.script("PUBLISH")(keys=keys, args=args)
        except Exception as exc:
            self.raise_if_missing(meta.name, exc)
            raise
        return list(ids)

    def _wait_command(self) -> tuple[str, int, int]:
        return ("WAIT", self.settings.wait_replicas, self.settings.wait_timeout_ms)

    def check_replicas(self, topic: str, written: int, acked: Any) -> None:
        """Raise OperationTimeoutError when WAIT saw fewer replicas than ``wait_replicas``."""
        wanted = self.settings.wait_replicas
        if int(acked) >= wanted:
            return
        raise OperationTimeoutError(
            f"publish to {topic!r} on {self.settings.url}: {written} record(s) were written "
            f"to the primary, but only {int(acked)} of the {wanted} replica(s) asked for "
            f"(wait_replicas) acknowledged them within wait_timeout_ms="
            f"{self.settings.wait_timeout_ms}. They may be lost if the primary fails over "
            "now; publishing them again may store them twice (at-least-once)."
        )

    async def _append_packed(
        self, meta: TopicMeta, records: Sequence[Outgoing], parts: Sequence[int]
    ) -> list[bytes]:
        """The PUBLISH script on one pooled connection, packed here, in pipelined calls of
        PUBLISH_SLICE records: the server appends one slice while the next is packed."""
        try:
            with self.edge(f"publish to {meta.name!r}"):
                try:
                    return await self._send_slices(await self.sha("PUBLISH"), meta, records, parts)
                except NoScriptError:  # a restart, SCRIPT FLUSH or failover emptied the cache
                    self.forget_sha("PUBLISH")  # nothing ran: load it and send again
                    return await self._send_slices(await self.sha("PUBLISH"), meta, records, parts)
                except (ReadOnlyError, RedisConnectionError) as exc:
                    if not demoted(self.settings, exc):
                        raise
                    # the node was demoted (failover): it wrote nothing; the connection was
                    # dropped and the next one asks the Sentinels for the new primary
                    return await self._send_slices(await self.sha("PUBLISH"), meta, records, parts)
        except Exception as exc:
            self.raise_if_missing(meta.name, exc)
            raise

    async def _send_slices(
        self, sha: bytes, meta: TopicMeta, records: Sequence[Outgoing], parts: Sequence[int]
    ) -> list[bytes]:
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            calls = 0
            minid = meta.minid().encode()
            for lo in range(0, len(records), PUBLISH_SLICE):
                chunk = records[lo : lo + PUBLISH_SLICE]
                chunk_parts = parts[lo : lo + PUBLISH_SLICE]
                used = sorted(set(chunk_parts))
                index = {p: i + 1 for i, p in enumerate(used)}
                body, bulks = layout.resp_publish_args(chunk, [index[p] for p in chunk_parts])
                keys = [layout.stream_key(meta.name, p) for p in used]
                head = layout.resp_command(
                    [b"EVALSHA", sha, str(len(keys)).encode(), *keys, minid], bulks
                )
                await conn.send_packed_command([head, *body], check_health=calls == 0)
                calls += 1
            wait = self.settings.wait_replicas > 0
            if wait:  # in the same round trip: WAIT counts this connection's writes
                await conn.send_packed_command(conn.pack_command(*self._wait_command()))
            ids: list[bytes] = []
            for _ in range(calls):
                ids += await conn.read_response()
            if wait:
                self.check_replicas(meta.name, len(ids), await conn.read_response())
            return ids
        except BaseException:
            # replies may be left unread (an error reply, a cancel): never reuse the socket
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def raise_if_missing(self, topic: str, exc: BaseException) -> None:
        """Turn the scripts' EBNOSTREAM error into TopicNotFoundError (and forget the topic)."""
        if "EBNOSTREAM" in str(exc):
            self.forget(topic)
            raise TopicNotFoundError(
                f"topic {topic!r} was deleted on {self.settings.url} (a partition stream is "
                "missing); create it again"
            ) from None
