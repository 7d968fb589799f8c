"""`dspark train --local --capture-devices` / `LocalOptions.capture_devices`: parsing, validation and the
placement of each capture server (fast: nothing is started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from dspark_trainer.assets import LOCAL_DEMO_CONFIG
from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError
from dspark_trainer.local.pipeline import LocalOptions, run_local
from dspark_trainer.local.services import (
    CaptureServerPlan,
    check_capture_devices,
    parse_capture_devices,
    plan_capture_servers,
)


def demo_config(**capture: Any) -> JobConfig:
    raw = yaml.safe_load(LOCAL_DEMO_CONFIG.read_text())
    raw["capture"] = {**raw["capture"], "endpoints": ["http://127.0.0.1:1"], **capture}
    return JobConfig.from_mapping(raw)


def test_parse_splits_on_commas() -> None:
    assert parse_capture_devices("cuda:2,cuda:3") == ["cuda:2", "cuda:3"]
    assert parse_capture_devices(" cpu , cuda:0 ") == ["cpu", "cuda:0"]
    assert parse_capture_devices("") == []
    assert parse_capture_devices("cuda:1,") == ["cuda:1", ""]


def test_check_accepts_cpu_and_cuda_n() -> None:
    assert check_capture_devices(None) is None
    assert check_capture_devices(["cpu"]) == ["cpu"]
    assert check_capture_devices(["cuda:2", " cuda:13 ", "cpu", "cpu"]) == ["cuda:2", "cuda:13", "cpu", "cpu"]


def test_empty_list_is_an_error_that_names_the_option_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        check_capture_devices([])
    msg = str(err.value)
    assert "--capture-devices" in msg and "LocalOptions.capture_devices" in msg
    assert "empty" in msg and "cuda:2,cuda:3" in msg and "leave the option out" in msg


@pytest.mark.parametrize("entry", ["gpu1", "cuda", "cuda:", "cuda:-1", "cuda:x", "CUDA:1", "cuda:0:1", "2", ""])
def test_malformed_entry_is_an_error_that_names_it_and_the_fix(entry: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_capture_devices(["cuda:0", entry])
    msg = str(err.value)
    assert repr(entry.strip()) in msg and "--capture-devices" in msg
    assert '"cpu" or "cuda:N"' in msg and "cuda:2,cuda:3" in msg


def test_a_string_instead_of_a_list_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"give a list of devices.*--capture-devices cuda:2,cuda:3"):
        check_capture_devices("cuda:2,cuda:3")


def test_default_is_one_server_on_the_trainers_device_with_the_environment_unchanged() -> None:
    cfg = demo_config()
    assert plan_capture_servers(None, cfg) == [CaptureServerPlan("capture-server", "cpu", "cpu")]
    cuda = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": "cuda"})})
    assert plan_capture_servers(None, cuda) == [CaptureServerPlan("capture-server", "cuda:0", "cuda:0")]


def test_each_entry_is_one_server_with_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = demo_config()
    assert plan_capture_servers(["cpu", "cpu"], cfg) == [
        CaptureServerPlan("capture-server-0", "cpu", "cpu"),
        CaptureServerPlan("capture-server-1", "cpu", "cpu"),
    ]
    assert plan_capture_servers(["cuda:2", "cuda:3"], cfg) == [
        CaptureServerPlan("capture-server-0", "cuda:2", "cuda:0", {"CUDA_VISIBLE_DEVICES": "2"}),
        CaptureServerPlan("capture-server-1", "cuda:3", "cuda:0", {"CUDA_VISIBLE_DEVICES": "3"}),
    ]
    # one entry keeps the single server's name (and log, capture-server.log)
    assert plan_capture_servers(["cuda:1"], cfg) == [
        CaptureServerPlan("capture-server", "cuda:1", "cuda:0", {"CUDA_VISIBLE_DEVICES": "1"})
    ]


def test_cuda_n_counts_the_gpus_visible_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    cfg = demo_config()
    plans = plan_capture_servers(["cuda:2", "cuda:3"], cfg)
    assert [p.env for p in plans] == [{"CUDA_VISIBLE_DEVICES": "6"}, {"CUDA_VISIBLE_DEVICES": "7"}]
    with pytest.raises(ConfigError, match=r"cuda:4 is not visible here: CUDA_VISIBLE_DEVICES='4,5,6,7'"):
        plan_capture_servers(["cuda:4"], cfg)


def test_capture_devices_need_remote_capture() -> None:
    with pytest.raises(ConfigError, match=r"capture.mode is 'inline', which runs no capture server"):
        plan_capture_servers(["cpu", "cpu"], demo_config(mode="inline"))
    assert plan_capture_servers(None, demo_config(mode="inline"))  # the default stays valid


@pytest.mark.parametrize("devices", [[], ["cuda:0", "gpu1"]])
def test_run_local_rejects_bad_devices_before_starting_anything(
    tmp_path: Path, devices: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    assert run_local(LocalOptions(workdir=str(workdir), capture_devices=devices)) == 2
    err = capsys.readouterr().err
    assert err.startswith("dspark train --local: capture devices") and "--capture-devices" in err
    assert not (workdir / "target").exists() and not (workdir / "logs").exists()


def test_cli_rejects_bad_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dspark_trainer.cli import main

    code = main(["train", "--local", "--workdir", str(tmp_path / "demo"), "--capture-devices", "cuda:2,,cuda:3"])
    assert code == 2
    assert "'' is not a device" in capsys.readouterr().err
