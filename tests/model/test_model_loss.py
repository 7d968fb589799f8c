"""Loss and metrics: the method's formulas computed by hand, the chunked vocabulary path against the
unchunked one (values, gradients, memory), and invariance to how a step is split into micro-batches."""

from __future__ import annotations

import math

import pytest
import torch
from dspark_trainer.loss import (
    VocabRows,
    accumulate_stats,
    global_denominator,
    local_denominator,
    summarize,
    vocab_terms_chunked,
    vocab_terms_reference,
)
from dspark_trainer.model.draft import DSparkDraftModel
from model_helpers import Batch, make_batch, make_model, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode


def test_position_weights() -> None:
    from dspark_trainer.loss import decay_weights

    w = decay_weights(7, 4.0)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.78, 0.61, 0.47, 0.37, 0.29, 0.22]), atol=5e-3, rtol=0)


def reference_loss(model: DSparkDraftModel, batch: Batch, gamma: float = 4.0) -> dict[str, float]:
    """Loss terms and metrics from their definitions, with loops over (b, a, j), from the model's h, f and conf."""
    cfg = model.config
    with torch.no_grad():
        out = model(*batch.args())
    k = cfg.block_size
    seq_len = batch.input_ids.shape[1]
    num = {"ce": 0.0, "l1": 0.0, "confidence": 0.0}
    den = 0.0
    taus: list[float] = []
    accept: list[list[float]] = [[] for _ in range(k)]
    acc: list[list[float]] = [[] for _ in range(k)]
    w_head = model.lm_head.weight.double()
    assert model.markov_head is not None and out.conf_logits is not None and out.markov_feats is not None
    w2 = model.markov_head.markov_w2.weight.double()
    for b, i in ((b, i) for b in range(batch.input_ids.shape[0]) for i in range(batch.anchors.shape[1])):
        if not batch.keep[b, i]:
            continue
        with torch.no_grad():
            a = int(batch.anchors[b, i])
            prod, tau, alive = 1.0, 1.0, True
            for j in range(k):
                label_idx = a + j + 1
                alive = alive and label_idx < seq_len and bool(batch.loss_mask[b, label_idx])
                if not alive:
                    break
                w = math.exp(-j / gamma)
                logits = w_head @ out.hidden[b, i, j].double() + w2 @ out.markov_feats[b, i, j].double()
                p_d = torch.softmax(logits, -1)
                p_t = torch.softmax(w_head @ batch.last_hidden[b, label_idx - 1].double(), -1)
                label = int(batch.input_ids[b, label_idx])
                ce = -math.log(float(p_d[label]))
                tv = float((p_d - p_t).abs().sum())
                c = min(max(1 - 0.5 * tv, 0.0), 1.0)
                x = float(out.conf_logits[b, i, j])
                bce = -(c * math.log(1 / (1 + math.exp(-x))) + (1 - c) * math.log(1 - 1 / (1 + math.exp(-x))))
                num["ce"] += w * ce
                num["l1"] += w * tv
                num["confidence"] += w * bce
                den += w
                prod *= c
                tau += prod
                accept[j].append(c)
                acc[j].append(float(int(logits.argmax()) == label))
            taus.append(tau)
    res = {name: v / den for name, v in num.items()}
    res["total"] = cfg.ce_alpha * res["ce"] + cfg.l1_alpha * res["l1"] + cfg.confidence_alpha * res["confidence"]
    res["tau"] = sum(taus) / len(taus)
    for j in range(k):
        res[f"accept@{j}"] = sum(accept[j]) / len(accept[j])
        res[f"acc@{j}"] = sum(acc[j]) / len(acc[j])
    return res


@pytest.mark.parametrize("chunk", [None, 5])
def test_loss_and_metrics_match_the_formulas(chunk: int | None) -> None:
    cfg = tiny_config()
    model = make_model(cfg, loss_chunk_size=chunk)
    batch = make_batch(cfg, bsz=3, seq_len=20)
    batch.keep[0, 1] = False
    ref = reference_loss(model, batch)
    with torch.no_grad():
        out = model(*batch.args())
    assert out.loss is not None
    assert out.loss.item() == pytest.approx(ref["total"], rel=1e-5)
    m = summarize(out.stats, model.loss_weights)
    for name in ("ce", "l1", "confidence", "total"):
        assert m.loss[name] == pytest.approx(ref[name], rel=1e-5), name
        if name != "total":
            assert out.terms[name].item() == pytest.approx(ref[name], rel=1e-5)
    assert m.tau == pytest.approx(ref["tau"], rel=1e-5)
    assert m.accept_rate is not None
    for j in range(cfg.block_size):
        assert m.accept_rate[j] == pytest.approx(ref[f"accept@{j}"], rel=1e-5)
        assert m.acc[j] == pytest.approx(ref[f"acc@{j}"], abs=1e-9)
    want_sim, prod = 0.0, 1.0
    for j in range(cfg.block_size):
        prod *= ref[f"acc@{j}"]
        want_sim += prod
    assert m.sim_acc_len == pytest.approx(want_sim)


