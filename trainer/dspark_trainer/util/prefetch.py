"""Run an iterator ahead of its consumer in a background thread (e.g. tokenisation ahead of training)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_PUT_POLL_S = 0.1  # how often a blocked producer looks at the stop flag


class ThreadPrefetch(Generic[T]):
    """Iterate ``source`` in a daemon thread, at most ``depth`` items ahead. Items keep their order; an
    exception raised by ``source`` is raised by ``next`` in the consumer, after the items before it.
    ``close()`` (or leaving a ``with`` block) stops the producer at its next item."""

    def __init__(self, source: Iterable[T], depth: int, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iter(source),), name=name, daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(("error", exc))
            return
        self._put(("done", None))

    def _put(self, entry: tuple[str, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> ThreadPrefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value  # type: ignore[return-value]
        self._finished = True
        if kind == "error":
            assert isinstance(value, BaseException)
            raise value
        raise StopIteration

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> ThreadPrefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
