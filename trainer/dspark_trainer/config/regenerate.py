"""The settings of a dataset regeneration (``dspark data regenerate``) shared by the CRD's ``dataset.regenerate``
and the command itself: the published DSpark recipe's sampling (temperature 0.7, top_p 0.8, top_k 20, thinking
disabled), output shards, workers and retries. Pydantic only."""

from __future__ import annotations

from pydantic import Field

from dspark_trainer.config.base import ConfigModel


class RegenerateSettings(ConfigModel):
    """Sampling, sharding and retries of a regeneration run; the defaults are the published recipe's."""

    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(0.8, gt=0, le=1, description="Nucleus sampling probability (top_p).")
    top_k: int = Field(20, ge=-1, le=1_000_000, description="Top-k sampling; -1 turns it off.")
    max_tokens: int = Field(2048, ge=1, le=131072, description="Longest generated assistant turn, in tokens.")
    enable_thinking: bool = Field(
        False, description="Let the target think (chat_template_kwargs.enable_thinking); the recipe disables it."
    )
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Base seed of the per-request seeds (a rerun samples the same turns)."
    )
    reject_truncated: bool = Field(
        False, description="Drop a sample (to rejects/) when one of its turns hits maxTokens; default: keep it."
    )
    shard_size: int = Field(
        1000, ge=1, le=1_000_000, description="Samples per output shard (the unit of commit and resume)."
    )
    workers: int = Field(2, ge=1, le=64, description="Shards regenerated at a time (Ray actors).")
    max_retries: int = Field(
        5, ge=0, le=100, description="Retries of a failed request (exponential back-off, then the sample is rejected)."
    )
    request_timeout_seconds: float = Field(600.0, gt=0, le=86400, description="Timeout of one chat request.")
