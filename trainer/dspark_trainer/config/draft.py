"""User-facing DSpark draft options (the `draft` section of a job), with the published defaults.

These are target-independent. The trainer resolves them against the target's Hugging Face
config into the full model configuration (see ``dspark_trainer.model.config``).
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from dspark_trainer.config.base import ConfigModel

QWEN3_MASK_TOKEN_ID = 151669
"""Qwen3's mask token id: the first embedding row after its tokenizer's 151669 tokens."""


def default_target_layer_ids(num_layers: int, count: int = 5) -> list[int]:
    """The default target layers: ``count`` ids evenly spaced from 1 to ``num_layers - 3`` (rounded).

    Reproduces the published choices, ``[1, 9, 17, 25, 33]`` for 36 layers and ``[1, 10, 19, 28, 37]``
    for 40. One layer gives the middle layer. The last target layers are never used.
    """
    if count < 1:
        raise ValueError(f"draft.numTargetLayersCaptured: must be >= 1, got {count}")
    if count == 1:
        if num_layers < 2:
            raise ValueError(f"the target has {num_layers} layers; a draft needs a target with at least 2")
        return [num_layers // 2]
    start, end = 1, num_layers - 3
    if end - start + 1 < count:
        raise ValueError(
            f"the target has {num_layers} layers: too few to capture {count} distinct layers between 1 and "
            f"num_layers-3={end}; lower draft.numTargetLayersCaptured or give draft.targetLayerIds"
        )
    span = end - start
    return [round(start + i * span / (count - 1)) for i in range(count)]


def check_target_layer_ids(ids: list[int], num_layers: int | None = None) -> None:
    """Raise ValueError unless ``ids`` are strictly increasing and each in ``[-1, num_layers - 2]``.

    -1 is the embedding output; ``num_layers - 1`` (the last layer) must not be used. Without ``num_layers``
    (the target not known yet) only the lower bound is checked.
    """
    if not ids:
        raise ValueError("draft.targetLayerIds: must not be empty; omit it to use the default rule")
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise ValueError(f"draft.targetLayerIds: must be strictly increasing, got {ids}")
    if num_layers is None:
        if ids[0] < -1:
            raise ValueError(f"draft.targetLayerIds: ids must be >= -1 (-1 is the embedding), got {ids}")
        return
    bad = [i for i in ids if i < -1 or i > num_layers - 2]
    if bad:
        raise ValueError(
            f"draft.targetLayerIds: {bad} out of range for a target with {num_layers} layers; ids must be in "
            f"[-1, {num_layers - 2}] (-1 is the embedding output; the last layer {num_layers - 1} is not used)"
        )


def sglang_layer_problem(ids: list[int] | None) -> str | None:
    """Why SGLang cannot capture ``ids`` (it refuses the embedding output, -1), or None."""
    if ids is None or all(i >= 0 for i in ids):
        return None
    return (
        f"{ids}: SGLang cannot capture the embedding output (-1), nor serve a draft that reads it; use layer ids "
        ">= 0, or inference.engine: reference (the draft is then served by vLLM only)"
    )


class MarkovHeadType(StrEnum):
    """Kind of low-rank Markov head that adds a previous-token bias to the draft logits."""

    VANILLA = "vanilla"
    GATED = "gated"
    RNN = "rnn"


class DraftSettings(ConfigModel):
    """The draft's shape and loss settings: the fields the job's ``draft`` section (``DraftOptions``) and a
    resolved draft (``DSparkModelConfig``, a checkpoint's config) share. Defaults are the published Qwen3-8B
    recipe."""

    block_size: int = Field(7, ge=1, le=64, description="Tokens drafted per block (K).")
    num_draft_layers: int = Field(5, ge=1, le=64, description="Decoder layers in the draft model.")
    num_anchors: int = Field(
        512, ge=1, le=16384, description="Anchor positions sampled per training sample (A)."
    )
    markov_head_type: MarkovHeadType = Field(
        MarkovHeadType.VANILLA,
        description="Markov head kind: vanilla, gated or rnn (gated and rnn are served by SGLang only, not vLLM).",
    )
    markov_rank: int = Field(
        256, ge=0, le=8192,
        description="Markov head rank r; 0 disables the head (a DFlash draft, exported for and served by DFLASH).",
    )
    enable_confidence_head: bool = Field(True, description="Train the per-slot confidence head.")
    confidence_head_with_markov: bool = Field(
        True, description="Feed the Markov embedding of the previous token to the confidence head."
    )
    ce_alpha: float = Field(0.1, ge=0.0, description="Weight of the cross-entropy term.")
    l1_alpha: float = Field(0.9, ge=0.0, description="Weight of the total-variation (L1) term.")
    confidence_alpha: float = Field(1.0, ge=0.0, description="Weight of the confidence BCE term.")
    gamma: float = Field(4.0, gt=0.0, description="Position weight decay: w_j = exp(-j / gamma).")

    @model_validator(mode="after")
    def _check_heads_and_loss(self) -> Self:
        if self.markov_rank == 0 and self.enable_confidence_head:
            raise ValueError(
                "draft.enableConfidenceHead: a draft with markovRank 0 is served by DFLASH, which has no confidence "
                "head; set enableConfidenceHead: false and confidenceAlpha: 0, or give a markovRank"
            )
        if self.ce_alpha + self.l1_alpha + self.confidence_alpha <= 0:
            raise ValueError("draft: at least one of ceAlpha, l1Alpha, confidenceAlpha must be > 0")
        if self.confidence_alpha > 0 and not self.enable_confidence_head:
            raise ValueError(
                "draft.confidenceAlpha: is > 0 but enableConfidenceHead is false; set confidenceAlpha: 0"
            )
        return self


class DraftOptions(DraftSettings):
    """DSpark draft architecture and loss options (the job's ``draft`` section): the settings plus how to
    pick the target layers and the mask token, resolved against the target by ``model.config``."""

    target_layer_ids: list[int] | None = Field(
        None,
        description=(
            "Target layers whose outputs feed the draft, strictly increasing; -1 is the embedding "
            "output (captured by the reference engine only, served by vLLM only). Default: evenly spaced from 1 "
            "to num_layers-3 of the target."
        ),
    )
    num_target_layers_captured: int = Field(
        5, ge=1, le=64, description="How many target layers to capture when targetLayerIds is not set (L)."
    )
    mask_token_id: int | None = Field(
        None, ge=0, description="Token id used for the masked draft slots. Default: the target's (Qwen3: 151669)."
    )
    init_from: str | None = Field(
        None, description="Draft checkpoint directory to initialise the trainable weights from."
    )

    @model_validator(mode="after")
    def _check_layer_ids(self) -> DraftOptions:
        if self.target_layer_ids is not None:
            check_target_layer_ids(self.target_layer_ids)
        return self

    def resolve_target_layer_ids(self, num_layers: int) -> list[int]:
        """The target layers to capture for a target with ``num_layers`` layers (explicit or default), checked."""
        if self.target_layer_ids is not None:
            ids = list(self.target_layer_ids)
        else:
            ids = default_target_layer_ids(num_layers, self.num_target_layers_captured)
        check_target_layer_ids(ids, num_layers)
        return ids

    @classmethod
    def dflash(cls) -> DraftOptions:
        """The DFlash baseline: no Markov head, no confidence head, CE loss only."""
        return cls(
            markov_rank=0,
            enable_confidence_head=False,
            confidence_head_with_markov=False,
            ce_alpha=1.0,
            l1_alpha=0.0,
            confidence_alpha=0.0,
        )
