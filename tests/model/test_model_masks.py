"""The attention mask: FlexAttention block mask == dense mask == brute force from the definition, and the
model gives the same outputs with either attention path; blocks do not see each other."""

from __future__ import annotations

import pytest
import torch
from dspark_trainer.model.anchors import sample_anchors
from dspark_trainer.model.masks import dense_mask, dspark_mask_mod, flex_block_mask
from model_helpers import make_batch, make_model, tiny_config
from torch.nn.attention.flex_attention import create_mask


def brute_force_mask(anchors: torch.Tensor, keep: torch.Tensor, seq_len: int, k: int) -> torch.Tensor:
    """Python loops over (b, q, kv), straight from the method's definition."""
    bsz, num = anchors.shape
    out = torch.zeros(bsz, 1, num * k, seq_len + num * k, dtype=torch.bool)
    for b in range(bsz):
        for q in range(num * k):
            blk = q // k
            if not keep[b, blk]:
                continue
            a = int(anchors[b, blk])
            for kv in range(seq_len + num * k):
                if kv < seq_len:
                    out[b, 0, q, kv] = kv < a
                else:
                    out[b, 0, q, kv] = (kv - seq_len) // k == blk
    return out


CASES = [
    # (anchors, keep, T, K): edge positions, invalid blocks, padding slots
    ([[0, 5, 18], [3, 7, 10]], [[True, True, False], [True, True, True]], 20, 4),
    ([[0, 1, 18]], [[True, True, True]], 20, 3),  # anchor at 0 and at T-2
    ([[0, 0, 0]], [[True, False, False]], 9, 5),
    ([[4]], [[False]], 6, 2),  # no valid block at all
    ([[2, 3, 4, 5, 6, 7, 8]], [[True] * 7], 10, 7),
]


@pytest.mark.parametrize(("anchors", "keep", "seq_len", "k"), CASES)
def test_masks_match_the_definition(anchors: list[list[int]], keep: list[list[bool]], seq_len: int, k: int) -> None:
    a = torch.tensor(anchors)
    kp = torch.tensor(keep)
    ref = brute_force_mask(a, kp, seq_len, k)
    assert torch.equal(dense_mask(a, kp, seq_len, k), ref)
    num = a.shape[1]
    mod = dspark_mask_mod(a, kp, seq_len, k)
    flex_dense = create_mask(mod, a.shape[0], 1, num * k, seq_len + num * k, device="cpu")
    assert torch.equal(flex_dense, ref)
    # the block mask agrees with the element mask: every block it skips is fully masked
    bm = flex_block_mask(a, kp, seq_len, k, mask_block_size=4)
    blocks = bm.to_dense().bool()  # [B, 1, q_blocks, kv_blocks]: block may have allowed entries
    for b in range(a.shape[0]):
        for qb in range(blocks.shape[2]):
            for kb in range(blocks.shape[3]):
                tile = ref[b, 0, qb * 4 : (qb + 1) * 4, kb * 4 : (kb + 1) * 4]
                if tile.any():
                    assert blocks[b, 0, qb, kb]


def test_masks_match_on_random_sampled_anchors() -> None:
    g = torch.Generator().manual_seed(3)
    for trial in range(6):
        seq_len = int(torch.randint(8, 40, (1,), generator=g))
        lm = (torch.rand(3, seq_len, generator=g) > 0.3).long()
        lm[:, -2:] = 1
        anchors, keep = sample_anchors(lm, 5, seeds=[trial, trial + 10, trial + 20])
        k = int(torch.randint(1, 6, (1,), generator=g))
        ref = brute_force_mask(anchors, keep, seq_len, k)
        assert torch.equal(dense_mask(anchors, keep, seq_len, k), ref)
        mod = dspark_mask_mod(anchors, keep, seq_len, k)
        num = anchors.shape[1]
        assert torch.equal(create_mask(mod, 3, 1, num * k, seq_len + num * k, device="cpu"), ref)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_model_output_flex_equals_dense() -> None:
    cfg = tiny_config(markov_head_type="gated")
    batch = make_batch(cfg, bsz=3, seq_len=30)
    batch.keep[1, -1] = False  # an invalid block in the middle of the data
    dense = make_model(cfg, attention_backend="dense")
    flex = make_model(cfg, attention_backend="flex", compile_flex=False)
    with torch.no_grad():
        a = dense(*batch.args())
        b = flex(*batch.args())
    torch.testing.assert_close(b.hidden, a.hidden, rtol=1e-5, atol=1e-5)
    assert a.conf_logits is not None and b.conf_logits is not None and a.loss is not None and b.loss is not None
    torch.testing.assert_close(b.conf_logits, a.conf_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_refuses_backward_on_cpu_with_a_clear_error() -> None:
    cfg = tiny_config()
    batch = make_batch(cfg, bsz=1)
    model = make_model(cfg, attention_backend="flex", compile_flex=False)
    with pytest.raises(RuntimeError, match="backward on CPU"):
        model(*batch.args())


def test_blocks_are_isolated() -> None:
    """Each block's output equals the output of a forward pass with that anchor alone."""
    cfg = tiny_config(markov_head_type="rnn")
    batch = make_batch(cfg, bsz=2, seq_len=26)
    model = make_model(cfg)
    with torch.no_grad():
        full = model(*batch.args(), compute_loss=False)
        for b in range(2):
            for i in range(batch.anchors.shape[1]):
                if not batch.keep[b, i]:
                    continue
                one = model(
                    batch.input_ids[b : b + 1], batch.hidden[b : b + 1], batch.loss_mask[b : b + 1],
                    batch.anchors[b : b + 1, i : i + 1], compute_loss=False,
                )
                torch.testing.assert_close(one.hidden[0, 0], full.hidden[b, i], rtol=1e-5, atol=1e-5)
                assert one.conf_logits is not None and full.conf_logits is not None
                torch.testing.assert_close(one.conf_logits[0, 0], full.conf_logits[b, i], rtol=1e-5, atol=1e-5)


def test_context_after_the_anchor_is_invisible() -> None:
    """Changing the target's hidden states at or after the anchor does not change the block."""
    cfg = tiny_config()
    batch = make_batch(cfg, bsz=1, seq_len=20)
    model = make_model(cfg)
    anchors = torch.tensor([[9]])
    with torch.no_grad():
        ref = model(batch.input_ids, batch.hidden, batch.loss_mask, anchors, compute_loss=False).hidden
        hid = batch.hidden.clone()
        hid[:, 9:] = torch.randn_like(hid[:, 9:])
        same = model(batch.input_ids, hid, batch.loss_mask, anchors, compute_loss=False).hidden
        hid[:, 8] += 1.0
        diff = model(batch.input_ids, hid, batch.loss_mask, anchors, compute_loss=False).hidden
    torch.testing.assert_close(same, ref)
    assert not torch.allclose(diff, ref)
