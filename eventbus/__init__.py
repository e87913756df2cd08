"""eventbus: one API for events on Redis Streams, Kafka / Redpanda and memory.

>>> import eventbus
>>> with eventbus.connect("memory://") as bus:
...     bus.create_topic("tasks", partitions=3)
...     position = bus.publish("tasks", {"id": 1}, key="task-1")

``connect(url)`` gives the blocking :class:`EventBus`, ``connect_async(url)`` the
:class:`AsyncEventBus`; the URL scheme picks the transport. Errors live in
:mod:`eventbus.errors`; the transport contract for adapters in :mod:`eventbus.transport`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from eventbus import errors
from eventbus.aio import AsyncDelivery, AsyncEventBus, AsyncSubscription, Replayed, connect_async
from eventbus.errors import EventBusError
from eventbus.event import Codec, Event, JsonCodec
from eventbus.partitioning import partition_for_key
from eventbus.runner import AsyncRunner, RunnerStats
from eventbus.sync import Delivery, EventBus, Runner, Subscription, connect
from eventbus.topics import Plan, StreamLayout, TopicSpec
from eventbus.transport import Capabilities, GroupInfo, Position, TopicInfo

try:
    __version__ = version("eventbus")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "AsyncDelivery",
    "AsyncEventBus",
    "AsyncRunner",
    "AsyncSubscription",
    "Capabilities",
    "Codec",
    "Delivery",
    "Event",
    "EventBus",
    "EventBusError",
    "GroupInfo",
    "JsonCodec",
    "Plan",
    "Position",
    "Replayed",
    "Runner",
    "RunnerStats",
    "StreamLayout",
    "Subscription",
    "TopicInfo",
    "TopicSpec",
    "__version__",
    "connect",
    "connect_async",
    "errors",
    "partition_for_key",
]
