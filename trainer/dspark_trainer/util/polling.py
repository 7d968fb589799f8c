"""Poll a predicate until it answers or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
    error: type[Exception] = TimeoutError,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Calls `predicate` until it returns something truthy (returned) or `timeout` seconds pass.

    Exceptions from the predicate count as "not yet" (the last one is named in the error), except
    those in `fatal`, which end the wait at once. On timeout raises `error` with a message naming
    `what`, followed by the text of `on_timeout()` when given.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except fatal:
            raise
        except Exception as e:  # "not yet"
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise error(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)