def test_confidence_calibration_metrics() -> None:
    cfg = tiny_config()
    model = make_model(cfg)
    batch = make_batch(cfg, bsz=2)
    with torch.no_grad():
        out = model(*batch.args())
    m = summarize(out.stats, model.loss_weights)
    # recompute c* from the full logits
    assert out.conf_logits is not None and out.markov_feats is not None
    torch.set_grad_enabled(False)
    logits = model.logits(out.hidden, out.markov_feats)
    seq_len = batch.input_ids.shape[1]
    pos = (batch.anchors.unsqueeze(-1) + torch.arange(cfg.block_size)).clamp(max=seq_len - 1)
    t_hidden = torch.stack([batch.last_hidden[b, pos[b]] for b in range(2)])
    p_t = torch.softmax(model.logits(t_hidden), -1)
    c = (1 - 0.5 * (torch.softmax(logits, -1) - p_t).abs().sum(-1)).clamp(0, 1)
    em = out.eval_mask
    sig = torch.sigmoid(out.conf_logits)
    n = em.sum()
    assert m.confidence_abs_error == pytest.approx(float(((sig - c).abs() * em).sum() / n), rel=1e-5)
    assert m.confidence_bias == pytest.approx(float(((sig - c) * em).sum() / n), rel=1e-5)
    cum = ((sig * em).cumprod(-1) - (c * em).cumprod(-1)) * em
    torch.set_grad_enabled(True)
    assert m.confidence_cum_bias == pytest.approx(float(cum.sum() / n), rel=1e-5)


def _vocab_inputs(
    n: int = 37, hid: int = 16, rank: int = 4, vocab: int = 50, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hid, generator=g, requires_grad=True)
    f = torch.randn(n, rank, generator=g, requires_grad=True)
    w = torch.randn(vocab, hid, generator=g) * 0.5
    w2 = (torch.randn(vocab, rank, generator=g) * 0.5).requires_grad_(True)
    y = torch.randint(0, vocab, (n,), generator=g)
    t = torch.randn(n, hid, generator=g)
    gce = torch.rand(n, generator=g)
    gtv = torch.rand(n, generator=g)
    return h, f, w, w2, y, t, gce, gtv


@pytest.mark.parametrize("chunk", [1, 8, 37, 100])
def test_chunked_equals_unchunked_values_and_gradients(chunk: int) -> None:
    h, f, w, w2, y, t, gce, gtv = _vocab_inputs()
    ref = vocab_terms_reference(VocabRows(h, w, y, f, w2), t)
    assert ref.tv is not None
    grads_ref = torch.autograd.grad((ref.ce * gce).sum() + (ref.tv * gtv).sum(), (h, f, w2))
    got = vocab_terms_chunked(VocabRows(h, w, y, f, w2), t, chunk_size=chunk)
    assert got.tv is not None
    grads = torch.autograd.grad((got.ce * gce).sum() + (got.tv * gtv).sum(), (h, f, w2))
    torch.testing.assert_close(got.ce, ref.ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.tv, ref.tv, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.correct, ref.correct)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_gradient_to_the_lm_head_when_it_trains() -> None:
    h, f, w, w2, y, t, gce, gtv = _vocab_inputs()
    w.requires_grad_(True)
    ref = vocab_terms_reference(VocabRows(h, w, y, f, w2), t)
    got = vocab_terms_chunked(VocabRows(h, w, y, f, w2), t, chunk_size=6)
    assert ref.tv is not None and got.tv is not None
    (gr,) = torch.autograd.grad((ref.ce * gce).sum() + (ref.tv * gtv).sum(), (w,))
    (gc,) = torch.autograd.grad((got.ce * gce).sum() + (got.tv * gtv).sum(), (w,))
    torch.testing.assert_close(gc, gr, rtol=1e-5, atol=1e-6)


def test_model_loss_chunked_equals_unchunked() -> None:
    cfg = tiny_config(markov_head_type="gated")
    batch = make_batch(cfg, bsz=3)
    results = []
    for chunk in (None, 7):
        model = make_model(cfg, loss_chunk_size=chunk)
        out = model(*batch.args())
        assert out.loss is not None
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, rtol=1e-5, atol=1e-7, msg=name)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _saved_numel(fn) -> int:  # type: ignore[no-untyped-def]
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes, default=0)


