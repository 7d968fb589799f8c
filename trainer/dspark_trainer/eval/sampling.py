"""Token choice and verification of a drafted block (real speculative decoding: standard rejection sampling).

Shapes: ``B`` rows, ``K`` drafted slots, ``V`` vocabulary. ``target_logits [B, K + 1, V]`` are the target's
logits at the verified positions ``[anchor, d_0, ..., d_{K-1}]``: slot ``j`` gives the distribution of the
token after ``d_{j-1}`` (after the anchor for ``j = 0``), slot ``K`` the bonus token's.

- temperature 0 (exact greedy): draft ``d_j`` is accepted while it equals the target's argmax; the first
  mismatch is replaced by the target's argmax; if every proposed draft is accepted the bonus token is the
  target's argmax at the next slot. The output is the target's own greedy continuation.
- temperature T > 0 (standard rejection sampling, with ``p = softmax(target / T)``, ``q = softmax(draft / T)``):
  accept ``d_j`` with probability ``min(1, p(d_j) / q(d_j))``; on the first rejection sample from
  ``normalize(max(p - q, 0))``; after all proposed drafts are accepted sample the bonus from ``p``. Every token
  is then distributed exactly as when sampling from the target alone.

``proposal_len [B]`` (``<= K``) truncates a row's proposal (confidence early stop): slots from it on are
treated as not proposed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Verdict:
    """``accepted [B]``: leading drafts accepted; ``next_token [B]``: the correction or bonus token."""

    accepted: torch.Tensor
    next_token: torch.Tensor


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float32; ``temperature`` must be > 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for a distribution, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits [B, V]``: the argmax at temperature 0, else a sample at ``temperature``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(probabilities(logits, temperature), 1, generator=generator).squeeze(-1)


def _proposed(proposal_len: torch.Tensor, k: int) -> torch.Tensor:
    return torch.arange(k, device=proposal_len.device).unsqueeze(0) < proposal_len.unsqueeze(1)


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor, proposal_len: torch.Tensor) -> Verdict:
    """Exact greedy verification (temperature 0)."""
    k = draft_tokens.shape[1]
    best = target_logits.argmax(dim=-1)  # [B, K + 1]
    ok = (draft_tokens == best[:, :k]) & _proposed(proposal_len, k)
    accepted = ok.long().cumprod(dim=1).sum(dim=1)
    return Verdict(accepted, best.gather(1, accepted.unsqueeze(1)).squeeze(1))


def verify_rejection(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_logits: torch.Tensor,
    proposal_len: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Rejection-sampling verification at ``temperature`` > 0; ``draft_probs [B, K, V]`` is ``q`` of each slot."""
    bsz, k = draft_tokens.shape
    p = probabilities(target_logits, temperature)  # [B, K + 1, V]
    p_sel = p[:, :k].gather(2, draft_tokens.unsqueeze(-1)).squeeze(-1)
    q_sel = draft_probs.gather(2, draft_tokens.unsqueeze(-1)).squeeze(-1).clamp_min(1e-20)
    u = torch.rand(p_sel.shape, generator=generator, device=p_sel.device)
    ok = (u < (p_sel / q_sel).clamp(max=1.0)) & _proposed(proposal_len, k)
    accepted = ok.long().cumprod(dim=1).sum(dim=1)
    rows = torch.arange(bsz, device=p.device)
    p_next = p[rows, accepted]  # [B, V]: target distribution at the first unaccepted slot
    rejected = accepted < proposal_len
    q_next = torch.zeros_like(p_next)
    if bool(rejected.any()):
        q_next[rejected] = draft_probs[rows[rejected], accepted[rejected]].float()
    residual = (p_next - q_next).clamp_min(0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q exactly leaves no residual mass; then the rejection had probability 0, fall back to p
    dist = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_next)
    nxt = torch.multinomial(dist, 1, generator=generator).squeeze(-1)
    return Verdict(accepted, nxt)
