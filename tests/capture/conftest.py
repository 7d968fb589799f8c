"""Fixtures of the capture tests: a tiny random Qwen3 target and a real Mooncake master."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_helpers import TINY_LAYERS, TINY_VOCAB
from dspark_trainer.testing.mooncake import MooncakeMaster


def make_tiny_target(path: Path) -> Path:
    """A tiny random Qwen3 target (the shared helper when it exists, else built here)."""
    try:
        from dspark_trainer.testing.tiny_target import make_tiny_qwen3_target  # type: ignore[import-not-found]
    except ImportError:
        make_tiny_qwen3_target = None
    if make_tiny_qwen3_target is not None:
        return Path(make_tiny_qwen3_target(path, hidden_size=64, num_layers=TINY_LAYERS, vocab_size=TINY_VOCAB, seed=0))
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    Qwen3ForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_target(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture
def mooncake_master(tmp_path: Path) -> Iterator[MooncakeMaster]:
    with MooncakeMaster(log_dir=tmp_path / "mooncake") as master:
        yield master
