"""Bad configs fail at start with a message naming the field (the CLI and the start-up checks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.cli import main as cli_main
from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError
from dspark_trainer.runtime.preflight import plan_run
from trainer_helpers import make_small_target, write_config


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = make_small_target(tmp_path_factory.mktemp("target"))  # 4 layers
    return path


def good(target: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "target": {"model": str(target)},
        "draft": {"targetLayerIds": [0, 2]},
        "dataset": {"path": "builtin:demo-conversations"},
        "schedule": {"globalBatchSize": 4},
        "capture": {"mode": "inline"},
        "checkpoint": {"dir": str(tmp_path / "ckpt")},
        "outputDir": str(tmp_path / "out"),
    }


def cli_error(tmp_path: Path, cfg: dict[str, Any], capsys: pytest.CaptureFixture[str], name: str = "c.yaml") -> str:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(cfg))
    else:
        write_config(path, cfg)
    assert cli_main(["train", "--config", str(path)]) == 2
    return capsys.readouterr().err


def test_unknown_keys_are_named(tmp_path: Path, target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = good(target, tmp_path)
    cfg["dataset"]["maxLenght"] = 10
    cfg["optimiser"] = {}
    err = cli_error(tmp_path, cfg, capsys)
    assert "dataset.maxLenght: unknown key" in err and "optimiser: unknown key" in err


def test_snake_case_json_is_accepted_too(tmp_path: Path, target: Path) -> None:
    cfg = good(target, tmp_path)
    cfg["schedule"] = {"global_batch_size": 4, "micro_batch_size": 2}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    parsed = JobConfig.from_file(path)
    assert parsed.schedule.micro_batch_size == 2


def test_missing_dataset(tmp_path: Path, target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = good(target, tmp_path)
    cfg["dataset"]["path"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"dataset\.path: .*missing\.jsonl does not exist"):
        plan_run(JobConfig.model_validate(cfg), 1)
    cfg["runtime"] = {"exitOnComplete": True}
    assert "dataset.path" in cli_error(tmp_path, cfg, capsys)


def test_target_layer_ids_outside_the_model(tmp_path: Path, target: Path) -> None:
    cfg = good(target, tmp_path)
    cfg["draft"] = {"numTargetLayersCaptured": 5}  # the default rule needs more than 4 layers
    with pytest.raises(ConfigError, match=r"draft\.targetLayerIds: the target has 4 layers"):
        plan_run(JobConfig.model_validate(cfg), 1)
    cfg["draft"] = {"targetLayerIds": [1, 3]}  # layer 3 is the last of 4
    with pytest.raises(ConfigError, match=r"draft\.targetLayerIds: .*\[3\]"):
        plan_run(JobConfig.model_validate(cfg), 1)
    cfg["draft"] = {"targetLayerIds": [1, 9]}
    with pytest.raises(ConfigError, match=r"draft\.targetLayerIds"):
        plan_run(JobConfig.model_validate(cfg), 1)


def test_more_ranks_than_samples(tmp_path: Path, target: Path, write_jsonl: Any) -> None:
    convs = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"a{i}"}]}
             for i in range(3)]
    cfg = good(target, tmp_path)
    cfg["dataset"] = {"path": str(write_jsonl(convs)), "evalFraction": 0.0}
    cfg["schedule"] = {"globalBatchSize": 4}
    with pytest.raises(ConfigError, match=r"dataset\.path: 3 training samples are too few for 4 ranks"):
        plan_run(JobConfig.model_validate(cfg), 4)
    plan = plan_run(JobConfig.model_validate(cfg), 2)
    assert plan.samples_per_rank == 2


def test_batch_sizes_and_capture_endpoints(tmp_path: Path, target: Path) -> None:
    cfg = good(target, tmp_path)
    cfg["schedule"] = {"globalBatchSize": 6}
    with pytest.raises(ConfigError, match=r"schedule\.globalBatchSize \(6\) must be a multiple of ranks \(4\)"):
        plan_run(JobConfig.model_validate(cfg), 4)
    with pytest.raises(ConfigError, match=r"schedule\.globalBatchSize \(6\) must be a multiple of schedule"):
        JobConfig.from_mapping({**cfg, "schedule": {"globalBatchSize": 6, "microBatchSize": 4}})
    cfg = good(target, tmp_path)
    cfg["capture"] = {"mode": "remote"}
    with pytest.raises(ConfigError, match=r"capture\.endpoints"):
        plan_run(JobConfig.model_validate(cfg), 1)


def test_split_master_weights_need_bf16_parameters(tmp_path: Path, target: Path) -> None:
    from dspark_trainer.runtime.preflight import check_master_weights

    cfg = JobConfig.model_validate({**good(target, tmp_path), "optimizer": {"masterWeights": "split"},
                                        "runtime": {"device": "cpu"}})
    with pytest.raises(ConfigError, match=r"optimizer\.masterWeights: split needs bf16.*runtime\.precision: bf16"):
        plan_run(cfg, 1)
    check_master_weights(cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"precision": "bf16"})}),
                         cuda_available=False)
    auto_gpu = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": "auto"})})
    check_master_weights(auto_gpu, cuda_available=True)
    with pytest.raises(ConfigError, match="on CPU"):
        check_master_weights(auto_gpu, cuda_available=False)


def test_builtin_target_outside_local_mode(tmp_path: Path, target: Path) -> None:
    cfg = good(target, tmp_path)
    cfg["target"] = {"model": "builtin:tiny-qwen3"}
    with pytest.raises(ConfigError, match=r"target\.model: builtin:tiny-qwen3 is only created by"):
        plan_run(JobConfig.model_validate(cfg), 1)


def test_demo_config_copies_match() -> None:
    from dspark_trainer.assets import LOCAL_DEMO_CONFIG

    repo = Path(__file__).resolve().parents[2]
    assert (repo / "configs" / "local-demo.yaml").read_text() == LOCAL_DEMO_CONFIG.read_text()
    JobConfig.from_file(LOCAL_DEMO_CONFIG)


def test_a_hub_target_is_read_from_its_snapshot_at_the_revision(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[tuple[str, str | None]] = []

    def snapshot_download(*, repo_id: str, revision: str | None = None, **_: object) -> str:
        calls.append((repo_id, revision))
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    cfg = good(target, tmp_path)
    cfg["target"] = {"model": "acme/tiny-qwen3", "revision": "0123abcd"}
    plan = plan_run(JobConfig.model_validate(cfg), 1)
    assert calls == [("acme/tiny-qwen3", "0123abcd")]  # resolved once; config, tokenizer and build read the snapshot
    assert plan.target_dir == str(target) and plan.layer_ids == [0, 2]
