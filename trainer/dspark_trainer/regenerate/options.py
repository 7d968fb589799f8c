"""Settings of a regeneration run: sampling (the published recipe's defaults), retries, and the run itself."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspark_trainer.config.regenerate import RegenerateSettings

RECIPE = RegenerateSettings()  # the published DSpark recipe's sampling and the run's defaults


@dataclass(frozen=True)
class SamplingParams:
    """What every chat request asks for. ``extra_body`` is merged into each request (e.g. SGLang's ``min_p``)."""

    temperature: float = RECIPE.temperature
    top_p: float = RECIPE.top_p
    top_k: int = RECIPE.top_k
    max_tokens: int = RECIPE.max_tokens
    enable_thinking: bool = RECIPE.enable_thinking
    seed: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 0, got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def request_fields(self) -> dict[str, Any]:
        """The sampling part of a chat request body (without ``model``, ``messages`` and ``seed``)."""
        body: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "chat_template_kwargs": {"enable_thinking": self.enable_thinking},
            "stream": False,
        }
        body.update(self.extra_body)
        return body

    def request_seed(self, index: int, turn: int) -> int | None:
        """A per-request seed derived from the run seed, the sample's input index and the turn (reruns repeat)."""
        if self.seed is None:
            return None
        digest = hashlib.sha256(f"{self.seed}:{index}:{turn}".encode()).hexdigest()
        return int(digest[:8], 16) & 0x7FFFFFFF

    def to_record(self) -> dict[str, Any]:
        """The sampling parameters as written into every output record and the manifest."""
        rec = self.request_fields()
        rec.pop("stream", None)
        if self.seed is not None:
            rec["seed"] = self.seed
        return rec


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request: exponential back-off with jitter, ``max_retries`` after the first try."""

    max_retries: int = RECIPE.max_retries
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("back-off times must be >= 0")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): base * 2^(retry-1), capped, times [0.5, 1)."""
        raw = min(self.backoff_max_s, self.backoff_base_s * (2 ** max(0, retry - 1)))
        return raw * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True)
class RunOptions:
    """One ``dspark data regenerate`` run."""

    input: str
    output: Path
    endpoints: tuple[str, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    model: str | None = None
    shard_size: int = RECIPE.shard_size
    workers: int = RECIPE.workers
    concurrency_per_endpoint: int = 32
    request_timeout_s: float = RECIPE.request_timeout_seconds
    wait_endpoints_s: float = 300.0
    reject_truncated: bool = RECIPE.reject_truncated
    ray_address: str | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one --endpoint is needed")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.concurrency_per_endpoint < 1:
            raise ValueError(f"--concurrency-per-endpoint must be >= 1, got {self.concurrency_per_endpoint}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"--request-timeout must be > 0, got {self.request_timeout_s}")
