"""A small overfitting run: on one fixed batch, a few hundred AdamW steps drive the loss down and the
acceptance length tau up (compared window by window)."""

from __future__ import annotations

import itertools

import torch
from dspark_trainer.loss import summarize
from model_helpers import make_batch, make_model, tiny_config


def test_overfit_one_batch() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(num_anchors=8)
    model = make_model(cfg, loss_chunk_size=16)
    batch = make_batch(cfg, bsz=2, seq_len=24, seed=5)
    with torch.no_grad():
        # a target whose next-token distribution is peaked on the true next token
        model.lm_head.weight.normal_(0.0, 1.0)
        nxt = torch.roll(batch.input_ids, -1, dims=1)
        batch.last_hidden = 0.6 * model.lm_head.weight[nxt]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-4)
    losses: list[float] = []
    taus: list[float] = []
    for _ in range(300):
        out = model(*batch.args())
        assert out.loss is not None
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        m = summarize(out.stats, model.loss_weights)
        assert m.tau is not None
        taus.append(m.tau)
    window = 50
    loss_means = [sum(losses[i : i + window]) / window for i in range(0, len(losses), window)]
    tau_means = [sum(taus[i : i + window]) / window for i in range(0, len(taus), window)]
    assert all(b < a for a, b in itertools.pairwise(loss_means)), loss_means
    assert all(b > a for a, b in itertools.pairwise(tau_means)), tau_means
    assert loss_means[-1] < 0.5 * loss_means[0]
    assert tau_means[-1] > tau_means[0] + 0.5
