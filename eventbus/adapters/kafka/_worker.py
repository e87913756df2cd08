"""The thread that owns a librdkafka client: jobs run in order, results come back as
asyncio futures (librdkafka clients are not to be shared across threads)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("eventbus.kafka")
T = TypeVar("T")


class Worker:
    """One thread running jobs in order; results come back as asyncio futures.

    ``tick`` (optional) runs on the thread before every job and whenever it idled for the
    seconds ``tick`` last returned (None: until the next job)."""

    def __init__(self, name: str, tick: Callable[[], float | None] | None = None) -> None:
        self._jobs: queue.Queue[
            tuple[Callable[[], Any], asyncio.Future[Any] | concurrent.futures.Future[Any]] | None
        ] = queue.Queue()
        self._tick = tick
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._run_tick())
            except queue.Empty:
                continue
            if job is None:
                return
            fn, future = job
            try:
                result = fn()
            except BaseException as exc:
                self._settle(future, None, exc)
            else:
                self._settle(future, result, None)

    def _run_tick(self) -> float | None:
        if self._tick is None:
            return None
        try:
            return self._tick()
        except Exception as exc:  # the thread must go on serving jobs
            log.warning("consumer keepalive failed (tried again in 1 s): %r", exc)
            return 1.0

    @staticmethod
    def _settle(
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        result: Any,
        exc: BaseException | None,
    ) -> None:
        if isinstance(future, concurrent.futures.Future):  # fire and forget
            if exc is not None:
                log.warning("background job failed: %r", exc)
            return

        def settle() -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            future.get_loop().call_soon_threadsafe(settle)

    def submit(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the thread without waiting for it (errors are logged)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, future))

    async def run(self, fn: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        return await future

    def stop(self) -> None:
        self._jobs.put(None)
