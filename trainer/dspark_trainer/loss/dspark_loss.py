"""The DSpark loss (docs/model.md, "Loss") and the sum-reducible statistics behind the metrics.

    total = ce_alpha * CE + l1_alpha * L1 + confidence_alpha * Confidence
    term  = world_size * sum(w * term) / D          (D: the global denominator, see ``weights``)

The ``world_size`` factor undoes the mean the data-parallel gradient reduction takes, so the
gradient equals that of one process running the whole optimizer step. A term whose weight is 0 is
not computed and does not need its inputs (CE-only training runs without ``target_last_hidden``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dspark_trainer.config.draft import DraftSettings
from dspark_trainer.loss.vocab import VocabRows, vocab_loss_fused, vocab_terms

TERMS = ("ce", "l1", "confidence")


_DRAFT_FIELDS = DraftSettings.model_fields


@dataclass(frozen=True)
class LossWeights:
    """The alphas of the three terms (defaults: the draft settings')."""

    ce: float = _DRAFT_FIELDS["ce_alpha"].default
    l1: float = _DRAFT_FIELDS["l1_alpha"].default
    confidence: float = _DRAFT_FIELDS["confidence_alpha"].default

    @property
    def needs_target(self) -> bool:
        return self.l1 > 0 or self.confidence > 0

    def by_term(self) -> tuple[tuple[str, float], ...]:
        """``(name, alpha)`` of each term, in ``TERMS`` order."""
        return (("ce", self.ce), ("l1", self.l1), ("confidence", self.confidence))


@dataclass
class LossOutput:
    """``loss`` to backward; ``terms`` its detached parts (alpha not applied); ``stats`` sum-reducible sums."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def dspark_loss(
    *,
    hidden: torch.Tensor,
    markov_feats: torch.Tensor | None,
    conf_logits: torch.Tensor | None,
    labels: torch.Tensor,
    weights: torch.Tensor,
    eval_mask: torch.Tensor,
    block_keep_mask: torch.Tensor,
    anchors: torch.Tensor,
    lm_head: torch.Tensor,
    markov_w2: torch.Tensor | None,
    target_last_hidden: torch.Tensor | None,
    alphas: LossWeights,
    denominator: float | torch.Tensor | None = None,
    world_size: int = 1,
    chunk_size: int | None = 1024,
    fused: bool = True,
    dedupe_target: bool = True,
    compile_rows: bool | None = None,
    info: dict[str, float] | None = None,
) -> LossOutput:
    """Loss and statistics of one micro-batch.

    Shapes: ``hidden [B, A, K, H]``, ``markov_feats [B, A, K, r]``, ``conf_logits [B, A, K]``, ``labels``,
    ``weights``, ``eval_mask [B, A, K]``, ``anchors``/``block_keep_mask [B, A]``, ``target_last_hidden [B, T, H]``.
    ``denominator`` is the global ``sum(w)`` of the optimizer step (default: this micro-batch's own).
    Only positions with ``eval_mask`` are projected onto the vocabulary.

    With ``chunk_size`` and ``fused`` (the default) the CE and L1 terms and their gradient are computed in
    one chunked pass (``vocab_loss_fused``: the LM head runs 2x for the draft and at most 1x for the
    target, each distinct target position once per chunk with ``dedupe_target``); ``fused=False`` keeps
    the chunked autograd path that recomputes the logits in backward; ``chunk_size=None`` the unchunked
    reference. ``info`` (optional) receives ``target_rows`` / ``draft_rows`` (vocabulary rows projected).
    """
    bsz, _, k, hid = hidden.shape
    if alphas.needs_target and target_last_hidden is None:
        raise ValueError(
            "target_last_hidden is required when the L1 or confidence term has a weight > 0 "
            f"(l1_alpha={alphas.l1}, confidence_alpha={alphas.confidence})"
        )
    if alphas.confidence > 0 and conf_logits is None:
        raise ValueError("confidence_alpha > 0 but the model has no confidence head")
    flat_sel = eval_mask.reshape(-1).nonzero(as_tuple=False).squeeze(1)
    h_sel = hidden.reshape(-1, hid).index_select(0, flat_sel)
    f_sel = None if markov_feats is None else markov_feats.reshape(-1, markov_feats.shape[-1]).index_select(0, flat_sel)
    y_sel = labels.reshape(-1).index_select(0, flat_sel)
    rows_sel = VocabRows(h=h_sel, lm_head=lm_head, labels=y_sel, feats=f_sel, markov_w2=markov_w2)
    w_sel = weights.reshape(-1).index_select(0, flat_sel).float()
    t_sel = flat_t = t_rows = None
    if target_last_hidden is not None:
        seq_len = target_last_hidden.shape[1]
        # the target's distribution for label index a + j + 1 comes from position a + j
        pos = (anchors.unsqueeze(-1) + torch.arange(k, device=anchors.device)).clamp(max=seq_len - 1)
        rows = (torch.arange(bsz, device=anchors.device).view(-1, 1, 1) * seq_len + pos).reshape(-1)
        flat_t = target_last_hidden.reshape(-1, target_last_hidden.shape[-1])
        t_rows = rows.index_select(0, flat_sel)

    local_w = w_sel.sum()
    denom = local_w.detach() if denominator is None else torch.as_tensor(denominator, device=hidden.device)
    scale = float(world_size) / denom.float().clamp(min=1e-12)  # a step without positions: loss 0, not NaN

    fused_loss = None
    if chunk_size and fused:
        w_scaled = w_sel.detach() * scale
        ce_coef = w_scaled * alphas.ce if alphas.ce > 0 else torch.zeros_like(w_scaled)
        tv_coef = w_scaled * alphas.l1 if (alphas.l1 > 0 and flat_t is not None) else torch.zeros_like(w_scaled)
        fv = vocab_loss_fused(rows_sel, ce_coef, tv_coef, flat_t, t_rows,
                              chunk_size=chunk_size, dedupe_target=dedupe_target, compile_rows=compile_rows)
        vt, fused_loss = fv.terms, fv.loss
        if info is not None:
            info["target_rows"] = float(fv.target_rows)
    else:
        if flat_t is not None and t_rows is not None:
            t_sel = flat_t.index_select(0, t_rows)
        vt = vocab_terms(rows_sel, t_sel, chunk_size=chunk_size)
        if info is not None:
            info["target_rows"] = float(0 if t_sel is None else t_sel.shape[0])
    if info is not None:
        info["draft_rows"] = float(h_sel.shape[0])

    sums: dict[str, torch.Tensor] = {"ce": (w_sel * vt.ce).sum()}
    c_star = None
    if vt.tv is not None:
        sums["l1"] = (w_sel * vt.tv).sum()
        c_star = (1.0 - 0.5 * vt.tv.detach()).clamp(0.0, 1.0)
    conf_sel = None
    if conf_logits is not None:
        conf_sel = conf_logits.reshape(-1).index_select(0, flat_sel).float()
        if c_star is not None:
            bce = F.binary_cross_entropy_with_logits(conf_sel, c_star, reduction="none")
            sums["confidence"] = (w_sel * bce).sum()

    loss = hidden.new_zeros((), dtype=torch.float32)
    if fused_loss is not None:
        # CE and L1 (already weighted, scaled and differentiable) come from the fused pass
        if alphas.confidence > 0:
            loss = loss + alphas.confidence * sums["confidence"]
        loss = loss * scale + fused_loss
    else:
        for name, alpha in alphas.by_term():
            if alpha > 0:
                loss = loss + alpha * sums[name]
        loss = loss * scale
    terms = {name: (value.detach() * scale) for name, value in sums.items()}

    stats = _stats(sums, local_w, vt.correct, c_star, conf_sel, flat_sel, eval_mask, block_keep_mask)
    return LossOutput(loss=loss, terms=terms, stats=stats)


def _scatter(values: torch.Tensor, flat_sel: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out = torch.zeros(shape.numel(), dtype=torch.float64, device=values.device)
    out.index_copy_(0, flat_sel, values.double())
    return out.view(shape)


def _stats(
    sums: dict[str, torch.Tensor],
    local_w: torch.Tensor,
    correct: torch.Tensor,
    c_star: torch.Tensor | None,
    conf_sel: torch.Tensor | None,
    flat_sel: torch.Tensor,
    eval_mask: torch.Tensor,
    block_keep_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Float64 sums; summed over micro-batches and ranks they give every metric (``metrics.summarize``)."""
    shape = eval_mask.shape
    em = eval_mask.double()
    stats: dict[str, torch.Tensor] = {
        "weight_sum": local_w.detach().double(),
        "positions": em.sum(dim=(0, 1)),
        "blocks": block_keep_mask.double().sum(),
        "acc_sum": _scatter(correct, flat_sel, shape).sum(dim=(0, 1)),
    }
    for name, value in sums.items():
        stats[f"{name}_sum"] = value.detach().double()
    if c_star is not None:
        cs = _scatter(c_star, flat_sel, shape)
        stats["accept_sum"] = cs.sum(dim=(0, 1))
        # tau per valid block: 1 + sum_j prod_{i<=j} c*_i (c* is 0 outside eval_mask, a prefix)
        stats["tau_sum"] = ((1.0 + cs.cumprod(dim=-1).sum(dim=-1)) * block_keep_mask.double()).sum()
        if conf_sel is not None:
            sig = _scatter(torch.sigmoid(conf_sel.detach()), flat_sel, shape)
            stats["conf_abs_sum"] = ((sig - cs).abs() * em).sum()
            stats["conf_bias_sum"] = ((sig - cs) * em).sum()
            stats["conf_cum_bias_sum"] = ((sig.cumprod(dim=-1) - cs.cumprod(dim=-1)) * em).sum()
    return stats