def test_chunked_peak_memory_is_bounded_by_the_chunk() -> None:
    """No op of forward+backward produces more than ``chunk * V`` elements, and nothing of size [N, V] is
    saved for backward; the unchunked path does both."""
    n, vocab, chunk = 64, 2000, 8
    h, f, w, w2, y, t, gce, gtv = _vocab_inputs(n=n, hid=2, rank=2, vocab=vocab)

    def run(chunk_size: int | None) -> tuple[int, int]:
        def fwd() -> torch.Tensor:
            if chunk_size is None:
                vt = vocab_terms_reference(VocabRows(h, w, y, f, w2), t)
            else:
                vt = vocab_terms_chunked(VocabRows(h, w, y, f, w2), t, chunk_size=chunk_size)
            assert vt.tv is not None
            return (vt.ce * gce).sum() + (vt.tv * gtv).sum()

        saved = _saved_numel(fwd)
        mode = _LargestTensor()
        with mode:
            loss = fwd()
            torch.autograd.grad(loss, (h, f, w2))
        return saved, mode.largest

    saved, largest = run(chunk)
    weights = max(w.numel(), w2.numel())
    assert largest <= max(chunk * vocab, weights), (largest, chunk * vocab)
    assert saved <= max(weights, h.numel()), saved
    saved_full, largest_full = run(None)
    assert largest_full >= n * vocab and saved_full >= n * vocab


def _split_step(
    model: DSparkDraftModel, batch: Batch, groups: list[list[int]]
) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimizer step's loss and gradients with ``batch`` split into micro-batches ``groups``."""
    model.zero_grad(set_to_none=True)
    cfg = model.config
    micro = [batch.select(g) for g in groups]
    local = [local_denominator(m.loss_mask, m.anchors, m.keep, cfg.block_size, cfg.gamma) for m in micro]
    denom = global_denominator(local)
    total = 0.0
    for m in micro:
        out = model(*m.args(), denominator=float(denom))
        assert out.loss is not None
        out.loss.backward()
        total += out.loss.item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total, grads


def test_loss_and_gradients_do_not_depend_on_the_micro_batch_split() -> None:
    cfg = tiny_config(markov_head_type="rnn")
    model = make_model(cfg)
    batch = make_batch(cfg, bsz=4, seq_len=28)
    ref_loss, ref_grads = _split_step(model, batch, [[0, 1, 2, 3]])
    for groups in ([[0, 1], [2, 3]], [[0], [1], [2], [3]], [[3, 1], [0], [2]]):
        loss, grads = _split_step(model, batch, groups)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_statistics_add_up_over_micro_batches() -> None:
    cfg = tiny_config()
    model = make_model(cfg)
    batch = make_batch(cfg, bsz=4)
    with torch.no_grad():
        whole = model(*batch.args()).stats
        total: dict[str, torch.Tensor] = {}
        for g in ([0], [1, 2], [3]):
            accumulate_stats(total, model(*batch.select(g).args()).stats)
    m_whole = summarize(whole, model.loss_weights)
    m_split = summarize(total, model.loss_weights)
    assert m_split.tau == pytest.approx(m_whole.tau)
    assert m_split.loss["total"] == pytest.approx(m_whole.loss["total"], rel=1e-6)
    assert m_split.acc == pytest.approx(m_whole.acc)


def test_denominator_depends_only_on_masks_and_anchors() -> None:
    cfg = tiny_config()
    batch = make_batch(cfg, bsz=2)
    with torch.no_grad():
        out = make_model(cfg)(*batch.args())
    d = local_denominator(batch.loss_mask, batch.anchors, batch.keep, cfg.block_size, cfg.gamma)
    assert float(d) == pytest.approx(float(out.weights.sum()), rel=1e-6)
    assert float(d) == pytest.approx(float(out.stats["weight_sum"]), rel=1e-6)


def test_world_size_scales_the_loss() -> None:
    cfg = tiny_config()
    model = make_model(cfg)
    batch = make_batch(cfg, bsz=2)
    with torch.no_grad():
        one = model(*batch.args(), denominator=10.0).loss
        two = model(*batch.args(), denominator=10.0, world_size=2).loss
    assert one is not None and two is not None
    torch.testing.assert_close(two, 2 * one)


def test_bf16_autocast_runs_and_keeps_fp32_loss() -> None:
    cfg = tiny_config()
    model = make_model(cfg, loss_chunk_size=9)
    batch = make_batch(cfg, bsz=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*batch.args())
    assert out.loss is not None and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    with torch.no_grad():
        ref = model(*batch.args()).loss
    assert ref is not None
    assert out.loss.item() == pytest.approx(ref.item(), rel=5e-2)
    bf = make_model(cfg, loss_chunk_size=9).to(torch.bfloat16)
    out_bf = bf(*batch.args())
    assert out_bf.loss is not None and out_bf.loss.dtype == torch.float32
    out_bf.loss.backward()
    assert bf.fc.weight.grad is not None and bf.fc.weight.grad.dtype == torch.bfloat16


def test_empty_micro_batch_gives_zero_loss_with_a_connected_graph() -> None:
    cfg = tiny_config()
    model = make_model(cfg)
    batch = make_batch(cfg, bsz=1)
    keep = torch.zeros_like(batch.keep)
    out = model(batch.input_ids, batch.hidden, batch.loss_mask, batch.anchors, keep, batch.last_hidden,
                denominator=5.0)
    assert out.loss is not None and out.loss.item() == 0.0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    out = model(batch.input_ids, batch.hidden, batch.loss_mask, batch.anchors, keep, batch.last_hidden)
    assert out.loss is not None and out.loss.item() == 0.0  # own denominator 0: still no NaN
