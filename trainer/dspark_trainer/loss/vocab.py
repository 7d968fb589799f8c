"""Per-position vocabulary terms: cross-entropy, total variation against the target, top-1 agreement.

For ``N`` positions with draft hidden ``h [N, H]``, Markov features ``f [N, r]`` (optional), labels
and the target's final hidden ``t [N, H]`` (optional):

    logits = h @ lm_head^T + f @ W2^T                       (float32)
    ce     = logsumexp(logits) - logits[label]
    tv     = sum_v |softmax(logits) - softmax(t @ lm_head^T)|  (the "L1" term; c* = 1 - tv / 2)
    correct = argmax(logits) == label

The inputs travel together as ``VocabRows``. ``vocab_terms_reference`` does this with plain autograd over
all positions at once (``[N, V]`` float32 tensors are kept for backward). ``vocab_terms_chunked`` is a
custom autograd function that processes ``chunk_size`` positions at a time in forward and recomputes the
logits chunk by chunk in backward, so the largest temporaries are ``[chunk_size, V]`` and nothing of size
``[N, V]`` is saved. ``vocab_loss_fused`` (the training path) forms the gradient in the forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class VocabTerms:
    """Per-position outputs; ``ce`` and ``tv`` are differentiable float32 ``[N]``."""

    ce: torch.Tensor
    tv: torch.Tensor | None
    correct: torch.Tensor  # [N] bool


def _mm_f32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w^T`` as float32, from inputs in ``w``'s dtype.

    bf16/fp16 inputs on CUDA: one matmul with a float32 output (no fp32 copy of ``w``); under autograd
    (the unchunked reference only) both are upcast instead. On CPU: the low-precision product, upcast.
    """
    if x.dtype != w.dtype:
        x = x.to(w.dtype)
    if w.dtype == torch.float32:
        return x @ w.t()
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return x.float() @ w.float().t()
    if x.is_cuda:
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    return (x @ w.t()).float()


def draft_logits(
    h: torch.Tensor, feats: torch.Tensor | None, lm_head: torch.Tensor, markov_w2: torch.Tensor | None
) -> torch.Tensor:
    """``[N, V]`` float32 draft logits with the Markov bias."""
    logits = _mm_f32(h, lm_head)
    if feats is not None and markov_w2 is not None:
        logits = logits + _mm_f32(feats, markov_w2)
    return logits


def target_probs(target_hidden: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
    """``p_t = softmax(lm_head(target_last_hidden))`` in float32, ``[N, V]``."""
    return torch.softmax(_mm_f32(target_hidden, lm_head), dim=-1)


@dataclass(frozen=True)
class VocabRows:
    """The ``N`` rows projected onto the vocabulary: draft hidden ``h [N, H]``, the LM head ``lm_head [V, H]``,
    ``labels [N]`` and, both or neither, the Markov features ``feats [N, r]`` with their weight
    ``markov_w2 [V, r]``."""

    h: torch.Tensor
    lm_head: torch.Tensor
    labels: torch.Tensor
    feats: torch.Tensor | None = None
    markov_w2: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.feats is None) != (self.markov_w2 is None):
            raise ValueError("Markov features and markov_w2 must be given together")
        if self.h.dim() != 2:
            raise ValueError(f"hidden must be [N, H], got {tuple(self.h.shape)}")

    def logits(self) -> torch.Tensor:
        """``[N, V]`` float32 draft logits of all rows."""
        return draft_logits(self.h, self.feats, self.lm_head, self.markov_w2)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(h, feats, lm_head, markov_w2, labels)``: the leading inputs of the chunked autograd functions."""
        return self.h, self.feats, self.lm_head, self.markov_w2, self.labels


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each chunk of ``size`` rows out of ``n``."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _row_buffers(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row ``ce`` (float32), ``tv`` (float32 zeros) and ``correct`` (bool) outputs for ``n`` rows."""
    ce = torch.empty(n, dtype=torch.float32, device=device)
    tv = torch.zeros(n, dtype=torch.float32, device=device)
    correct = torch.empty(n, dtype=torch.bool, device=device)
    return ce, tv, correct


