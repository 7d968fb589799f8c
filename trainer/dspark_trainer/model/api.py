"""Public API of the DSpark draft model (documented in docs/model.md).

Training (what the trainer runtime calls)::

    model = build_draft_model(target_dir, options, device=dev)              # frozen embed/lm_head from the target
    anchors, keep = sample_anchors(loss_mask, model.config.num_anchors, seeds=batch.seeds)
    d_local = local_denominator(loss_mask, anchors, keep, model.config.block_size, model.config.gamma)
    d_global = global_denominator([d_local_1, d_local_2, ...], device=dev)   # all micro-batches, all ranks
    out = model(input_ids, target_hidden, loss_mask, anchors, keep, target_last_hidden,
                denominator=float(d_global), world_size=world)
    out.loss.backward();  stats = accumulate_stats(total, out.stats)
    metrics = summarize(all_reduce_stats(total), model.loss_weights)
    export_draft(model, "/output/draft")        # FSDP2: export_checkpoint(full_state, model_config, dir)

Inspection of a trained draft::

    model = load_draft("/output/draft")
    out, metrics = evaluate_batch(model, input_ids, target_hidden, loss_mask, anchors, target_last_hidden=...)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.loss.dspark_loss import LossWeights
from dspark_trainer.loss.metrics import DSparkMetrics, summarize
from dspark_trainer.model.checkpoint import (
    export_checkpoint,
    has_frozen_weights,
    import_checkpoint,
    read_checkpoint_config,
)
from dspark_trainer.model.config import DSparkModelConfig, resolve_model_config_from_dir
from dspark_trainer.model.draft import DraftOutput, DSparkDraftModel
from dspark_trainer.model.masks import AttentionBackend
from dspark_trainer.model.target_weights import load_vocab_weights

log = logging.getLogger(__name__)


def build_draft_model(
    target_dir: str | Path,
    options: DraftOptions,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
    target_layer_ids: list[int] | None = None,
    attention_backend: AttentionBackend = "auto",
    loss_chunk_size: int | None = 1024,
    config: DSparkModelConfig | None = None,
    strict_init_from: bool = True,
) -> DSparkDraftModel:
    """A new draft for the target in ``target_dir`` (its ``config.json``, ``tokenizer.json`` for the default
    mask token, and only the embedding and LM head of its safetensors).

    Trainable weights are initialised deterministically from ``seed`` (the same on every rank; None: from
    torch's global generator), then overwritten from ``options.init_from`` (a draft directory) when set, see
    ``load_trainable_weights``. ``embed_tokens`` and ``lm_head`` are frozen (``requires_grad`` False).
    ``target_layer_ids`` overrides the options' rule; ``config`` skips resolving altogether.
    """
    cfg = config or resolve_model_config_from_dir(target_dir, options, target_layer_ids=target_layer_ids)
    model = DSparkDraftModel(cfg, attention_backend=attention_backend, loss_chunk_size=loss_chunk_size)
    if seed is not None:
        model.reset_parameters(seed)
    embed, head = load_vocab_weights(target_dir, dtype=torch.float32)
    model.set_vocab_weights(embed, head)
    if options.init_from:
        load_trainable_weights(model, options.init_from, strict=strict_init_from)
    model.freeze_vocab()
    return model.to(device=device, dtype=dtype)


def load_trainable_weights(model: DSparkDraftModel, draft_dir: str | Path, *, strict: bool = True) -> list[str]:
    """Copy the trainable weights of the draft in ``draft_dir`` into ``model`` (``draft.initFrom``); returns the
    names copied. Its embedding and LM head are ignored (the model keeps the target's).

    ``strict``: every weight must fit (same names and shapes), else ValueError. Otherwise the weights that fit
    are copied (ValueError when none does), with a warning when the two drafts were trained with other options.
    """
    other_cfg, state = import_checkpoint(draft_dir)
    own = model.state_dict()
    names = model.trainable_parameter_names()
    fits = [n for n in names if n in state and tuple(state[n].shape) == tuple(own[n].shape)]
    if strict and len(fits) < len(names):
        bad = [n for n in names if n not in fits]
        raise ValueError(
            f"draft.initFrom {draft_dir}: its weights do not fit this draft (first mismatches: {bad[:5]}); "
            f"it has {other_cfg.num_draft_layers} layers, markov {other_cfg.markov_head_type}/{other_cfg.markov_rank}"
        )
    if not fits:
        raise ValueError(f"draft.initFrom: {draft_dir} has no weights that fit this draft")
    if not strict and other_cfg.model_dump(exclude={"base_config"}) != model.config.model_dump(exclude={"base_config"}):
        log.warning("draft.initFrom %s was trained with other options; loading the weights that fit", draft_dir)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n in fits:
            params[n].copy_(state[n])
    log.info("initialised %d of %d trainable tensors from %s", len(fits), len(names), draft_dir)
    return fits


def load_draft(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    attention_backend: AttentionBackend = "auto",
    loss_chunk_size: int | None = 1024,
    target_dir: str | Path | None = None,
) -> DSparkDraftModel:
    """A draft from a checkpoint directory (DSPARK or DFLASH format), in the stored dtypes (bit-identical
    weights) unless ``dtype``. An export without the frozen embedding / LM head needs ``target_dir`` (the
    target model directory) to take them from, as the serving engines do."""
    cfg, state = import_checkpoint(path)
    if not has_frozen_weights(state):
        if target_dir is None:
            raise ValueError(
                f"{path} was exported without the frozen embedding and LM head (the serving engines take them from "
                "the target): pass target_dir=<the target model directory> to load it"
            )
        like = state["fc.weight"].dtype
        embed, head = load_vocab_weights(target_dir, dtype=torch.float32)
        state = {**state, "embed_tokens.weight": embed.to(like), "lm_head.weight": head.to(like)}
    model = DSparkDraftModel(cfg, attention_backend=attention_backend, loss_chunk_size=loss_chunk_size)
    stored = {t.dtype for t in state.values()}
    if len(stored) == 1:
        model.to(next(iter(stored)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if tuple(param.shape) != tuple(state[name].shape):
                raise ValueError(f"{name}: {tuple(state[name].shape)} in the checkpoint, {tuple(param.shape)} expected")
            if param.dtype != state[name].dtype:
                param.data = state[name].clone()
            else:
                param.copy_(state[name])
    model.freeze_vocab()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)


def export_draft(
    model: DSparkDraftModel, out_dir: str | Path, *, dtype: torch.dtype | None = None, include_frozen: bool = True
) -> Path:
    """Write ``model`` as a checkpoint directory in its serving format (unsharded models; with FSDP2 gather a
    full state dict and call ``export_checkpoint(state, model_config, out_dir)``). For serving:
    ``dtype=torch.bfloat16, include_frozen=False`` (what the trainer's job export writes by default)."""
    return export_checkpoint(model.state_dict(), model.config, out_dir, dtype=dtype, include_frozen=include_frozen)


def evaluate_batch(
    model: DSparkDraftModel,
    input_ids: torch.Tensor,
    target_hidden: torch.Tensor,
    loss_mask: torch.Tensor,
    anchors: torch.Tensor,
    block_keep_mask: torch.Tensor | None = None,
    target_last_hidden: torch.Tensor | None = None,
    *,
    return_logits: bool = False,
) -> tuple[DraftOutput, DSparkMetrics]:
    """Outputs, loss and metrics of one batch with explicit anchors (no gradient; ``model.eval()`` not needed:
    the draft has no dropout). Without ``target_last_hidden``, the L1/confidence terms are skipped."""
    weights = model.loss_weights
    if target_last_hidden is None:
        weights = LossWeights(ce=weights.ce, l1=0.0, confidence=0.0)
    with torch.no_grad():
        out = model(
            input_ids, target_hidden, loss_mask, anchors, block_keep_mask, target_last_hidden,
            return_logits=return_logits, alphas=weights,
        )
    return out, summarize(out.stats, weights)


def draft_config_of(path: str | Path) -> DSparkModelConfig:
    """The configuration of a draft directory without reading its weights."""
    return read_checkpoint_config(path)
