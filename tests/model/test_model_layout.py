"""The query layout of a block against a step-by-step replay of what the serving engine runs for one
anchor: the committed context before the anchor, the block's query rows (DSpark: K rows from the
anchor; DFlash: K + 1 rows, the anchor's dropped), non-causal attention over context and block."""

from __future__ import annotations

import pytest
import torch
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model.layers import rotary_cos_sin
from dspark_trainer.model.layout import dropped_rows, query_rows, samples_from_anchor
from dspark_trainer.model.masks import DraftAttentionMask
from model_helpers import make_batch, make_model, tiny_config

DFLASH = DraftOptions.dflash().model_dump(
    include={"markov_rank", "enable_confidence_head", "confidence_head_with_markov", "ce_alpha", "l1_alpha",
             "confidence_alpha"}
)


def serve_one_block(model: torch.nn.Module, input_ids: torch.Tensor, hidden: torch.Tensor, anchor: int) -> torch.Tensor:
    """The draft rows a serving engine computes for one anchor of sample 0, built from the checkpoint's
    layout rule alone: ``[x_a, mask, ...]`` at positions ``a, a+1, ...``, context rows ``0 .. a-1``."""
    cfg = model.config
    rows = cfg.block_size if cfg.markov_rank > 0 else cfg.block_size + 1
    ids = torch.full((1, rows), cfg.mask_token_id)
    ids[0, 0] = input_ids[0, anchor]
    with torch.no_grad():
        ctx = model.hidden_norm(model.fc(hidden[:1, :anchor]))
        h = model.embed_tokens(ids)
        positions = torch.cat([torch.arange(anchor), anchor + torch.arange(rows)]).unsqueeze(0)
        cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta, h.dtype)
        everything = DraftAttentionMask("dense", dense=torch.ones(1, 1, rows, anchor + rows, dtype=torch.bool))
        for layer in model.layers:
            h = layer(h, ctx, cos, sin, everything)
        out = model.norm(h)[0]
    return out[1:] if cfg.markov_rank == 0 else out


@pytest.mark.parametrize("variant", ["dspark", "dflash"])
def test_training_rows_equal_the_served_rows(variant: str) -> None:
    cfg = tiny_config(**(DFLASH if variant == "dflash" else {}))
    model = make_model(cfg, seed=1)
    batch = make_batch(cfg)
    with torch.no_grad():
        got = model.backbone(batch.input_ids, batch.hidden, batch.anchors, batch.keep.bool())
    assert got.shape[2] == cfg.block_size  # K predicting rows either way
    checked = 0
    for i, a in enumerate(batch.anchors[0].tolist()):
        if not batch.keep[0, i] or a == 0:
            continue
        torch.testing.assert_close(got[0, i], serve_one_block(model, batch.input_ids, batch.hidden, a),
                                   rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked >= 2


def test_the_layouts_differ_by_the_anchor_row() -> None:
    dspark, dflash = tiny_config(), tiny_config(**DFLASH)
    assert (samples_from_anchor(dspark), query_rows(dspark), dropped_rows(dspark)) == (True, 4, 0)
    assert (samples_from_anchor(dflash), query_rows(dflash), dropped_rows(dflash)) == (False, 5, 1)
    # the same weights in the other layout give other predictions: the layout is part of the draft
    model = make_model(dflash, seed=2)
    batch = make_batch(dflash)
    a = int(batch.anchors[0, 1])
    served = serve_one_block(model, batch.input_ids, batch.hidden, a)
    model.config = dflash.with_updates(markov_rank=1)  # pretend DSpark: K rows from the anchor
    as_dspark = serve_one_block(model, batch.input_ids, batch.hidden, a)
    assert served.shape == as_dspark.shape and not torch.allclose(served, as_dspark, atol=1e-3)
