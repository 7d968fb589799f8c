"""The progress document: served as JSON at /progress and sent (the fields of the job's
``status.progress``, ``dspark_trainer.config.progress.Progress``; throttled) through the status reporter.
Keys are snake_case here; the reporter writes the camelCase status fields."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from dspark_trainer.config.progress import REPORTED_FIELDS, TrainerState


@dataclass
class ProgressDocument:
    """Where the run stands: the status.progress fields and more (loss terms, learning rate, memory, ...)."""

    state: str = TrainerState.STARTING.value
    step: int = 0
    total: int = 0
    epoch: float = 0.0
    samples: int = 0
    tokens: int = 0
    skipped_samples: int = 0
    loss: float | None = None
    loss_terms: dict[str, float] = field(default_factory=dict)
    tau: float | None = None
    accept_rate: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    sim_acc_len: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    throughput: float | None = None  # samples per second, recent
    tokens_per_second: float | None = None
    gpu_memory_peak_bytes: int | None = None  # max over ranks; None on CPU
    last_checkpoint: str | None = None
    last_checkpoint_step: int | None = None
    checkpoint_ack: str | None = None
    draft_path: str | None = None
    draft_uri: str | None = None
    message: str | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # speculative decoding of the export (the job's `evaluation:`)
    world_size: int = 1
    started_time: float = field(default_factory=time.time)
    updated_time: float = field(default_factory=time.time)


class ProgressBoard:
    """Thread-safe holder of the current progress (the HTTP thread reads, the loop writes)."""

    def __init__(self, window: int = 20) -> None:
        self._lock = threading.Lock()
        self._progress = ProgressDocument()
        self._recent: deque[tuple[float, int, int]] = deque(maxlen=window)  # (time, samples, tokens)

    def update(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                if not hasattr(self._progress, key):
                    raise AttributeError(f"ProgressDocument has no field {key}")
                setattr(self._progress, key, value)
            self._progress.updated_time = time.time()

    def record_throughput(self, samples: int, tokens: int, now: float | None = None) -> None:
        """Feed the cumulative counters after a step; keeps a recent-window rate."""
        now = time.time() if now is None else now
        with self._lock:
            self._recent.append((now, samples, tokens))
            if len(self._recent) >= 2:
                t0, s0, k0 = self._recent[0]
                dt = max(1e-9, now - t0)
                self._progress.throughput = (samples - s0) / dt
                self._progress.tokens_per_second = (tokens - k0) / dt

    def reset_throughput(self) -> None:
        with self._lock:
            self._recent.clear()

    def snapshot(self) -> ProgressDocument:
        with self._lock:
            return ProgressDocument(**asdict(self._progress))

    def as_json(self) -> dict[str, Any]:
        return asdict(self.snapshot())

    def status_fields(self) -> dict[str, Any]:
        """The subset for the job's status.progress, without unset values."""
        doc = self.as_json()
        return {key: doc[key] for key in REPORTED_FIELDS if doc.get(key) is not None and doc.get(key) != []}
