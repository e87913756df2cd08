"""Publish throughput: eventbus (Lua batch) vs a pipelined-XADD variant vs raw redis-py.

Run: python tests/redis/bench_publish.py [redis://127.0.0.1:16379/0] (not collected by pytest).
Prints events/s for a batch of 10,000 records of 100 bytes each, best of 5 runs.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from redis.asyncio import Redis

from eventbus.adapters.redis_streams import RedisTransport
from eventbus.adapters.redis_streams import _layout as layout
from eventbus.topics import TopicSpec
from eventbus.transport import Outgoing

N = 10_000
PAYLOAD = b"x" * 100


async def best(label: str, run: object, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await run()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    rate = N / min(times)
    print(f"{label:<42} {rate:>10,.0f} events/s  ({min(times) * 1000:.1f} ms per batch)")
    return rate


async def main(url: str) -> None:
    transport = RedisTransport.from_url(url, {})
    await transport.connect()
    raw = Redis.from_url(url)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    await transport.create_topic(TopicSpec(name=topic, partitions=1))
    records = [Outgoing(PAYLOAD, headers={"eb-id": uuid.uuid4().hex.encode()}) for _ in range(N)]
    plain = [{"v": PAYLOAD} for _ in range(N)]
    try:

        async def eventbus_lua() -> None:
            await transport.publish(topic, records, timeout=30)

        async def eventbus_style_pipeline() -> None:
            pipe = raw.pipeline(transaction=False)
            for record in records:
                fields = layout.encode_fields(record)
                pipe.xadd(topic, dict(zip(fields[::2], fields[1::2], strict=True)), nomkstream=True)
            await pipe.execute()

        async def raw_pipeline() -> None:
            pipe = raw.pipeline(transaction=False)
            for fields in plain:
                pipe.xadd(topic, fields)  # type: ignore[arg-type]
            await pipe.execute()

        await best("eventbus publish (Lua, 1000/call)", eventbus_lua)
        await best("same fields, pipelined XADD (no MULTI)", eventbus_style_pipeline)
        await best("raw redis-py pipelined XADD {'v': 100B}", raw_pipeline)
    finally:
        await transport.delete_topic(topic)
        await transport.close()
        await raw.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:16379/0"))
