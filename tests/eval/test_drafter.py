"""The inference drafter computes the training model's block: cached context K/V appended in ragged segments
give the same hidden states as ``DSparkDraftModel.backbone`` with an anchor there, and the sequential heads,
teacher-forced, give the training forward's logits and confidences."""

from __future__ import annotations

import pytest
import torch
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.eval.drafter import DraftRunner, run_heads
from dspark_trainer.model.config import resolve_model_config
from dspark_trainer.model.draft import DSparkDraftModel


def _model(head: str) -> DSparkDraftModel:
    hf = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 8, "vocab_size": 96, "rope_theta": 10000.0,
          "hidden_act": "silu"}
    opts = DraftOptions(block_size=4, num_draft_layers=2, num_anchors=4, num_target_layers_captured=3,
                        markov_rank=8, markov_head_type=head, mask_token_id=95)
    model = DSparkDraftModel(resolve_model_config(hf, opts), attention_backend="dense")
    model.reset_parameters(0)
    return model.eval()


@pytest.mark.parametrize("head", ["vanilla", "gated", "rnn"])
def test_cached_block_equals_the_training_forward(head: str) -> None:
    model = _model(head)
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    seq_len, anchors = 30, [17, 23]
    ids = torch.randint(0, 90, (2, seq_len), generator=g)
    hidden = torch.randn(2, seq_len, 3 * cfg.hidden_size, generator=g)
    runner = DraftRunner(model)
    # row b gets its context 0..anchors[b]-1 in segments of different widths, padded for the shorter row
    cuts = [[0, 5, 6, 12, 17], [0, 9, 10, 16, 23]]
    for seg in range(4):
        width = max(c[seg + 1] - c[seg] for c in cuts)
        pos = torch.zeros(2, width, dtype=torch.long)
        valid = torch.zeros(2, width, dtype=torch.bool)
        part = torch.zeros(2, width, hidden.shape[-1])
        for b, c in enumerate(cuts):
            n = c[seg + 1] - c[seg]
            pos[b, :n] = torch.arange(c[seg], c[seg + 1])
            valid[b, :n] = True
            part[b, :n] = hidden[b, c[seg]:c[seg + 1]]
        runner.append_context(part, pos, valid)
    anchor_ids = torch.tensor([int(ids[b, a]) for b, a in enumerate(anchors)])
    got = runner.block_hidden(anchor_ids, torch.tensor(anchors))
    with torch.no_grad():
        out = model(ids, hidden, torch.ones_like(ids), torch.tensor(anchors).view(2, 1), compute_loss=False,
                    return_logits=True)
    want = out.hidden[:, 0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    labels = out.labels[:, 0]  # teacher forcing: slot j's previous token is label j-1
    prop = run_heads(model, got, anchor_ids, lambda j, _logit: labels[:, j])
    assert torch.equal(prop.tokens, labels)
    assert out.logits is not None and out.conf_logits is not None and prop.conf_logits is not None
    torch.testing.assert_close(prop.logits, out.logits[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prop.conf_logits, out.conf_logits[:, 0].float(), rtol=1e-5, atol=1e-5)
