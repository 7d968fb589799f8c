"""The DSpark draft at inference: a KV cache of the projected context and one block per round.

Per round the draft reads the target's captured hidden states of every position before the anchor (the
anchor is the last accepted token, not yet fed to the target), runs ONE backbone pass over the block
``[anchor, mask, ..., mask]`` at positions ``a .. a+K-1`` (queries attend to the whole context and,
bidirectionally, to the block), then the heads run slot by slot: the Markov head's previous token is the token
just drafted (the anchor for slot 0), and the confidence head gives each slot's acceptance estimate.

The context keys/values of each layer (``k_norm(k_proj(ctx))`` with RoPE at the context position, and
``v_proj(ctx)``, where ``ctx = hidden_norm(fc(target_hidden))``) depend only on that position, so they are
computed once, when the position is accepted, and cached. Rows of a batch may hold different numbers of
context positions: every append writes a segment of the same width for all rows, with a validity mask.
This is the training model's math (``DSparkDraftModel.backbone``) with an anchor at ``a`` (tested equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dspark_trainer.model.draft import DSparkDraftModel
from dspark_trainer.model.heads import RNNMarkovHead
from dspark_trainer.model.layers import DSparkDecoderLayer, apply_rotary, rotary_cos_sin

# pick(j, logits_j [B, V]) -> token ids [B]: greedy, sampled, or teacher-forced
Picker = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class Proposal:
    """A drafted block: ``tokens [B, K]``, the draft's per-slot ``logits [B, K, V]`` (float32, Markov bias
    included) and ``conf_logits [B, K]`` (None without a confidence head)."""

    tokens: torch.Tensor
    logits: torch.Tensor
    conf_logits: torch.Tensor | None


def run_heads(model: DSparkDraftModel, hidden: torch.Tensor, first_prev: torch.Tensor, pick: Picker) -> Proposal:
    """The sequential part of a block: ``hidden [B, K, H]`` (final-normalised), ``first_prev [B]`` the anchor."""
    cfg = model.config
    base = F.linear(hidden, model.lm_head.weight).float()  # [B, K, V], matmul in the draft dtype
    head = model.markov_head
    prev = first_prev
    state: torch.Tensor | None = None
    tokens, logits, confs = [], [], []
    for j in range(cfg.block_size):
        h_j = hidden[:, j]
        prev_emb = None
        logit = base[:, j]
        if head is not None:
            prev_emb = head.prev_embedding(prev)
            if isinstance(head, RNNMarkovHead):
                if state is None:
                    state = prev_emb.new_zeros(prev_emb.shape[0], head.rank)
                state, feat = head.step(state, prev_emb, h_j)
            else:
                feat = head.features(prev_emb.unsqueeze(-2), h_j.unsqueeze(-2)).squeeze(-2)
            logit = logit + F.linear(feat.to(hidden.dtype), head.markov_w2.weight).float()
        if model.confidence_head is not None:
            confs.append(model.confidence_head(h_j, prev_emb if cfg.confidence_head_with_markov else None).float())
        tok = pick(j, logit)
        tokens.append(tok)
        logits.append(logit)
        prev = tok
    conf = torch.stack(confs, dim=1) if confs else None
    return Proposal(torch.stack(tokens, dim=1), torch.stack(logits, dim=1), conf)


class DraftRunner:
    """One batch's draft state: per-layer context K/V caches and their validity."""

    def __init__(self, model: DSparkDraftModel) -> None:
        self.model = model.eval()
        self.cfg = model.config
        self.layers = [layer for layer in model.layers if isinstance(layer, DSparkDecoderLayer)]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid: torch.Tensor | None = None

    @property
    def context_length(self) -> int:
        return 0 if self.valid is None else int(self.valid.shape[1])

    @torch.no_grad()
    def append_context(self, target_hidden: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """Cache the context K/V of ``target_hidden [B, S, L*H]`` at ``positions [B, S]`` (``valid [B, S]``)."""
        m = self.model
        dtype = m.fc.weight.dtype
        ctx = m.hidden_norm(m.fc(target_hidden.to(dtype)))
        cos, sin = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, ctx.dtype)
        bsz, seq, _ = ctx.shape
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            k = attn.k_norm(attn.k_proj(ctx).view(bsz, seq, attn.num_kv_heads, attn.head_dim)).transpose(1, 2)
            v = attn.v_proj(ctx).view(bsz, seq, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
            k = apply_rotary(k, cos, sin)
            if len(self.keys) <= i:
                self.keys.append(k)
                self.values.append(v)
            else:
                self.keys[i] = torch.cat([self.keys[i], k], dim=2)
                self.values[i] = torch.cat([self.values[i], v], dim=2)
        valid = valid.bool()
        self.valid = valid if self.valid is None else torch.cat([self.valid, valid], dim=1)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch (finished rows leave)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        if self.valid is not None:
            self.valid = self.valid[rows]

    @torch.no_grad()
    def block_hidden(self, anchor_tokens: torch.Tensor, anchor_pos: torch.Tensor) -> torch.Tensor:
        """Final-normalised states ``[B, K, H]`` of the block anchored at ``anchor_pos [B]``."""
        m, cfg = self.model, self.cfg
        bsz, k = anchor_tokens.shape[0], cfg.block_size
        ids = torch.full((bsz, k), cfg.mask_token_id, dtype=torch.long, device=anchor_tokens.device)
        ids[:, 0] = anchor_tokens
        h = m.embed_tokens(ids).to(m.fc.weight.dtype)
        pos = anchor_pos.unsqueeze(1) + torch.arange(k, device=anchor_pos.device)
        cos, sin = rotary_cos_sin(pos, cfg.head_dim, cfg.rope_theta, h.dtype)
        ctx_valid = self.valid if self.valid is not None else torch.zeros(bsz, 0, dtype=torch.bool, device=h.device)
        mask = torch.cat([ctx_valid, torch.ones(bsz, k, dtype=torch.bool, device=h.device)], dim=1)
        mask = mask[:, None, None, :].expand(bsz, 1, k, mask.shape[1])
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            xn = layer.input_layernorm(h)
            q = attn.q_norm(attn.q_proj(xn).view(bsz, k, attn.num_heads, attn.head_dim)).transpose(1, 2)
            kb = attn.k_norm(attn.k_proj(xn).view(bsz, k, attn.num_kv_heads, attn.head_dim)).transpose(1, 2)
            vb = attn.v_proj(xn).view(bsz, k, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
            q, kb = apply_rotary(q, cos, sin), apply_rotary(kb, cos, sin)
            if self.keys:
                kb = torch.cat([self.keys[i], kb], dim=2)
                vb = torch.cat([self.values[i], vb], dim=2)
            out = F.scaled_dot_product_attention(q, kb, vb, attn_mask=mask, enable_gqa=True)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(bsz, k, attn.num_heads * attn.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        out_h: torch.Tensor = m.norm(h)
        return out_h

    @torch.no_grad()
    def propose(self, anchor_tokens: torch.Tensor, anchor_pos: torch.Tensor, pick: Picker) -> Proposal:
        """Draft one block: the backbone pass, then the heads slot by slot with ``pick``."""
        return run_heads(self.model, self.block_hidden(anchor_tokens, anchor_pos), anchor_tokens, pick)
