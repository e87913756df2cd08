"""In-memory transport: the reference implementation of the transport contract.

Features: partitions with int offsets, consumer groups whose members own partitions (assigned
round-robin over live members, as Kafka's group coordinator would), pending records with
delivery counts, redelivery after nack delay, visibility timeout or member death, replay by
offset and time, retention by time and size, lag, atomic dead-lettering.

Leases as the contract states them: each member's background task heartbeats and renews the
pending entries it holds (their ``delivered_at``, from which the visibility timeout counts), so
a record waiting in the application or in a slow handler is never due for redelivery while its
member lives; renewal stops at ``max_lease``. ``release`` makes an entry due at once with its
delivery count one lower, so the next delivery has the same ``attempt``.

Connection string: ``memory://`` (the default broker of this process) or ``memory://NAME`` (a
named one). Every connection to the same URL in one process shares one broker, so two buses
see each other's events, as two clients of one server would. Options (query string or
``options``): ``auto_create=true`` creates unknown topics (1 partition) on publish.

Safe under threads and asyncio: the broker is guarded by one lock, and waiting consumers on any
event loop are woken with ``call_soon_threadsafe``.
"""

from __future__ import annotations

from eventbus.adapters.memory._broker import CAPABILITIES
from eventbus.adapters.memory._consumer import MemoryConsumer
from eventbus.adapters.memory._transport import MemoryTransport

__all__ = ["CAPABILITIES", "MemoryConsumer", "MemoryTransport"]
