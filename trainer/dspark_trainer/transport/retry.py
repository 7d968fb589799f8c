"""Exponential back-off with jitter and a deadline."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays `initial, initial*multiplier, ...` capped at `maximum`, each scaled by 1 +/- `jitter`."""

    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    attempt: int = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.multiplier**self.attempt)
        self.attempt += 1
        return max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self.attempt = 0


class Deadline:
    """A point in monotonic time."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def sleep(self, delay: float) -> bool:
        """Sleep `delay` (cut to the deadline); False if the deadline has passed."""
        if self.expired:
            return False
        time.sleep(min(delay, self.remaining))
        return True
