"""Fixtures of the evaluation tests: tiny random targets on disk and drafts built for them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dspark_trainer.local.tiny_model import make_tiny_target

    return make_tiny_target(tmp_path_factory.mktemp("tiny-llama"), arch="llama", num_layers=6, hidden_size=64,
                            tie_word_embeddings=False, seed=1)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dspark_trainer.local.tiny_model import make_tiny_target

    return make_tiny_target(tmp_path_factory.mktemp("tiny-qwen3"), arch="qwen3", num_layers=6, hidden_size=64)
