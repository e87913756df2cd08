"""Quickstart: publish typed events and handle them in a consumer group.

Runs on the embedded in-memory transport by default; pass a URL to use a real server:
    python examples/quickstart.py                      # memory://
    python examples/quickstart.py redis://127.0.0.1:6379/0
    python examples/quickstart.py kafka://127.0.0.1:9092
"""

from __future__ import annotations

import sys
import threading
import uuid

from pydantic import BaseModel

import eventbus


class TaskCreated(BaseModel):
    task_id: int
    title: str


def main(url: str) -> None:
    topic = f"tasks-{uuid.uuid4().hex[:6]}"
    with eventbus.connect(url) as bus:
        bus.create_topic(topic, partitions=3)
        events = [
            eventbus.Event(data=TaskCreated(task_id=i, title=f"task {i}"), key=f"agent-{i % 4}")
            for i in range(20)
        ]
        positions = bus.publish_many(topic, events)
        print(f"published {len(positions)} events to {topic}; first at {positions[0]}")

        done = threading.Event()
        handled: list[int] = []

        def handle(delivery: eventbus.Delivery) -> None:
            task: TaskCreated = delivery.event.data
            handled.append(task.task_id)
            if len(handled) == len(events):
                done.set()

        runner = bus.runner(handle, topic, group="workers", model=TaskCreated, concurrency=4)
        worker = threading.Thread(target=runner.run)
        worker.start()
        done.wait(30)
        runner.stop()
        worker.join()
        print(f"handled {len(handled)} events in group 'workers' (per-key order kept)")
        info = bus.describe_group("workers")
        print(f"group lag: {info.lag}, pending: {info.pending}")
        bus.delete_topic(topic)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "memory://")
