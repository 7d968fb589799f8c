"""ThreadPrefetch keeps order, hands on the source's error after the items before it, and stops on close."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from dspark_trainer.util.polling import poll_until
from dspark_trainer.util.prefetch import ThreadPrefetch


def test_items_arrive_in_order_and_the_end_repeats() -> None:
    it = ThreadPrefetch(range(100), depth=3)
    assert list(it) == list(range(100))
    with pytest.raises(StopIteration):
        next(it)


def test_the_sources_error_comes_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("broken record")

    it = ThreadPrefetch(source(), depth=8)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(KeyError, match="broken record"):
        next(it)


def test_the_producer_stays_at_most_depth_ahead_and_stops_on_close() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10_000):
            produced.append(i)
            yield i

    it = ThreadPrefetch(source(), depth=4, name="test-prefetch")
    assert next(it) == 0
    poll_until(lambda: len(produced) >= 5, timeout=10, what="the producer to fill the queue", interval=0.01)
    assert len(produced) <= 1 + 4 + 1  # consumed + queued + the one waiting to be put
    it.close()
    assert not any(t.name == "test-prefetch" for t in threading.enumerate())


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThreadPrefetch([], depth=0)
