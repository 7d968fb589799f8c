"""The DSpark draft model (the published method; docs/model.md).

Parameter names are the checkpoint's weight names (``embed_tokens.weight``, ``layers.{i}...``, ``norm``,
``fc``, ``hidden_norm``, ``lm_head``, ``markov_head.*``, ``confidence_head.*``), so ``state_dict()`` is
the exported ``model.safetensors`` as is. ``embed_tokens`` and ``lm_head`` are the target's, frozen.

``forward`` computes the loss too: under FSDP2 the root module's parameters (LM head, Markov ``W2``)
are only gathered inside the root's forward, so the vocabulary projection must happen there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dspark_trainer.loss.dspark_loss import LossOutput, LossWeights, dspark_loss
from dspark_trainer.model.anchors import (
    block_tokens,
    check_anchors,
    draft_positions,
    eval_mask,
    noise_input_ids,
    position_weights,
)
from dspark_trainer.model.config import DSparkModelConfig
from dspark_trainer.model.heads import ConfidenceHead, VanillaMarkovHead, build_markov_head
from dspark_trainer.model.layers import DSparkDecoderLayer, RMSNorm, rotary_cos_sin
from dspark_trainer.model.layout import dropped_rows, query_rows
from dspark_trainer.model.masks import AttentionBackend, build_attention_mask


@dataclass
class DraftOutput:
    """What one forward pass returns.

    ``hidden [B, A, K, H]`` is the final-normalised draft state ``h``; ``markov_feats [B, A, K, r]`` the
    Markov features (bias = ``W2(markov_feats)``); ``conf_logits [B, A, K]``; ``labels``/``prev_ids``
    the teacher-forced targets and previous tokens; ``eval_mask``/``weights`` the loss positions and
    weights. ``loss`` (scalar), ``terms`` and ``stats`` are set when the loss was computed; ``logits``
    ``[B, A, K, V]`` only with ``return_logits``.
    """

    hidden: torch.Tensor
    labels: torch.Tensor
    prev_ids: torch.Tensor
    eval_mask: torch.Tensor
    weights: torch.Tensor
    markov_feats: torch.Tensor | None = None
    conf_logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class DSparkDraftModel(nn.Module):
    """Qwen3 DSpark draft: context projection, ``num_draft_layers`` decoder layers, final norm, heads."""

    def __init__(
        self,
        config: DSparkModelConfig,
        *,
        attention_backend: AttentionBackend = "auto",
        loss_chunk_size: int | None = 1024,
        compile_flex: bool | None = None,
        compile_layers: bool | None = None,
        compile_loss: bool | None = None,
        fused_loss: bool = True,
        dedupe_target: bool = True,
    ) -> None:
        """``compile_flex`` / ``compile_layers`` / ``compile_loss`` (each default: on CUDA) compile the
        FlexAttention kernel, each decoder layer's math, and the per-row vocabulary math; ``fused_loss``
        computes the CE/L1 gradient in the forward pass (no logits recomputation in backward);
        ``dedupe_target`` computes the target's logits once per distinct position (see ``dspark_loss``)."""
        super().__init__()
        self.config = config
        self.attention_backend: AttentionBackend = attention_backend
        self.loss_chunk_size = loss_chunk_size
        self.compile_flex = compile_flex
        self.compile_layers = compile_layers
        self.compile_loss = compile_loss
        self.fused_loss = fused_loss
        self.dedupe_target = dedupe_target
        self.last_loss_info: dict[str, float] = {}
        hid = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hid)
        self.fc = nn.Linear(config.num_captured_layers * hid, hid, bias=False)
        self.hidden_norm = RMSNorm(hid, config.rms_norm_eps)
        self.layers = nn.ModuleList(DSparkDecoderLayer(config) for _ in range(config.num_draft_layers))
        self.norm = RMSNorm(hid, config.rms_norm_eps)
        self.lm_head = nn.Linear(hid, config.vocab_size, bias=False)
        self.markov_head: VanillaMarkovHead | None = None
        if config.markov_rank > 0:
            self.markov_head = build_markov_head(config.markov_head_type, config.vocab_size, config.markov_rank, hid)
        self.confidence_head: ConfidenceHead | None = None
        if config.enable_confidence_head:
            self.confidence_head = ConfidenceHead(config.confidence_input_size)
        self.reset_parameters()
        self.freeze_vocab()

    # ---- parameters -------------------------------------------------------------------------------

    def reset_parameters(self, seed: int | None = None) -> None:
        """Qwen3-style init: linear/embedding weights ~ N(0, initializer_range), biases 0, norms 1.

        With ``seed`` the values are drawn on the CPU from a generator seeded with it (the same on any
        device and rank); without, in place from the parameters' device's global generator.
        """
        std = self.config.initializer_range
        gen = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                elif name.endswith(".bias"):
                    param.zero_()
                elif gen is None:
                    param.normal_(0.0, std)
                else:
                    values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
                    param.copy_(values)

    def freeze_vocab(self) -> None:
        """``embed_tokens`` and ``lm_head`` are the target's and never train."""
        self.embed_tokens.weight.requires_grad_(False)
        self.lm_head.weight.requires_grad_(False)

    def set_vocab_weights(self, embed: torch.Tensor, lm_head: torch.Tensor) -> None:
        """Copy the target's embedding and LM head (both ``[V, H]``) in."""
        for name, param, value in (("embed_tokens", self.embed_tokens.weight, embed), ("lm_head", self.lm_head.weight,
                                                                                       lm_head)):
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"target {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(value)

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # ---- forward ----------------------------------------------------------------------------------

    def backbone(
        self, input_ids: torch.Tensor, target_hidden: torch.Tensor, anchors: torch.Tensor,
        block_keep_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Final-normalised draft states ``[B, A, K, H]``: the predicting rows of each block (the query layout
        of ``model.layout``: ``K`` rows from the anchor for DSpark, ``K + 1`` rows without the anchor's for DFlash)."""
        cfg = self.config
        bsz, seq_len = input_ids.shape
        num = anchors.shape[1]
        rows = query_rows(cfg)
        dtype = self.fc.weight.dtype
        ctx = self.hidden_norm(self.fc(target_hidden.to(dtype)))
        h = self.embed_tokens(noise_input_ids(input_ids, anchors, rows, cfg.mask_token_id)).to(dtype)
        ctx_pos = torch.arange(seq_len, device=input_ids.device).unsqueeze(0).expand(bsz, -1)
        positions = torch.cat([ctx_pos, draft_positions(anchors, rows)], dim=1)
        cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta, h.dtype)
        mask = build_attention_mask(
            anchors, block_keep_mask, seq_len, rows, self.attention_backend, compile_flex=self.compile_flex
        )
        compiled = h.is_cuda if self.compile_layers is None else self.compile_layers
        for layer in self.layers:
            assert isinstance(layer, DSparkDecoderLayer)
            layer.use_compiled = compiled
            h = layer(h, ctx, cos, sin, mask)
        return self.norm(h).view(bsz, num, rows, -1)[:, :, dropped_rows(cfg):]

    def forward(
        self,
        input_ids: torch.Tensor,
        target_hidden: torch.Tensor,
        loss_mask: torch.Tensor,
        anchors: torch.Tensor,
        block_keep_mask: torch.Tensor | None = None,
        target_last_hidden: torch.Tensor | None = None,
        *,
        denominator: float | torch.Tensor | None = None,
        world_size: int = 1,
        compute_loss: bool = True,
        return_logits: bool = False,
        alphas: LossWeights | None = None,
    ) -> DraftOutput:
        """One micro-batch.

        ``input_ids``/``loss_mask [B, T]``, ``target_hidden [B, T, L*H]``, ``anchors``/``block_keep_mask
        [B, A]`` (``block_keep_mask`` defaults to all valid), ``target_last_hidden [B, T, H]`` (needed
        when the L1 or confidence weight is > 0; when given it also yields the acceptance metrics).
        ``denominator``: the global ``sum(w)`` of the optimizer step (over micro-batches and ranks; a
        Python float is safest under FSDP2 mixed precision, which casts floating tensor arguments);
        default this micro-batch's own. The loss is multiplied by ``world_size``. ``alphas`` overrides
        the configured term weights (e.g. CE only for a batch without ``target_last_hidden``).
        """
        cfg = self.config
        if block_keep_mask is None:
            block_keep_mask = torch.ones_like(anchors, dtype=torch.bool)
        check_anchors(anchors, block_keep_mask, input_ids.shape[1])
        block_keep_mask = block_keep_mask.bool()
        hidden = self.backbone(input_ids, target_hidden, anchors, block_keep_mask)
        labels, prev = block_tokens(input_ids, anchors, cfg.block_size)
        em = eval_mask(loss_mask, anchors, block_keep_mask, cfg.block_size)
        weights = position_weights(em, cfg.gamma)
        out = DraftOutput(hidden=hidden, labels=labels, prev_ids=prev, eval_mask=em, weights=weights)
        prev_emb = None
        if self.markov_head is not None:
            prev_emb = self.markov_head.prev_embedding(prev)
            out.markov_feats = self.markov_head.features(prev_emb, hidden)
        if self.confidence_head is not None:
            out.conf_logits = self.confidence_head(hidden, prev_emb if cfg.confidence_head_with_markov else None)
        if compute_loss:
            res = self._loss(out, anchors, block_keep_mask, target_last_hidden, denominator, world_size, alphas)
            out.loss, out.terms, out.stats = res.loss, res.terms, res.stats
        if return_logits:
            out.logits = self.logits(out.hidden, out.markov_feats)
        return out

    def _loss(
        self,
        out: DraftOutput,
        anchors: torch.Tensor,
        block_keep_mask: torch.Tensor,
        target_last_hidden: torch.Tensor | None,
        denominator: float | torch.Tensor | None,
        world_size: int,
        alphas: LossWeights | None,
    ) -> LossOutput:
        w2 = None if self.markov_head is None else self.markov_head.markov_w2.weight
        return dspark_loss(
            hidden=out.hidden,
            markov_feats=out.markov_feats,
            conf_logits=out.conf_logits,
            labels=out.labels,
            weights=out.weights,
            eval_mask=out.eval_mask,
            block_keep_mask=block_keep_mask,
            anchors=anchors,
            lm_head=self.lm_head.weight,
            markov_w2=w2,
            target_last_hidden=target_last_hidden,
            alphas=alphas or self.loss_weights,
            denominator=denominator,
            world_size=world_size,
            chunk_size=self.loss_chunk_size,
            fused=self.fused_loss,
            dedupe_target=self.dedupe_target,
            compile_rows=self.compile_loss,
            info=self.last_loss_info,
        )

    @property
    def loss_weights(self) -> LossWeights:
        cfg = self.config
        conf = cfg.confidence_alpha if self.confidence_head is not None else 0.0
        return LossWeights(ce=cfg.ce_alpha, l1=cfg.l1_alpha, confidence=conf)

    def logits(self, hidden: torch.Tensor, markov_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 draft logits ``lm_head(h) + W2(f)`` for ``[..., H]`` states (materialises ``[..., V]``)."""
        lead = hidden.shape[:-1]
        logits = torch.nn.functional.linear(hidden.float(), self.lm_head.weight.float())
        if markov_feats is not None and self.markov_head is not None:
            w2 = self.markov_head.markov_w2.weight.float()
            logits = logits + torch.nn.functional.linear(markov_feats.float(), w2)
        return logits.view(*lead, -1)
