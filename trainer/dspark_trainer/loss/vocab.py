"""Per-position vocabulary terms: cross-entropy, total variation against the target, top-1 agreement.

For ``N`` positions with draft hidden ``h [N, H]``, Markov features ``f [N, r]`` (optional), labels
and the target's final hidden ``t [N, H]`` (optional):

    logits = h @ lm_head^T + f @ W2^T                       (float32)
    ce     = logsumexp(logits) - logits[label]
    tv     = sum_v |softmax(logits) - softmax(t @ lm_head^T)|  (the "L1" term; c* = 1 - tv / 2)
    correct = argmax(logits) == label

``vocab_terms_reference`` does this with plain autograd over all positions at once (``[N, V]`` float32
tensors are kept for backward). ``vocab_terms_chunked`` is a custom autograd function that processes
``chunk_size`` positions at a time in forward and recomputes the logits chunk by chunk in backward,
so the largest temporaries are ``[chunk_size, V]`` and nothing of size ``[N, V]`` is saved.
"""

from __future__ import annotations

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


def _check(h: torch.Tensor, feats: torch.Tensor | None, markov_w2: torch.Tensor | None) -> None:
    if (feats is None) != (markov_w2 is None):
        raise ValueError("Markov features and markov_w2 must be given together")
    if h.dim() != 2:
        raise ValueError(f"hidden must be [N, H], got {tuple(h.shape)}")


def vocab_terms_reference(
    h: torch.Tensor,
    feats: torch.Tensor | None,
    lm_head: torch.Tensor,
    markov_w2: torch.Tensor | None,
    labels: torch.Tensor,
    target_hidden: torch.Tensor | None = None,
) -> VocabTerms:
    """Unchunked autograd reference (materialises ``[N, V]`` float32 tensors)."""
    _check(h, feats, markov_w2)
    with torch.autocast(h.device.type, enabled=False):
        logits = draft_logits(h, feats, lm_head, markov_w2)
        logp = torch.log_softmax(logits, dim=-1)
        ce = -logp.gather(1, labels.view(-1, 1)).squeeze(1)
        correct = logits.detach().argmax(dim=-1) == labels
        tv = None
        if target_hidden is not None:
            pt = target_probs(target_hidden, lm_head.detach()).detach()
            tv = (logp.exp() - pt).abs().sum(dim=-1)
    return VocabTerms(ce=ce, tv=tv, correct=correct)


