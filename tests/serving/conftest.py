"""Fixtures of the serving tests: a tiny random Qwen3 target and the pinned engines' sources."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from dspark_trainer.local.tiny_model import make_tiny_qwen3_target
from dspark_trainer.model.serving import SGLANG_VERSION, VLLM_VERSION
from module_loader import load_module
from vllm_source import vllm_source

REPO = Path(__file__).resolve().parents[2]
sglang_source = load_module("sglang_source", REPO / "tests" / "capture" / "sglang_source.py")


def _fetch(what: str, fn: object, version: str) -> Path:
    try:
        return fn(version)  # type: ignore[operator, no-any-return]
    except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:  # no package index
        if os.environ.get("CI"):
            pytest.fail(f"cannot download {what}=={version}: {exc}")
        pytest.skip(f"cannot download {what}=={version}: {exc}")


@pytest.fixture(scope="session")
def sglang_src() -> Path:
    return _fetch("sglang", sglang_source.sglang_source, SGLANG_VERSION)


@pytest.fixture(scope="session")
def sglang_site() -> Path:
    """SGLang's parser packages (msgspec, ...), installed beside the unpacked wheel."""
    return _fetch("sglang's parser packages", lambda v: sglang_source.sglang_parser_path(v)[1], SGLANG_VERSION)


@pytest.fixture(scope="session")
def vllm_src() -> Path:
    return _fetch("vllm", vllm_source, VLLM_VERSION)


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen3_target(tmp_path_factory.mktemp("target") / "tiny-qwen3", num_layers=8)
