"""How an exported draft is served: its format, the weights it ships and their dtype, and what each engine
cannot serve (checked against the sources of the pinned engine versions, see docs/model.md).

| trained | format written | SGLang | vLLM |
| --- | --- | --- | --- |
| ``markov_rank > 0``, vanilla head | DSPARK: ``Qwen3DSparkModel``, ``block_size`` K | ``DSPARK`` | ``dspark`` |
| gated / rnn head | DSPARK | ``DSPARK`` | cannot load it (warning) |
| ``markov_rank == 0`` (DFlash) | DFLASH: ``DFlashDraftModel``, ``block_size`` K + 1 | ``DFLASH`` | ``dflash`` |
| target layer id -1 | either | refuses negative ids (warning) | captures it (aux layer 0) |

Both engines take the embedding and the LM head from the target (SGLang's loaders skip a draft's
copies, vLLM shares the target's unless the draft's differ), so an export leaves them out unless asked.
Tensors are cast to the serving dtype (bf16 by default): SGLang's ``--dtype auto`` turns a float32
checkpoint into float16, not into the dtype it was trained in. The confidence head stays float32, the
dtype both engines build it in.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import torch

from dspark_trainer.config.draft import MarkovHeadType
from dspark_trainer.model.config import ARCHITECTURE, DSparkModelConfig
from dspark_trainer.model.layout import query_rows

SGLANG_VERSION = "0.5.23"
VLLM_VERSION = "0.34.0"
"""The engine versions whose draft loaders the formats were checked against."""

DFLASH_ARCHITECTURE = "DFlashDraftModel"
FROZEN_WEIGHTS = ("embed_tokens.weight", "lm_head.weight")
"""The target's embedding and LM head, copied into the draft for training and never trained."""
FLOAT32_PREFIXES = ("confidence_head.",)
"""Weights both engines build in float32 whatever the serving dtype."""
SERVING_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                                          "float32": torch.float32}


class ServingFormat(StrEnum):
    """The speculative algorithm (and checkpoint layout) that serves a draft."""

    DSPARK = "dspark"
    DFLASH = "dflash"


def serving_format(cfg: DSparkModelConfig) -> ServingFormat:
    """DFLASH for a draft without a Markov head (plain DFlash), DSPARK otherwise."""
    return ServingFormat.DSPARK if cfg.markov_rank > 0 else ServingFormat.DFLASH


def serving_warnings(cfg: DSparkModelConfig) -> list[str]:
    """What an engine cannot serve of this draft, one sentence each (empty when both engines serve it)."""
    out: list[str] = []
    if serving_format(cfg) == ServingFormat.DSPARK and cfg.markov_head_type != MarkovHeadType.VANILLA:
        out.append(
            f"vLLM {VLLM_VERSION} cannot serve this draft: its dspark draft has a vanilla Markov head only "
            f"(markov_w1, markov_w2) and refuses the {cfg.markov_head_type} head's weights; serve it with SGLang "
            "(--speculative-algorithm DSPARK)"
        )
    if any(i < 0 for i in cfg.target_layer_ids):
        out.append(
            f"SGLang {SGLANG_VERSION} cannot serve this draft: it refuses negative target_layer_ids (-1, the "
            "embedding output); serve it with vLLM, which captures the embedding output as aux layer 0"
        )
    return out


def shipped_weight_names(cfg: DSparkModelConfig, names: list[str], *, include_frozen: bool) -> list[str]:
    """The weights an export of this draft writes (sorted), out of the full set ``names``."""
    frozen = set(FROZEN_WEIGHTS) if not include_frozen else set()
    return sorted(n for n in names if n not in frozen)


def serving_state(
    state: Mapping[str, torch.Tensor],
    cfg: DSparkModelConfig,
    *,
    dtype: torch.dtype | None,
    include_frozen: bool,
) -> dict[str, torch.Tensor]:
    """The tensors to write: without the frozen embedding / LM head unless ``include_frozen``, cast to ``dtype``
    (None keeps each tensor's), the confidence head kept in float32 when ``dtype`` is a 16-bit type."""
    if include_frozen:
        absent = [n for n in FROZEN_WEIGHTS if n not in state]
        if absent:
            raise ValueError(
                f"the draft has no {absent}: it was exported without the frozen weights; give the target "
                "(dspark export --target DIR) to include them, or leave export.includeFrozenWeights off"
            )
    out: dict[str, torch.Tensor] = {}
    for name in shipped_weight_names(cfg, list(state), include_frozen=include_frozen):
        t = state[name].detach()
        if dtype is not None:
            keep32 = name.startswith(FLOAT32_PREFIXES) and dtype in (torch.bfloat16, torch.float16)
            t = t.to(torch.float32 if keep32 else dtype)
        out[name] = t.to("cpu").contiguous()
    return out


def serving_config(cfg: DSparkModelConfig, *, dtype_name: str) -> dict[str, Any]:
    """The ``config.json`` of the export in its serving format (DFLASH: ``block_size`` counts the anchor row)."""
    data = cfg.to_checkpoint_config(dtype=dtype_name)
    data.pop("is_causal", None)  # absent: both engines attend non-causally within a block, as trained
    if serving_format(cfg) == ServingFormat.DFLASH:
        rows = query_rows(cfg)
        data["architectures"] = [DFLASH_ARCHITECTURE]
        data["block_size"] = rows
        data["dflash_config"] = {**data["dflash_config"], "block_size": rows}
    return data


def model_config_from_serving(data: Mapping[str, Any]) -> DSparkModelConfig:
    """The ``DSparkModelConfig`` of an export's ``config.json`` (either format)."""
    arch = data.get("architectures")
    if arch == [DFLASH_ARCHITECTURE]:
        if int(data.get("markov_rank", 0) or 0) != 0:
            raise ValueError(f"a {DFLASH_ARCHITECTURE} config with markov_rank {data.get('markov_rank')}")
        trained = copy.deepcopy(dict(data))
        rows = int((trained.get("dflash_config") or {}).get("block_size", trained.get("block_size", 0)))
        trained["block_size"] = rows - 1
        trained["dflash_config"] = {**(trained.get("dflash_config") or {}), "block_size": rows - 1}
        trained["architectures"] = [ARCHITECTURE]
        return DSparkModelConfig.from_checkpoint_config(trained)
    if arch != [ARCHITECTURE]:
        raise ValueError(f"architectures is {arch}, expected [{ARCHITECTURE!r}] or [{DFLASH_ARCHITECTURE!r}]")
    cfg = DSparkModelConfig.from_checkpoint_config(dict(data))
    if cfg.markov_rank == 0:
        raise ValueError(
            f"a {ARCHITECTURE} config with markov_rank 0: written before such drafts trained and exported in the "
            "DFLASH layout (its anchor row predicts, which no DFLASH engine runs); train it again"
        )
    return cfg


def dtype_name_of(state: Mapping[str, torch.Tensor]) -> str:
    """The checkpoint's ``torch_dtype``: the dtype of most of its elements (float32 when unknown)."""
    count: dict[torch.dtype, int] = {}
    for t in state.values():
        count[t.dtype] = count.get(t.dtype, 0) + t.numel()
    best = max(count, key=lambda d: count[d]) if count else torch.float32
    return next((k for k, v in SERVING_DTYPES.items() if v == best), "float32")
