"""The Redis Cluster client: redis-py's, riding out slot migrations (resharding).

While a slot moves, its keys sit on two nodes: the old owner answers ``ASK`` for keys already
moved, and a command over several keys of the slot (a script, XREADGROUP over a member's
streams) gets ``TRYAGAIN`` until every key has moved. redis-py follows ``MOVED``, ``ASK`` and
``TRYAGAIN`` up to 16 times in a row, quickly, and then raises ``ClusterError("TTL
exhausted.")``; its ``ASKING`` may also go out on another pooled connection than the command it
is for, so a command can bounce between the two nodes until that limit. None of those attempts
ran the command, so it is sent again here, with a growing pause, for up to ``socket_timeout``
seconds (the time a command may take anyway); after that the error goes to the edge, which
raises ``OperationTimeoutError`` saying that the slot is being migrated.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster

from eventbus.adapters.redis_streams._errors import slot_in_migration

__all__ = ["MigrationTolerantCluster"]

_FIRST_PAUSE = 0.01
_LONGEST_PAUSE = 0.2


class MigrationTolerantCluster(RedisCluster):
    """``RedisCluster`` whose commands (pipelines resend redirected ones through
    ``execute_command`` too) are sent again while their slot is being migrated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._migration_wait = float(kwargs.get("socket_timeout") or 10.0)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        deadline: float | None = None
        pause = _FIRST_PAUSE
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except (rx.ClusterError, rx.ResponseError) as exc:
                if not slot_in_migration(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._migration_wait
                if now + pause > deadline:
                    raise
            await asyncio.sleep(pause)  # the migration moves keys meanwhile
            pause = min(pause * 2, _LONGEST_PAUSE)
