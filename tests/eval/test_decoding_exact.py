"""Speculative decoding at temperature 0 is the target's own greedy decoding, token for token: with a random
(bad) draft, with an oracle draft that proposes the target's continuation, one prompt at a time and batched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dspark_trainer.eval.decoding import speculative_generate, target_generate
from eval_helpers import draft_for, greedy_reference, load, prompts

MAX_NEW = 24


@pytest.fixture(scope="module")
def stop_ids(tiny_llama: Path) -> set[int]:
    return {int(load(tiny_llama).config.eos_token_id)}


@pytest.mark.parametrize("batch", [1, 5])
def test_greedy_speculative_equals_target_generate(tiny_llama: Path, stop_ids: set[int], batch: int) -> None:
    model = load(tiny_llama)
    draft = draft_for(tiny_llama)
    ps = prompts(5, seed=2)
    want = [greedy_reference(model, p, MAX_NEW, stop_ids) for p in ps]
    got: list[list[int]] = []
    for i in range(0, len(ps), batch):
        res = speculative_generate(model, draft, ps[i:i + batch], max_new_tokens=MAX_NEW, temperature=0.0,
                                   stop_ids=stop_ids)
        got.extend(res.outputs)
        assert res.stats is not None and res.stats.rounds > 0
    assert got == want
    base = target_generate(model, ps, max_new_tokens=MAX_NEW, temperature=0.0, stop_ids=stop_ids)
    assert base.outputs == want


def test_random_draft_accepts_almost_nothing(tiny_llama: Path, stop_ids: set[int]) -> None:
    model = load(tiny_llama)
    res = speculative_generate(model, draft_for(tiny_llama, seed=3), prompts(4, seed=5), max_new_tokens=MAX_NEW,
                               temperature=0.0, stop_ids=stop_ids)
    assert res.stats is not None
    assert res.stats.tau < 1.5 and res.stats.accept_rate[0] < 0.4  # ~1: rounds commit only the target token


def test_oracle_draft_is_exact_and_accepts_whole_blocks(
    tiny_llama: Path, stop_ids: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drafter that proposes the target's true greedy continuation (and a wrong token every 7th slot)
    exercises multi-token acceptance, ragged rows in a batch and cache cropping."""
    from dspark_trainer.eval import drafter as drafter_mod

    model = load(tiny_llama)
    draft = draft_for(tiny_llama)
    k = draft.config.block_size
    ps = prompts(4, seed=7)
    want = [greedy_reference(model, p, MAX_NEW + k + 2, stop_ids) for p in ps]
    full = [p + w for p, w in zip(ps, want, strict=True)]
    calls = {"n": 0}
    real_propose = drafter_mod.DraftRunner.propose

    def oracle(self: drafter_mod.DraftRunner, anchor: torch.Tensor, anchor_pos: torch.Tensor,
               pick: drafter_mod.Picker) -> drafter_mod.Proposal:
        prop = real_propose(self, anchor, anchor_pos, pick)
        rows = []
        for b, a in enumerate(anchor_pos.tolist()):
            seq = next(f for f in full if len(f) > a and f[a] == int(anchor[b]))  # the prompt this row decodes
            rows.append([seq[a + 1 + j] if a + 1 + j < len(seq) else 0 for j in range(k)])
        tokens = torch.tensor(rows)
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            tokens[:, (calls["n"] // 3) % k] = 1  # a wrong token somewhere in the block
        return drafter_mod.Proposal(tokens, prop.logits, prop.conf_logits)

    monkeypatch.setattr(drafter_mod.DraftRunner, "propose", oracle)
    res = speculative_generate(model, draft, ps, max_new_tokens=MAX_NEW, temperature=0.0, stop_ids=stop_ids)
    assert res.outputs == [w[:MAX_NEW] for w in want]
    assert res.stats is not None
    assert res.stats.tau > 2.5
    assert res.stats.accept_rate[0] > 0.6
