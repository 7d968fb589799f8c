"""Fixtures of the DSpark model tests: tiny configurations, random batches, a tiny target on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dspark_trainer.model.config import DSparkModelConfig
from model_helpers import tiny_config

torch.set_num_threads(1)


@pytest.fixture
def cfg() -> DSparkModelConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dspark_trainer.local.tiny_model import make_tiny_qwen3_target

    return make_tiny_qwen3_target(tmp_path_factory.mktemp("target") / "tiny-qwen3", num_layers=8)

