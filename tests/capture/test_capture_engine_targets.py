"""The reference capture engine on Llama and Qwen2 targets: the captured layers are the outputs of HF layer i,
and the last state is the final post-norm state (the LM head's input), bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from capture_helpers import TINY_VOCAB, reference_states
from dspark_trainer.capture.engine import CaptureEngine
from dspark_trainer.local.tiny_model import make_tiny_target

LAYER_IDS = [-1, 1, 3, 4]


@pytest.mark.parametrize(("arch", "tied"), [("llama", True), ("qwen2", False), ("qwen3", True)])
def test_engine_captures_llama_and_qwen2_targets(tmp_path: Path, arch: str, tied: bool) -> None:
    target = make_tiny_target(tmp_path / arch, arch=arch, num_layers=6, vocab_size=TINY_VOCAB,
                              tie_word_embeddings=tied)
    engine = CaptureEngine(target, LAYER_IDS, batch_mode="equal_length")
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, TINY_VOCAB, (n,), generator=g).tolist() for n in (7, 7, 19)]
    for ids, got in zip(seqs, engine.capture(seqs), strict=True):
        want_hidden, want_last = reference_states(target, ids, LAYER_IDS)
        assert torch.equal(got.hidden(), want_hidden), arch
        assert torch.equal(got.last_hidden, want_last), arch
