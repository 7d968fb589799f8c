"""Fixtures of the regeneration tests: a tiny Qwen3 target and two reference chat servers serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from regen_helpers import ServerProcess

FAULT_ARGS = ["--fault-flaky", "FLAKY", "--fault-flaky-count", "1", "--fault-always", "POISON"]


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dspark_trainer.local.tiny_model import make_tiny_qwen3_target

    return make_tiny_qwen3_target(tmp_path_factory.mktemp("target") / "tiny", num_layers=2, hidden_size=32)


@pytest.fixture(scope="module")
def servers(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two reference servers; requests whose last user message holds FLAKY fail once per server, POISON always."""
    workdir = tmp_path_factory.mktemp("servers")
    procs = [ServerProcess(tiny_target, workdir, f"server{i}", FAULT_ARGS) for i in range(2)]
    try:
        yield [p.wait_ready() for p in procs]
    finally:
        for p in procs:
            p.stop()