def _chunk_logits(
    h: torch.Tensor, feats: torch.Tensor | None, lm_head: torch.Tensor, markov_w2: torch.Tensor | None,
    target_hidden: torch.Tensor | None, start: int, end: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float32 draft logits of rows ``start:end`` and the target's logits of the same rows (None: no target)."""
    logits = draft_logits(h[start:end], None if feats is None else feats[start:end], lm_head, markov_w2)
    t_logits = None if target_hidden is None else _mm_f32(target_hidden[start:end], lm_head)
    return logits, t_logits


@dataclass
class _InputGrads:
    """Gradients of ``logits = h @ lm_head^T + feats @ markov_w2^T`` for its inputs (None: not needed);
    the weight gradients accumulate in float32."""

    h: torch.Tensor | None
    feats: torch.Tensor | None
    lm_head: torch.Tensor | None
    markov_w2: torch.Tensor | None

    @classmethod
    def allocate(
        cls, needs: Sequence[bool], h: torch.Tensor, feats: torch.Tensor | None, lm_head: torch.Tensor,
        markov_w2: torch.Tensor | None,
    ) -> _InputGrads:
        need_h, need_f, need_w, need_w2 = needs[:4]
        return cls(
            h=torch.empty_like(h) if need_h else None,
            feats=torch.empty_like(feats) if (need_f and feats is not None) else None,
            lm_head=torch.zeros(lm_head.shape, dtype=torch.float32, device=h.device) if need_w else None,
            markov_w2=(
                torch.zeros(markov_w2.shape, dtype=torch.float32, device=h.device)
                if (need_w2 and markov_w2 is not None) else None
            ),
        )

    def add_chunk(
        self, grad_logits: torch.Tensor, start: int, end: int, h: torch.Tensor, feats: torch.Tensor | None,
        lm_head: torch.Tensor, markov_w2: torch.Tensor | None, *, float32_weights: bool,
    ) -> None:
        """Back-propagate ``grad_logits`` of rows ``start:end``; ``float32_weights`` forms the weight gradients
        from float32 copies of the rows (else in the rows' dtype)."""
        h_c = h[start:end]
        f_c = None if feats is None else feats[start:end]
        if self.h is not None:
            self.h[start:end] = _mm_out(grad_logits, lm_head, h.dtype)
        if self.feats is not None and f_c is not None and markov_w2 is not None:
            self.feats[start:end] = _mm_out(grad_logits, markov_w2, f_c.dtype)
        if self.lm_head is not None:
            self.lm_head += _mm_out(grad_logits.t(), h_c.float() if float32_weights else h_c, torch.float32)
        if self.markov_w2 is not None and f_c is not None:
            self.markov_w2 += _mm_out(grad_logits.t(), f_c.float() if float32_weights else f_c, torch.float32)


def vocab_terms_reference(rows: VocabRows, target_hidden: torch.Tensor | None = None) -> VocabTerms:
    """Unchunked autograd reference (materialises ``[N, V]`` float32 tensors)."""
    with torch.autocast(rows.h.device.type, enabled=False):
        logits = rows.logits()
        logp = torch.log_softmax(logits, dim=-1)
        ce = -logp.gather(1, rows.labels.view(-1, 1)).squeeze(1)
        correct = logits.detach().argmax(dim=-1) == rows.labels
        tv = None
        if target_hidden is not None:
            pt = target_probs(target_hidden, rows.lm_head.detach()).detach()
            tv = (logp.exp() - pt).abs().sum(dim=-1)
    return VocabTerms(ce=ce, tv=tv, correct=correct)


class _ChunkedVocabTerms(torch.autograd.Function):
    """Forward: the per-row terms chunk by chunk, nothing ``[N, V]`` kept. Backward: recomputes each chunk's
    logits and takes the upstream ``g_ce`` / ``g_tv`` as the per-row coefficients of ``_row_terms``."""

    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        feats: torch.Tensor | None,
        lm_head: torch.Tensor,
        markov_w2: torch.Tensor | None,
        labels: torch.Tensor,
        target_hidden: torch.Tensor | None,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ce, tv, correct = _row_buffers(h.shape[0], h.device)
        with torch.no_grad():
            for s, e in _chunks(h.shape[0], chunk_size):
                logits, t_logits = _chunk_logits(h, feats, lm_head, markov_w2, target_hidden, s, e)
                ce[s:e], tv[s:e], correct[s:e], _ = _row_terms(logits, t_logits, None, labels[s:e], None, torch.float32)
                del logits, t_logits
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(h, feats, lm_head, markov_w2, labels, target_hidden)
        ctx.mark_non_differentiable(correct)
        return ce, tv, correct

    @staticmethod
    def backward(
        ctx: Any, g_ce: torch.Tensor, g_tv: torch.Tensor, _g_correct: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        h, feats, lm_head, markov_w2, labels, target_hidden = ctx.saved_tensors
        grads = _InputGrads.allocate(ctx.needs_input_grad, h, feats, lm_head, markov_w2)
        with torch.no_grad(), torch.autocast(h.device.type, enabled=False):
            for s, e in _chunks(h.shape[0], ctx.chunk_size):
                logits, t_logits = _chunk_logits(h, feats, lm_head, markov_w2, target_hidden, s, e)
                coefs = (g_ce[s:e].float(), g_tv[s:e].float())
                *_, grad_logits = _row_terms(logits, t_logits, None, labels[s:e], coefs, torch.float32)
                del logits, t_logits
                if grad_logits is not None:
                    grads.add_chunk(grad_logits, s, e, h, feats, lm_head, markov_w2, float32_weights=True)
                del grad_logits
        return (
            grads.h,
            grads.feats,
            None if grads.lm_head is None else grads.lm_head.to(lm_head.dtype),
            None if grads.markov_w2 is None else grads.markov_w2.to(markov_w2.dtype),
            None,
            None,
            None,
        )


def vocab_terms_chunked(
    rows: VocabRows, target_hidden: torch.Tensor | None = None, *, chunk_size: int = 1024
) -> VocabTerms:
    """Same values and gradients as ``vocab_terms_reference`` with memory bounded by one chunk.

    The target's final hidden state never receives a gradient (it is data).
    """
    _check_chunk_size(chunk_size)
    t = None if target_hidden is None else target_hidden.detach()
    with torch.autocast(rows.h.device.type, enabled=False):
        ce, tv, correct = _ChunkedVocabTerms.apply(*rows.tensors(), t, chunk_size)
    return VocabTerms(ce=ce, tv=tv if target_hidden is not None else None, correct=correct)


# ---- fused loss + gradient (the training path) -----------------------------------------------------


def _row_terms(
    logits: torch.Tensor,
    t_logits: torch.Tensor | None,
    t_index: torch.Tensor | None,
    labels: torch.Tensor,
    coefs: tuple[torch.Tensor, torch.Tensor] | None,
    grad_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row ``ce``, ``tv``, ``correct`` and ``d(sum ce_coef*ce + tv_coef*tv) / d logits`` of one chunk.

    ``logits [c, V]`` float32 draft logits; ``t_logits [u, V]`` float32 target logits and ``t_index [c]``
    the row of ``t_logits`` for each draft row (None: row ``i`` is row ``i``); ``coefs`` the per-row
    ``(ce_coef, tv_coef)`` (None: no gradient). The one home of the per-row math of both chunked paths.
    Written as plain tensor code so that ``torch.compile`` fuses it into a few passes over the ``[c, V]``
    buffers (eager it is ~25).
    """
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    lab = labels.view(-1, 1)
    ce = (lse - logits.gather(1, lab)).squeeze(1)
    correct = logits.argmax(dim=-1) == labels
    p = torch.exp(logits - lse)
    tv = torch.zeros_like(ce)
    grad = None
    if coefs is not None:
        # d ce / d logits = p - onehot(label)
        onehot = torch.arange(logits.shape[1], device=logits.device).view(1, -1) == lab
        grad = coefs[0].view(-1, 1) * (p - onehot.float())
    if t_logits is not None:
        pt = torch.softmax(t_logits, dim=-1)
        if t_index is not None:
            pt = pt[t_index]
        diff = p - pt
        tv = diff.abs().sum(dim=-1)
        if grad is not None and coefs is not None:
            # d tv / d logits = p * (sign(p - pt) - sum_v p * sign(p - pt))
            sgn = torch.sign(diff)
            mean_sgn = (p * sgn).sum(dim=-1, keepdim=True)
            grad = grad + coefs[1].view(-1, 1) * p * (sgn - mean_sgn)
    return ce, tv, correct, None if grad is None else grad.to(grad_dtype)


_COMPILED_ROW_TERMS: Any = None


def _row_terms_fn(device: torch.device, compile_rows: bool | None) -> Any:
    """The compiled ``_row_terms`` on CUDA (default), the eager one elsewhere."""
    global _COMPILED_ROW_TERMS
    use = device.type == "cuda" if compile_rows is None else compile_rows
    if not use:
        return _row_terms
    if _COMPILED_ROW_TERMS is None:
        _COMPILED_ROW_TERMS = torch.compile(_row_terms, dynamic=None)
    return _COMPILED_ROW_TERMS


@dataclass
class FusedVocabLoss:
    """``loss = sum(ce_coef * ce + tv_coef * tv)`` (differentiable scalar) and the per-row terms (detached).

    ``target_rows`` is how many target-logit rows were computed (after de-duplication), for reporting.
    """

    loss: torch.Tensor
    terms: VocabTerms
    target_rows: int = 0


class _FusedVocabLossFn(torch.autograd.Function):
    """Forward computes the loss AND its gradient chunk by chunk; backward only scales the stored gradient.

    The gradient of ``sum_i (a_i ce_i + b_i tv_i)`` with known per-row coefficients ``a``, ``b`` (the loss
    weights, alphas and the global denominator: all known before the forward) needs each chunk's logits
    once, so the LM head runs 2x for the draft (logits, grad of h) and 1x for the target, instead of
    3x and 2x when backward recomputes the logits. Nothing ``[N, V]`` is kept: the saved gradients are
    ``[N, H]`` / ``[N, r]`` (and ``[V, H]`` / ``[V, r]`` for trainable vocab weights).
    """

    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        feats: torch.Tensor | None,
        lm_head: torch.Tensor,
        markov_w2: torch.Tensor | None,
        labels: torch.Tensor,
        target_flat: torch.Tensor | None,
        target_rows: torch.Tensor | None,
        ce_coef: torch.Tensor,
        tv_coef: torch.Tensor,
        chunk_size: int,
        dedupe: bool,
        compile_rows: bool | None,
        out: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = h.device
        want_grad = any(ctx.needs_input_grad[:4])
        rows_fn = _row_terms_fn(dev, compile_rows)
        ce, tv, correct = _row_buffers(h.shape[0], dev)
        grads = _InputGrads.allocate(ctx.needs_input_grad, h, feats, lm_head, markov_w2)
        computed_rows = 0
        with torch.no_grad(), torch.autocast(dev.type, enabled=False):
            for s, e in _chunks(h.shape[0], chunk_size):
                logits, t_logits = _chunk_logits(h, feats, lm_head, markov_w2, None, s, e)
                t_index = None
                if target_flat is not None and target_rows is not None:
                    rows = target_rows[s:e]
                    if dedupe:
                        rows, t_index = torch.unique(rows, return_inverse=True)
                    t_logits = _mm_f32(target_flat.index_select(0, rows), lm_head)
                    computed_rows += rows.shape[0]
                coefs = (ce_coef[s:e], tv_coef[s:e]) if want_grad else None
                ce_c, tv_c, cor_c, g = rows_fn(logits, t_logits, t_index, labels[s:e], coefs, lm_head.dtype)
                del logits, t_logits
                ce[s:e] = ce_c
                tv[s:e] = tv_c
                correct[s:e] = cor_c
                if g is not None:
                    grads.add_chunk(g, s, e, h, feats, lm_head, markov_w2, float32_weights=False)
                del g
        loss = (ce_coef.float() * ce).sum() + (tv_coef.float() * tv).sum()
        out["target_rows"] = computed_rows
        saved = (grads.h, grads.feats, grads.lm_head, grads.markov_w2)
        ctx.save_for_backward(*saved)
        ctx.has = tuple(g is not None for g in saved)
        ctx.dtypes = (h.dtype, None if feats is None else feats.dtype, lm_head.dtype,
                      None if markov_w2 is None else markov_w2.dtype)
        ctx.mark_non_differentiable(ce, tv, correct)
        return loss, ce, tv, correct

    @staticmethod
    def backward(
        ctx: Any, g_loss: torch.Tensor, *_unused: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        grads: list[torch.Tensor | None] = []
        for has, grad, dtype in zip(ctx.has, saved, ctx.dtypes, strict=True):
            grads.append((grad * g_loss.to(grad.dtype)).to(dtype) if has and grad is not None else None)
        return (*grads, None, None, None, None, None, None, None, None, None)


def _mm_out(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` in ``b``'s dtype with an ``out_dtype`` result (float32 accumulation in any case)."""
    a = a.to(b.dtype)
    if out_dtype == torch.float32 and b.dtype != torch.float32 and a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).to(out_dtype)


def vocab_loss_fused(
    rows: VocabRows,
    ce_coef: torch.Tensor,
    tv_coef: torch.Tensor,
    target_flat: torch.Tensor | None = None,
    target_rows: torch.Tensor | None = None,
    *,
    chunk_size: int = 1024,
    dedupe_target: bool = True,
    compile_rows: bool | None = None,
) -> FusedVocabLoss:
    """``sum_i ce_coef_i * ce_i + tv_coef_i * tv_i`` with its gradient computed in the forward pass.

    The target's final hidden states are ``target_flat [M, H]`` and row ``i`` uses
    ``target_flat[target_rows[i]]``. With
    ``dedupe_target`` each chunk computes the target logits once per distinct row (block positions
    ``a + j`` overlap across anchors). ``compile_rows`` (default: on CUDA) compiles the per-row math.
    Same values and gradients as ``vocab_terms_reference`` with ``ce_coef``/``tv_coef`` weighting.
    """
    _check_chunk_size(chunk_size)
    if (target_flat is None) != (target_rows is None):
        raise ValueError("target_flat and target_rows must be given together")
    t = None if target_flat is None else target_flat.detach()
    info: dict[str, Any] = {}
    with torch.autocast(rows.h.device.type, enabled=False):
        loss, ce, tv, correct = _FusedVocabLossFn.apply(
            *rows.tensors(), t, target_rows, ce_coef.detach().float(),
            tv_coef.detach().float(), chunk_size, dedupe_target, compile_rows, info,
        )
    terms = VocabTerms(ce=ce, tv=tv if target_flat is not None else None, correct=correct)
    return FusedVocabLoss(loss=loss, terms=terms, target_rows=int(info.get("target_rows", 0)))


def vocab_terms(
    rows: VocabRows, target_hidden: torch.Tensor | None = None, *, chunk_size: int | None = 1024
) -> VocabTerms:
    """The chunked path when ``chunk_size`` is set (> 0), else the unchunked reference."""
    if chunk_size:
        return vocab_terms_chunked(rows, target_hidden, chunk_size=chunk_size)
    return vocab_terms_reference(rows, target_hidden)
