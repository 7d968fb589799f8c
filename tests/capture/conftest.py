"""Fixtures of the capture tests: a tiny random Qwen3 target and a real Mooncake master."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_helpers import TINY_LAYERS, TINY_VOCAB
from dspark_trainer.local.tiny_model import make_tiny_qwen3_target
from harness.mooncake import MooncakeMaster


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen3")
    return make_tiny_qwen3_target(path, hidden_size=64, num_layers=TINY_LAYERS, vocab_size=TINY_VOCAB, seed=0)


@pytest.fixture
def mooncake_master(tmp_path: Path) -> Iterator[MooncakeMaster]:
    with MooncakeMaster(log_dir=tmp_path / "mooncake") as master:
        yield master
