"""SIGTERM / SIGINT handling: the first signal requests a graceful stop (checkpoint, then exit) at the
next step boundary; all ranks agree on it through an all-reduce in the train loop."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """Set by a signal (or by code); checked by the train loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def set(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.signal_name = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def install(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Route the given signals to this request (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.set(signal.Signals(signum).name)

        for sig in signals:
            signal.signal(sig, handler)