class _ChunkedVocabTerms(torch.autograd.Function):
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
        n = h.shape[0]
        ce = torch.empty(n, dtype=torch.float32, device=h.device)
        tv = torch.zeros(n, dtype=torch.float32, device=h.device)
        correct = torch.empty(n, dtype=torch.bool, device=h.device)
        with torch.no_grad():
            for s in range(0, n, chunk_size):
                e = min(n, s + chunk_size)
                logits = draft_logits(h[s:e], None if feats is None else feats[s:e], lm_head, markov_w2)
                lse = torch.logsumexp(logits, dim=-1)
                lab = labels[s:e]
                ce[s:e] = lse - logits.gather(1, lab.view(-1, 1)).squeeze(1)
                correct[s:e] = logits.argmax(dim=-1) == lab
                if target_hidden is not None:
                    p = logits.sub_(lse.unsqueeze(1)).exp_()
                    pt = target_probs(target_hidden[s:e], lm_head)
                    tv[s:e] = pt.sub_(p).abs_().sum(dim=-1)
                del logits
        ctx.chunk_size = chunk_size
        ctx.has_feats = feats is not None
        ctx.has_target = target_hidden is not None
        ctx.save_for_backward(h, feats, lm_head, markov_w2, labels, target_hidden)
        ctx.mark_non_differentiable(correct)
        return ce, tv, correct

    @staticmethod
    def backward(
        ctx: Any, g_ce: torch.Tensor, g_tv: torch.Tensor, _g_correct: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        h, feats, lm_head, markov_w2, labels, target_hidden = ctx.saved_tensors
        need_h, need_f, need_w, need_w2 = ctx.needs_input_grad[:4]
        chunk = ctx.chunk_size
        n = h.shape[0]
        grad_h = torch.zeros_like(h) if need_h else None
        grad_f = torch.zeros_like(feats) if (need_f and feats is not None) else None
        grad_w = torch.zeros(lm_head.shape, dtype=torch.float32, device=h.device) if need_w else None
        grad_w2 = (
            torch.zeros(markov_w2.shape, dtype=torch.float32, device=h.device)
            if (need_w2 and markov_w2 is not None) else None
        )
        with torch.no_grad(), torch.autocast(h.device.type, enabled=False):
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                f_c = None if feats is None else feats[s:e]
                logits = draft_logits(h[s:e], f_c, lm_head, markov_w2)
                p = torch.softmax(logits, dim=-1)
                del logits
                gce = g_ce[s:e].float()
                # d ce / d logits = p - onehot(label)
                grad_logits = p * gce.unsqueeze(1)
                rows = torch.arange(e - s, device=h.device)
                grad_logits[rows, labels[s:e]] -= gce
                if target_hidden is not None:
                    # d tv / d logits = p * (sign(p - pt) - sum_v p * sign(p - pt))
                    sgn = target_probs(target_hidden[s:e], lm_head).neg_().add_(p).sign_()
                    mean_sgn = (p * sgn).sum(dim=-1, keepdim=True)
                    sgn.sub_(mean_sgn).mul_(p).mul_(g_tv[s:e].float().unsqueeze(1))
                    grad_logits.add_(sgn)
                    del sgn
                del p
                if grad_h is not None:
                    grad_h[s:e] = (grad_logits.to(lm_head.dtype) @ lm_head).to(h.dtype)
                if grad_f is not None and f_c is not None and markov_w2 is not None:
                    grad_f[s:e] = (grad_logits.to(markov_w2.dtype) @ markov_w2).to(feats.dtype)
                if grad_w is not None:
                    grad_w.addmm_(grad_logits.t(), h[s:e].float())
                if grad_w2 is not None and f_c is not None:
                    grad_w2.addmm_(grad_logits.t(), f_c.float())
                del grad_logits
        return (
            grad_h,
            grad_f,
            None if grad_w is None else grad_w.to(lm_head.dtype),
            None if grad_w2 is None else grad_w2.to(markov_w2.dtype),
            None,
            None,
            None,
        )


def vocab_terms_chunked(
    h: torch.Tensor,
    feats: torch.Tensor | None,
    lm_head: torch.Tensor,
    markov_w2: torch.Tensor | None,
    labels: torch.Tensor,
    target_hidden: torch.Tensor | None = None,
    *,
    chunk_size: int = 1024,
) -> VocabTerms:
    """Same values and gradients as ``vocab_terms_reference`` with memory bounded by one chunk.

    The target's final hidden state never receives a gradient (it is data).
    """
    _check(h, feats, markov_w2)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t = None if target_hidden is None else target_hidden.detach()
    with torch.autocast(h.device.type, enabled=False):
        ce, tv, correct = _ChunkedVocabTerms.apply(h, feats, lm_head, markov_w2, labels, t, chunk_size)
    return VocabTerms(ce=ce, tv=tv if target_hidden is not None else None, correct=correct)


def vocab_terms(
    h: torch.Tensor,
    feats: torch.Tensor | None,
    lm_head: torch.Tensor,
    markov_w2: torch.Tensor | None,
    labels: torch.Tensor,
    target_hidden: torch.Tensor | None = None,
    *,
    chunk_size: int | None = 1024,
) -> VocabTerms:
    """The chunked path when ``chunk_size`` is set (> 0), else the unchunked reference."""
    if chunk_size:
        return vocab_terms_chunked(h, feats, lm_head, markov_w2, labels, target_hidden, chunk_size=chunk_size)
    return vocab_terms_reference(h, feats, lm_head, markov_w2, labels, target_hidden)
