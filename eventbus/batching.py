"""Budgeted batch consumption: batches whose total weight stays within a budget.

For workers that pay per unit of something (a GPU worker and the tokens of its prompts): each
batch is a list of deliveries whose weights add up to at most ``budget``, filled as closely as
the queued items allow. Built once, in the core, on the transport contract::

    sub = await subscribe_batches(bus, "prompts", group="gpu", budget=8192, weight="tokens")
    async with sub:
        async for batch in sub:
            await run_model([d.event.data for d in batch.deliveries])
            await batch.ack()

Guarantees (on every transport; :mod:`eventbus.testing.batching` checks them):

- **Budget.** ``batch.weight <= batch.budget`` for every batch, except a batch of exactly one
  item whose own weight exceeds the budget: such an item is delivered alone, never stuck.
- **Exclusive.** A member reads only the partitions the group gave it, so an item is in one
  member's batches at a time (until it is acked, nacked, or its visibility timeout passes, as
  for :meth:`~eventbus.aio.AsyncEventBus.subscribe`).
- **Per-key order.** Items of one key (in one partition) are delivered in position order: an
  item that does not fit waits in this member's *remainder* for the next batch, and no later
  item of its key is taken before it. Items without a key may be reordered to fill a batch.
- **Nothing lost.** What was not acked comes back to the group: after ``close()`` at once, after
  a crash (``kill()``) when the session or visibility timeout passes, after ``nack(delay)``.
  Held remainder items that this member did not hand out yet are given back the same way.
- **Bounded wait.** A partial batch waits at most ``max_wait`` seconds for more items; a wait
  that finds nothing yields no batch (iteration just goes on waiting).

Weights come from a header (``weight="tokens"``: read from the record, no payload decoding
needed, and usable by a transport's server-side fast path) or a callable on the decoded
:class:`~eventbus.event.Event`. A weight must be a finite number >= 0; an item whose weight is
missing or invalid (or whose callable raises) goes to the dead-letter topic with the reason,
like an event that does not decode.

The remainder holds items this member fetched but did not hand out yet: at most ``lookahead``
of them, scanned in order to fill each batch (first fit: greedy, oldest first). The oldest held
item always opens the next batch, so nothing starves. On transports that redeliver after the
visibility timeout, a held item older than half of it is given back (nacked, together with the
later held items of its partition, so their order holds) rather than handed out late; that
counts as a delivery in ``attempt``.

Transports may offer a fast path (see :data:`BUDGET_FETCH_FLAG`): a consumer method
``fetch_budget(budget, weight_header, max_items, timeout, allow_oversize)`` that claims new
records only while their header weights fit, atomically on the server, so nothing is
over-claimed into the remainder. It is used when the weight is a header, the transport's
capabilities set the flag and the consumer has the method (or when ``fast_path=True`` is
passed and the method exists).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from eventbus.errors import ClosedError, ConfigurationError, SerializationError, UnsupportedError
from eventbus.event import Event
from eventbus.subscription import (
    AsyncDelivery,
    AsyncSubscription,
    Start,
    SubscribeOptions,
    SubscribingBus,
    lane_of,
)
from eventbus.transport import Record, offset_key

__all__ = [
    "BUDGET_FETCH_FLAG",
    "AsyncBatchSubscription",
    "Batch",
    "BudgetFetcher",
    "Weight",
    "subscribe_batches",
]

Weight = str | Callable[[Event], float]
"""A header name (the weight is that header's value) or a function of the decoded event."""

BUDGET_FETCH_FLAG = "budget_fetch"
"""The :class:`~eventbus.transport.Capabilities` flag naming the optional fast path."""


@runtime_checkable
class BudgetFetcher(Protocol):
    """The optional transport-consumer method behind the fast path (see the module doc)."""

    async def fetch_budget(
        self,
        budget: float,
        weight_header: str,
        max_items: int,
        timeout: float,
        allow_oversize: bool,
    ) -> tuple[list[Record], bool]:
        """Like ``fetch``, but claims *new* records only while their weights (the value of
        header ``weight_header``; missing or invalid counts as 0) add up to at most
        ``budget``, in partition order, atomically on the server: a record that does not fit
        stays unclaimed for the next call, and no partition is read past it. When
        ``allow_oversize`` and nothing else was claimed, one record heavier than ``budget``
        may be claimed alone. Redeliveries (due nacks, records reclaimed from dead or late
        members) come first and regardless of weight. At most ``max_items`` records; waits up
        to ``timeout`` s for the first. Returns ``(records, saturated)``: ``saturated`` is
        True when a queued record was left because it did not fit (waiting cannot fill the
        budget further)."""
        ...


@dataclass(slots=True)
class _Held:
    delivery: AsyncDelivery
    weight: float
    lane: object
    fetched_at: float

    @property
    def record(self) -> Record:
        return self.delivery.record


class Batch:
    """A batch of deliveries whose weights add up to at most ``budget`` (or one oversize item).

    Ack or nack the whole batch, or its deliveries one by one; what is left un-acked comes back
    to the group after the visibility timeout, like any delivery."""

    __slots__ = ("budget", "deliveries", "subscription", "weights")

    def __init__(
        self,
        subscription: AsyncBatchSubscription,
        deliveries: list[AsyncDelivery],
        weights: list[float],
        budget: float,
    ) -> None:
        self.subscription = subscription
        self.deliveries = deliveries
        self.weights = weights
        self.budget = budget

    @property
    def weight(self) -> float:
        """The total weight of the batch."""
        return sum(self.weights)

    @property
    def oversize(self) -> bool:
        """True for a batch of one item heavier than the whole budget."""
        return self.weight > self.budget

    @property
    def events(self) -> list[Event]:
        return [d.event for d in self.deliveries]

    def __len__(self) -> int:
        return len(self.deliveries)

    def __iter__(self) -> Iterator[AsyncDelivery]:
        return iter(self.deliveries)

    async def ack(self) -> None:
        """Ack every delivery of the batch not settled yet, in one call to the transport."""
        open_ = [d for d in self.deliveries if d.claim()]
        if not open_:
            return
        sub = self.subscription.inner
        records = [d.record for d in open_]
        await sub.consumer.ack(records)
        sub.count_records("acked", records)

    async def nack(self, delay: float = 0.0) -> None:
        """Give back every delivery not settled yet; each comes again no sooner than ``delay``
        seconds (a nack gives up per-key order for that item, as for single deliveries)."""
        for d in self.deliveries:
            await d.nack(delay)

    def __repr__(self) -> str:
        return f"<Batch {len(self)} items weight={self.weight:g}/{self.budget:g}>"


class AsyncBatchSubscription:
    """A group member's stream of budgeted batches: ``async for batch in subscription``.

    Wraps one :class:`~eventbus.aio.AsyncSubscription` (``inner``): same group membership,
    decoding, dead-lettering, close and kill. See the module docstring for the guarantees."""

    def __init__(
        self,
        inner: AsyncSubscription,
        *,
        budget: float,
        weight: Weight,
        max_items: int | None,
        max_wait: float,
        lookahead: int,
        hold_limit: float | None,
        fetcher: Callable[..., Awaitable[tuple[list[Record], bool]]] | None,
    ) -> None:
        self.inner = inner
        self.budget = budget
        self.weight = weight
        self.max_items = max_items
        self.max_wait = max_wait
        self.lookahead = lookahead
        self._hold_limit = hold_limit
        self._fetcher = fetcher
        self._held: list[_Held] = []
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def fast_path(self) -> bool:
        """True when the transport's server-side budget fetch is in use."""
        return self._fetcher is not None

    @property
    def held(self) -> int:
        """How many fetched items wait in this member's remainder."""
        return len(self._held)

    # weights and decoding -------------------------------------------------------------------
    def _weigh(self, record: Record, event: Event) -> float:
        """The item's weight; raises ValueError (with the reason) when there is none."""
        if isinstance(self.weight, str):
            raw = record.headers.get(self.weight)
            if raw is None:
                raise ValueError(f"weight header {self.weight!r} is missing")
            try:
                value = float(raw.decode("ascii", "replace").strip())
            except ValueError:
                raise ValueError(
                    f"weight header {self.weight!r} is not a number: {raw!r}"
                ) from None
        else:
            value = float(self.weight(event))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight {value!r} is not a finite number >= 0")
        return value

    async def _admit(self, records: list[Record]) -> list[_Held]:
        sub = self.inner
        sub.note_fetched(records)
        now = time.monotonic()
        out: list[_Held] = []
        for record in records:
            delivery = sub.decode(record)
            if isinstance(delivery, SerializationError):
                await sub.send_to_dead_letter(record, delivery, record.attempt)
                continue
            event = delivery.event
            try:
                weight = self._weigh(record, event)
            except Exception as exc:
                await sub.send_to_dead_letter(record, f"no weight: {exc}", record.attempt)
                continue
            out.append(_Held(delivery, weight, lane_of(record), now))
        return out

    def _merge(self, items: list[_Held]) -> None:
        """Add fetched items to the remainder, keeping each partition in position order. An
        item already held (redelivered while held) replaces the held copy in place."""
        for item in items:
            tp = (item.record.topic, item.record.partition)
            key = offset_key(item.record.offset)
            at = len(self._held)
            for i, held in enumerate(self._held):
                r = held.record
                if (r.topic, r.partition) != tp:
                    continue
                k = offset_key(r.offset)
                if k == key:
                    at = -1
                    self._held[i] = item
                    break
                if k > key:
                    at = min(at, i)
                    break
            if at >= 0:
                self._held.insert(at, item)

    async def _release_stale(self) -> None:
        """Give back held items older than the hold limit (half of ``max_lease``), with the
        later held items of their partitions, so that none is handed out near its lease's end."""
        if self._hold_limit is None or not self._held:
            return
        cutoff = time.monotonic() - self._hold_limit
        stale_parts = {
            (h.record.topic, h.record.partition) for h in self._held if h.fetched_at < cutoff
        }
        if not stale_parts:
            return
        keep: list[_Held] = []
        for held in self._held:
            if (held.record.topic, held.record.partition) in stale_parts:
                await held.delivery.nack(0.0)
            else:
                keep.append(held)
        self._held = keep

    # filling --------------------------------------------------------------------------------
    def _fill(self, batch: list[_Held], total: float) -> float:
        """Move items from the remainder into ``batch`` (first fit, oldest first, never past a
        held item of the same lane). Returns the new total."""
        blocked: set[object] = set()
        keep: list[_Held] = []
        for held in self._held:
            full = self.max_items is not None and len(batch) >= self.max_items
            solo = len(batch) == 1 and batch[0].weight > self.budget
            if full or solo or held.lane in blocked:
                keep.append(held)
                blocked.add(held.lane)
                continue
            if total + held.weight <= self.budget or not batch:
                batch.append(held)
                total += held.weight
            else:
                keep.append(held)
                blocked.add(held.lane)
        self._held = keep
        return total

    def _done(self, batch: list[_Held], total: float) -> bool:
        if batch and batch[0].weight > self.budget:
            return True
        if self.max_items is not None and len(batch) >= self.max_items:
            return True
        return total >= self.budget

    async def _pull(
        self, batch: list[_Held], total: float, timeout: float
    ) -> tuple[list[Record], bool]:
        """Fetch more: ``(records, saturated)``, saturated when the fast path left queued
        records because they did not fit."""
        room = max(1, self.lookahead - len(self._held))
        consumer = self.inner.consumer
        if self._fetcher is not None and isinstance(self.weight, str):
            if self.max_items is not None:
                room = max(1, min(room, self.max_items - len(batch)))
            return await self._fetcher(
                max(0.0, self.budget - total),
                self.weight,
                room,
                timeout,
                not batch and not self._held,
            )
        return await consumer.fetch(room, timeout), False

    async def fetch(self, max_wait: float | None = None) -> Batch | None:
        """The next batch, or None when nothing came within ``max_wait`` seconds (default:
        the subscription's). Returns as soon as the batch is full (budget reached, or
        ``max_items``), or when held items are left over and no more are queued; otherwise
        waits up to ``max_wait`` for items to fill it and then returns the partial batch."""
        if self._closed:
            raise ClosedError("this batch subscription is closed")
        wait = self.max_wait if max_wait is None else max(0.0, max_wait)
        async with self._lock:
            await self._release_stale()
            deadline = time.monotonic() + wait
            batch: list[_Held] = []
            total = self._fill(batch, 0.0)
            while not self._done(batch, total) and not self._closed:
                # held items left over: the queue has more than fits, so only top up with
                # what is queued already (no waiting); otherwise wait for items to fill
                eager = bool(self._held)
                if eager and len(self._held) >= self.lookahead:
                    break
                remaining = 0.0 if eager else deadline - time.monotonic()
                if remaining <= 0 and not eager and batch:
                    break
                records, saturated = await self._pull(batch, total, max(0.0, remaining))
                if records:
                    self._merge(await self._admit(records))
                    total = self._fill(batch, total)
                if saturated or (not records and (eager or time.monotonic() >= deadline)):
                    break
        if not batch or self._closed:
            return None
        return Batch(self, [h.delivery for h in batch], [h.weight for h in batch], self.budget)

    # iteration and lifecycle ----------------------------------------------------------------
    def __aiter__(self) -> AsyncBatchSubscription:
        return self

    async def __anext__(self) -> Batch:
        while not self._closed:
            try:
                batch = await self.fetch()
            except ClosedError:
                if self._closed:
                    break
                raise
            if batch is not None:
                return batch
        raise StopAsyncIteration

    async def close(self) -> None:
        """Leave the group: acked items are committed; the rest (including held items) go back
        to the group at once."""
        if not self._closed:
            self._closed = True
            self._held.clear()
            await self.inner.close()

    async def kill(self) -> None:
        """Stop as a crashed process would (tests and drills): nothing is committed; held and
        un-acked items come back to the group after the session or visibility timeout."""
        self._closed = True
        self._held.clear()
        await self.inner.kill()

    async def __aenter__(self) -> AsyncBatchSubscription:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _check_settings(
    budget: float, weight: Weight, max_items: int | None, max_wait: float, lookahead: int | None
) -> None:
    if not (isinstance(budget, int | float) and math.isfinite(budget) and budget > 0):
        raise ConfigurationError(f"budget={budget!r}: give a finite number > 0")
    if not (isinstance(weight, str) and weight) and not callable(weight):
        raise ConfigurationError(
            "weight must be a header name (str) or a callable taking the decoded Event"
        )
    if max_items is not None and max_items < 1:
        raise ConfigurationError(f"max_items={max_items!r}: give at least 1, or None")
    if max_wait < 0:
        raise ConfigurationError(f"max_wait={max_wait!r}: give seconds >= 0")
    if lookahead is not None and lookahead < 1:
        raise ConfigurationError(f"lookahead={lookahead!r}: give at least 1, or None")


def _fetcher(
    sub: AsyncSubscription, weight: Weight, fast_path: bool | None
) -> Callable[..., Awaitable[tuple[list[Record], bool]]] | None:
    method = getattr(sub.consumer, "fetch_budget", None)
    flagged = bool(getattr(sub.bus.capabilities, BUDGET_FETCH_FLAG, False))
    if fast_path is False:
        return None
    if fast_path is True:
        if not isinstance(weight, str):
            raise ConfigurationError("fast_path=True needs a header weight (weight='name')")
        if method is None:
            raise UnsupportedError(
                f"{sub.bus.capabilities.transport} has no server-side budget fetch "
                f"(capability {BUDGET_FETCH_FLAG} is false); use fast_path=None"
            )
        return method  # type: ignore[no-any-return]
    if isinstance(weight, str) and flagged and method is not None:
        return method  # type: ignore[no-any-return]
    return None


async def subscribe_batches(
    bus: SubscribingBus,
    topics: str | Sequence[str],
    *,
    group: str,
    budget: float,
    weight: Weight,
    max_items: int | None = None,
    max_wait: float = 1.0,
    consumer: str | None = None,
    model: type[BaseModel] | None = None,
    start: Start = "earliest",
    dead_letter: str | bool = True,
    visibility_timeout: float = 30.0,
    session_timeout: float = 10.0,
    lookahead: int | None = None,
    fast_path: bool | None = None,
    options: Mapping[str, str] | None = None,
    max_lease: float = 3600.0,
) -> AsyncBatchSubscription:
    """Join ``group`` and return an async iterator of :class:`Batch` es (see the module doc).

    ``budget``: the most total weight per batch. ``weight``: a header name or a callable on
    the decoded event. ``max_items``: at most this many items per batch. ``max_wait``: seconds
    a partial batch waits to fill. ``lookahead``: the most fetched items held to fill batches
    (default 64, or ``2 * max_items`` when larger). ``fast_path``: None uses the transport's
    server-side budget fetch where its capabilities offer it (header weights only); False
    never; True requires it. The rest is as for :meth:`AsyncEventBus.subscribe`.

    Raises ConfigurationError for bad settings, and what ``subscribe`` raises."""
    _check_settings(budget, weight, max_items, max_wait, lookahead)
    reading = SubscribeOptions.pick(locals())  # the keyword arguments above
    names = (topics,) if isinstance(topics, str) else tuple(topics)
    sub = await bus.subscribe_with(names, group, reading)
    try:
        fetcher = _fetcher(sub, weight, fast_path)
    except BaseException:
        await sub.close()
        raise
    if lookahead is None:
        lookahead = max(64, 2 * (max_items or 0))
    return AsyncBatchSubscription(
        sub,
        budget=float(budget),
        weight=weight,
        max_items=max_items,
        max_wait=max_wait,
        lookahead=lookahead,
        # held items stay leased to this member; do not hand one out close to its max_lease
        hold_limit=max_lease / 2,
        fetcher=fetcher,
    )
