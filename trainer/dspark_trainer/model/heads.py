"""The sequential (Markov) heads and the confidence head.

Every Markov head adds ``bias_j = W2(f_j)`` to the draft logits of slot ``j``, with a rank-``r``
feature ``f_j`` computed from the previous token ``prev_j`` (teacher-forced in training) and, for
the gated and rnn heads, the draft hidden state ``h_j``. The heads return ``f`` rather than the
``[.., V]`` bias so the loss can fold ``W2`` into its chunked vocabulary projection
(``logits = h @ lm_head^T + f @ W2^T``).

- vanilla: ``f_j = W1[prev_j]``
- gated:   ``f_j = sigmoid(gate_proj([h_j ; W1[prev_j]])) * W1[prev_j]``
- rnn:     ``[g, c, o] = split3(joint_proj([s_{j-1} ; W1[prev_j] ; h_j]))``,
           ``s_j = sigmoid(g) * s_{j-1} + (1 - sigmoid(g)) * tanh(c)``, ``f_j = tanh(o)``, ``s_0 = 0``
"""

from __future__ import annotations

import torch
from torch import nn

from dspark_trainer.config.draft import MarkovHeadType


class VanillaMarkovHead(nn.Module):
    """Low-rank bigram bias ``W2(W1[prev])``: ``markov_w1 = Embedding(V, r)``, ``markov_w2 = Linear(r, V)``."""

    def __init__(self, vocab_size: int, rank: int, hidden_size: int) -> None:
        super().__init__()
        self.rank = rank
        self.hidden_size = hidden_size
        self.markov_w1 = nn.Embedding(vocab_size, rank)
        self.markov_w2 = nn.Linear(rank, vocab_size, bias=False)

    def prev_embedding(self, prev_ids: torch.Tensor) -> torch.Tensor:
        """``W1[prev]``: ``[..., r]``."""
        out: torch.Tensor = self.markov_w1(prev_ids)
        return out

    def features(self, prev_emb: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``f [B, A, K, r]`` from ``W1[prev] [B, A, K, r]`` and ``h [B, A, K, H]`` (block dimension -2)."""
        return prev_emb

    def bias(self, feats: torch.Tensor) -> torch.Tensor:
        """``W2(f)``: the ``[..., V]`` logit bias (for small inputs and inference; the loss folds W2 in)."""
        out: torch.Tensor = self.markov_w2(feats)
        return out


class GatedMarkovHead(VanillaMarkovHead):
    """``f_j = sigmoid(gate_proj([h_j ; W1[prev_j]])) * W1[prev_j]``, ``gate_proj: H + r -> r`` with bias."""

    def __init__(self, vocab_size: int, rank: int, hidden_size: int) -> None:
        super().__init__(vocab_size, rank, hidden_size)
        self.gate_proj = nn.Linear(hidden_size + rank, rank, bias=True)

    def features(self, prev_emb: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate_proj(torch.cat([hidden.to(prev_emb.dtype), prev_emb], dim=-1)))
        return gate * prev_emb


class RNNMarkovHead(VanillaMarkovHead):
    """A gated recurrent state over the block; ``joint_proj: 2r + H -> 3r`` with bias, input ``[s ; W1[prev] ; h]``."""

    def __init__(self, vocab_size: int, rank: int, hidden_size: int) -> None:
        super().__init__(vocab_size, rank, hidden_size)
        self.joint_proj = nn.Linear(2 * rank + hidden_size, 3 * rank, bias=True)

    def step(
        self, state: torch.Tensor, prev_emb: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot: ``(s_j, f_j)`` from ``s_{j-1}``, ``W1[prev_j]`` and ``h_j`` (all ``[..., dim]``)."""
        proj = self.joint_proj(torch.cat([state, prev_emb, hidden.to(prev_emb.dtype)], dim=-1))
        gate_raw, cand_raw, out_raw = proj.chunk(3, dim=-1)
        gate = torch.sigmoid(gate_raw)
        new_state = gate * state + (1.0 - gate) * torch.tanh(cand_raw)
        return new_state, torch.tanh(out_raw)

    def features(self, prev_emb: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        state = prev_emb.new_zeros(*prev_emb.shape[:-2], self.rank)
        feats = []
        for j in range(prev_emb.shape[-2]):
            state, f = self.step(state, prev_emb[..., j, :], hidden[..., j, :])
            feats.append(f)
        return torch.stack(feats, dim=-2)


MarkovHead = VanillaMarkovHead  # the common base type of the three heads


def build_markov_head(kind: MarkovHeadType | str, vocab_size: int, rank: int, hidden_size: int) -> VanillaMarkovHead:
    """The head of ``kind`` (vanilla, gated, rnn) with rank ``rank`` > 0."""
    if rank < 1:
        raise ValueError(f"markov rank must be >= 1 to build a Markov head, got {rank}")
    kinds: dict[str, type[VanillaMarkovHead]] = {
        MarkovHeadType.VANILLA.value: VanillaMarkovHead,
        MarkovHeadType.GATED.value: GatedMarkovHead,
        MarkovHeadType.RNN.value: RNNMarkovHead,
    }
    key = str(kind.value if isinstance(kind, MarkovHeadType) else kind).lower()
    if key not in kinds:
        raise ValueError(f"unknown Markov head type {kind!r}; expected one of {sorted(kinds)}")
    return kinds[key](vocab_size, rank, hidden_size)


class ConfidenceHead(nn.Module):
    """``conf_logit_j = proj([h_j ; W1[prev_j]])`` (or ``proj(h_j)``), ``proj: Linear(H (+ r) -> 1)`` with bias."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_size, 1, bias=True)

    def forward(self, hidden: torch.Tensor, prev_emb: torch.Tensor | None) -> torch.Tensor:
        """``[..., H]`` (and ``[..., r]``) -> ``[...]`` logits."""
        feats = hidden if prev_emb is None else torch.cat([hidden, prev_emb.to(hidden.dtype)], dim=-1)
        out: torch.Tensor = self.proj(feats).squeeze(-1)
        return out
