"""The runtime's status reporting (a fake reporter in place of the operator's), in-process on one rank."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.config.job import JobConfig
from dspark_trainer.runtime import main as runtime_main
from dspark_trainer.util.net import free_port
from trainer_helpers import make_small_target


class FakeReporter:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[tuple[str, int | None, str | None]] = []
        self.completions: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.calls = 0

    def report(self, fields: Mapping[str, Any] | None = None, force: bool = False, **more: Any) -> bool:
        self.reports.append({**(fields or {}), **more})
        return True

    def checkpoint_request(self, max_age: float = 30.0) -> str | None:
        self.calls += 1
        return "suspend-1" if self.calls >= 3 else None  # asked before the 3rd step

    def checkpointed(self, path: str, step: int | None = None, request_id: str | None = None) -> bool:
        self.checkpoints.append((path, step, request_id))
        return True

    def completed(self, draft_path: str, *, retry_seconds: float = 120.0, **fields: Any) -> bool:
        self.completions.append({"draft_path": draft_path, **fields})
        return True

    def failed(self, message: str, **fields: Any) -> bool:
        self.failures.append(message)
        return True

    def close(self) -> None:
        return


@pytest.fixture
def one_rank_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def config(tmp_path: Path, **runtime: Any) -> JobConfig:
    target = make_small_target(tmp_path / "target")
    return JobConfig.model_validate({
        "target": {"model": str(target), "dtype": "float32"},
        "draft": {"targetLayerIds": [0, 2], "blockSize": 4, "numDraftLayers": 1, "numAnchors": 8, "markovRank": 8},
        "dataset": {"path": "builtin:demo-conversations", "maxLength": 64, "evalFraction": 0.02},
        "schedule": {"globalBatchSize": 2, "maxSteps": 4},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "intervalSteps": 100},
        "eval": {"maxSamples": 2},
        "capture": {"mode": "inline"},
        "metrics": {"enabled": False},
        "runtime": {"exitOnComplete": True, **runtime},
        "outputDir": str(tmp_path / "out"),
    })


def test_progress_checkpoint_request_and_completion_reach_the_reporter(
    tmp_path: Path, one_rank_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeReporter()
    monkeypatch.setattr(runtime_main, "make_status_sink", lambda job, interval: fake)
    assert runtime_main.run(config(tmp_path)) == 0
    states = [r.get("state") for r in fake.reports if r.get("state")]
    assert states[0] == "Running"
    steps = [r["step"] for r in fake.reports if "step" in r]
    assert max(steps) == 4 and all(r.get("total") == 4 for r in fake.reports if "step" in r)
    # The operator's request is answered once, with a checkpoint of the step it was seen at.
    assert len(fake.checkpoints) == 1
    path, step, request = fake.checkpoints[0]
    assert request == "suspend-1" and step == 2 and path.endswith("step-00000002")
    assert (Path(path) / "COMPLETE").is_file()
    assert fake.completions and fake.completions[0]["draft_path"] == str(tmp_path / "out")
    assert fake.completions[0]["step"] == 4 and fake.completions[0]["loss"] > 0
    assert not fake.failures


def test_a_bad_config_is_reported_as_failed(
    tmp_path: Path, one_rank_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeReporter()
    monkeypatch.setattr(runtime_main, "make_status_sink", lambda job, interval: fake)
    cfg = config(tmp_path)
    cfg = cfg.model_copy(update={"draft": cfg.draft.model_copy(update={"target_layer_ids": [0, 3]})})
    assert runtime_main.run(cfg) == 2
    assert fake.failures and "draft.targetLayerIds" in fake.failures[0]
