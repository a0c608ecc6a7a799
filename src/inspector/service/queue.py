"""A bounded work queue in front of a few worker threads: admission control and two stages.

Why threads: onnxruntime and FAISS release the GIL, so on a 2-core line PC one or two workers use the CPU
fully while the event loop stays free to accept, reject and answer requests. Why bounded: a line camera
must get its answer within the takt time or not at all; when `workers + queue_size` requests are already
admitted, the next one gets 503 + Retry-After at once instead of waiting behind a growing queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from inspector.service.errors import Unavailable
from inspector.service.metrics import ServiceMetrics

R = TypeVar("R")
T = TypeVar("T")


class WorkQueue:
    """Admission control in front of two stages: `workers` threads compute, one thread persists.

    At most `workers + queue_size` requests are admitted at any time. A worker hands its result to the store
    thread and takes the next image at once, so inference never waits for fsync; the single store thread
    also keeps SQLite writes in one place.
    """

    def __init__(self, workers: int, queue_size: int, metrics: ServiceMetrics) -> None:
        self.capacity = workers + queue_size
        self.metrics = metrics
        self._compute = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect")
        self._persist = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet answered."""
        return self._admitted

    @property
    def full(self) -> bool:
        return self._admitted >= self.capacity

    async def run(self, compute: Callable[[float], R], persist: Callable[[R], T]) -> T:
        """`persist(compute(queue_ms))` on the two stages. The slot is freed when the work really ends, not when
        the client goes away, so abandoned requests still count against the bound while they use the CPU."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise queue_full()
            self._admitted += 1
            self._update()
        done: Future[T] = Future()
        done.set_running_or_notify_cancel()  # a vanished client cannot cancel it: the slot stays taken until the end
        done.add_done_callback(self._release)
        try:
            first = self._compute.submit(self._timed, compute, time.perf_counter())
        except RuntimeError:  # pools shut down: the service is stopping
            done.set_exception(Unavailable("service is shutting down", "shutting_down", retry_after=5))
        else:
            first.add_done_callback(lambda f: self._hand_over(f, persist, done))
        return await asyncio.wrap_future(done)

    def _timed(self, compute: Callable[[float], R], enqueued: float) -> R:
        with self._lock:
            self._running += 1
            self._update()
        try:
            return compute((time.perf_counter() - enqueued) * 1e3)
        finally:
            with self._lock:
                self._running -= 1

    def _hand_over(self, first: Future[R], persist: Callable[[R], T], done: Future[T]) -> None:
        try:
            second = self._persist.submit(persist, first.result())
        except BaseException as exc:  # compute failed (bad image, ...), was cancelled, or the store pool is down
            done.set_exception(exc)
            return
        second.add_done_callback(lambda f: _settle(done, f))

    def _release(self, _: object) -> None:
        with self._lock:
            self._admitted -= 1
            self._update()

    def _update(self) -> None:
        self.metrics.queue_depth.set(self._admitted - self._running)
        self.metrics.in_flight.set(self._admitted)

    def shutdown(self) -> None:
        """Finish what was admitted (requests already waiting get their answer), then stop."""
        self._compute.shutdown(wait=True)
        self._persist.shutdown(wait=True)


def queue_full() -> Unavailable:
    """The answer when `workers + queue_size` requests are already admitted."""
    return Unavailable("inspection queue is full; retry shortly", "queue_full", retry_after=1)


def _settle(done: Future[T], source: Future[T]) -> None:
    exc = source.exception()
    if exc is None:
        done.set_result(source.result())
    else:
        done.set_exception(exc)
