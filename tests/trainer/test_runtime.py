"""The distributed runtime on CPU (gloo) with the DSpark draft and inline capture (the target runs in each
rank): micro-batch/rank equivalence, resume after a killed worker, SIGTERM checkpoints, completion."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from dspark_trainer.runtime.sample_log import read_sample_log
from safetensors.torch import load_file
from trainer_helpers import make_small_target, torchrun_cmd, trainer_env, worker_pids, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("target")
    make_small_target(path)
    return path


def base_config(root: Path, target: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "target": {"model": str(target), "dtype": "float32"},
        "draft": {"targetLayerIds": [0, 2], "blockSize": 4, "numDraftLayers": 1, "numAnchors": 16, "markovRank": 8},
        "dataset": {"path": "builtin:demo-conversations", "maxLength": 96, "evalFraction": 0.05},
        "schedule": {"microBatchSize": 1, "globalBatchSize": 4, "maxSteps": 12, "seed": 1},
        "optimizer": {"learningRate": 3e-3, "warmupRatio": 0.1},
        "checkpoint": {"dir": str(root / "ckpt"), "intervalSteps": 2, "keepLast": 2},
        "eval": {"intervalSteps": 5, "maxSamples": 3},
        "capture": {"mode": "inline"},
        "metrics": {"port": 0},
        "runtime": {"exitOnComplete": True, "logIntervalSteps": 1, "sampleLogDir": str(root / "samples")},
        "outputDir": str(root / "out"),
        "export": {"dtype": "float32"},  # compare the trained float32 weights, not their bf16 serving copy
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def run_torchrun(root: Path, cfg: dict[str, Any], nproc: int, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    root.mkdir(parents=True, exist_ok=True)
    path = write_config(root / "config.yaml", cfg)
    proc = subprocess.run(torchrun_cmd(path, nproc), env=trainer_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def sample_logs(root: Path) -> dict[str, list[tuple[int, list[str]]]]:
    return {p.name: read_sample_log(p) for p in sorted((root / "samples").glob("rank-*.jsonl"))}


def weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(str(root / "out" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, target_dir: Path) -> Path:
    """An uninterrupted 2-rank run of 12 steps."""
    root = tmp_path_factory.mktemp("reference")
    run_torchrun(root, base_config(root, target_dir), nproc=2)
    return root


def test_one_rank_two_micro_batches_equals_two_ranks_one_each(tmp_path: Path, target_dir: Path) -> None:
    over = {"schedule": {"globalBatchSize": 2, "maxSteps": 1}, "eval": {"maxSamples": 1}}
    one, two = tmp_path / "one", tmp_path / "two"
    run_torchrun(one, base_config(one, target_dir, **over), nproc=1)
    run_torchrun(two, base_config(two, target_dir, **over), nproc=2)
    log_one = sample_logs(one)["rank-00000.jsonl"]
    logs_two = sample_logs(two)
    assert log_one[0][1] == logs_two["rank-00000.jsonl"][0][1] + logs_two["rank-00001.jsonl"][0][1]
    marker_one = json.loads((one / "out" / "dspark_complete.json").read_text())
    marker_two = json.loads((two / "out" / "dspark_complete.json").read_text())
    assert marker_one["loss"] == pytest.approx(marker_two["loss"], rel=1e-6)
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys() and "layers.0.self_attn.q_proj.weight" in w1
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-5, atol=1e-6)


def test_killed_worker_resumes_and_uses_every_sample_as_often(
    tmp_path: Path, target_dir: Path, reference_run: Path
) -> None:
    root = tmp_path / "killed"
    root.mkdir()
    path = write_config(root / "config.yaml", base_config(root, target_dir))
    proc = subprocess.Popen(torchrun_cmd(path, 2, max_restarts=2), env=trainer_env(), cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log1 = root / "samples" / "rank-00001.jsonl"
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if log1.exists() and len(log1.read_text().splitlines()) >= 5:
            pids = worker_pids(proc.pid)
            if 1 in pids:
                import os

                os.kill(pids[1], signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    assert killed, "the run ended before a worker could be killed"
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "resumed from" in out
    assert sample_logs(root) == sample_logs(reference_run)
    ref = weights(reference_run)
    for key, value in weights(root).items():
        torch.testing.assert_close(value, ref[key], rtol=1e-5, atol=1e-6)


def sigterm_after_three_steps(root: Path, cfg: dict[str, Any]) -> int:
    """Start a 2-rank run, send torchrun SIGTERM once rank 0 logged 3 steps; the step it checkpointed."""
    root.mkdir()
    path = write_config(root / "config.yaml", cfg)
    proc = subprocess.Popen(torchrun_cmd(path, 2), env=trainer_env(), cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log0 = root / "samples" / "rank-00000.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log0.exists() and len(log0.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=120)
    ckpts = sorted((root / "ckpt").glob("step-*"))
    assert ckpts, out[-4000:]
    return int(ckpts[-1].name.split("-")[1])


def test_sigterm_checkpoints_then_a_restart_finishes_the_same_run(
    tmp_path: Path, target_dir: Path, reference_run: Path
) -> None:
    root = tmp_path / "sigterm"
    stopped_at = sigterm_after_three_steps(root, base_config(root, target_dir, checkpoint={"intervalSteps": 100}))
    assert 3 <= stopped_at < 12
    assert not (root / "out" / "dspark_complete.json").exists()
    run_torchrun(root, base_config(root, target_dir, checkpoint={"intervalSteps": 100}), nproc=2)
    assert sample_logs(root) == sample_logs(reference_run)


def test_split_master_weights_train_and_resume_exactly(tmp_path: Path, target_dir: Path) -> None:
    """bf16 parameters + SplitMasterAdamW under FSDP2 (gloo): training runs, and a run stopped by SIGTERM
    and restarted from its checkpoint ends with the same weights, bit for bit, as an uninterrupted one."""
    over: dict[str, Any] = {"optimizer": {"masterWeights": "split"}, "runtime": {"precision": "bf16"},
                            "schedule": {"maxSteps": 8}, "checkpoint": {"intervalSteps": 100}}
    ref = tmp_path / "ref"
    run_torchrun(ref, base_config(ref, target_dir, **over), nproc=2)
    root = tmp_path / "stopped"
    assert 3 <= sigterm_after_three_steps(root, base_config(root, target_dir, **over)) < 8
    run_torchrun(root, base_config(root, target_dir, **over), nproc=2)
    assert sample_logs(root) == sample_logs(ref)
    got, want = weights(root), weights(ref)
    assert got.keys() == want.keys()
    for key, value in got.items():
        assert torch.equal(value, want[key]), key


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: str = resp.read().decode()
        return body


def test_completed_run_stays_alive_serves_metrics_and_is_not_trained_again(
    tmp_path: Path, target_dir: Path, reference_run: Path
) -> None:
    import shutil

    from dspark_trainer.util.net import free_port

    root = tmp_path / "done"
    shutil.copytree(reference_run / "out", root / "out")
    shutil.copytree(reference_run / "samples", root / "samples")
    port = free_port()
    cfg = base_config(root, target_dir, metrics={"port": port}, runtime={"exitOnComplete": False})
    path = write_config(root / "config.yaml", cfg)
    import sys

    proc = subprocess.Popen([str(Path(sys.executable).parent / "dspark"), "train", "--config", str(path)],
                            env=trainer_env(), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        progress: dict[str, Any] = {}
        while time.time() < deadline:
            try:
                progress = json.loads(get(f"http://127.0.0.1:{port}/progress"))
                if progress["state"] == "Completed":
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert progress.get("state") == "Completed"
        assert progress["step"] == 12
        time.sleep(1.0)
        assert proc.poll() is None, "a completed trainer must stay alive until SIGTERM"
        assert "dspark_train_completed 1.0" in get(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert sample_logs(root) == sample_logs(reference_run)
    assert not (root / "ckpt").exists()
