"""The embedded pipeline end to end (`dspark train --local`): tiny taught target, real Mooncake master,
reference capture server, torchrun with 2 CPU workers. Checks that loss falls and tau rises, that the
metrics endpoint serves every trainer metric of the monitoring design, that the exported draft loads bit for
bit, and that Ctrl-C checkpoints, stops every process, and a re-run resumes exactly; and that
`--capture-devices cpu,cpu` starts two capture servers that both feed the trainer."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dspark_trainer.assets import LOCAL_DEMO_CONFIG
from dspark_trainer.runtime.sample_log import read_sample_log

pytestmark = [pytest.mark.slow, pytest.mark.mooncake]

# The trainer's metric names (rank 0, aggregated over ranks) and the eval counterparts.
DESIGN_TRAINER_METRICS = [
    "dspark_train_step", "dspark_train_samples_total", "dspark_train_tokens_total", "dspark_train_loss",
    "dspark_train_accept_rate", "dspark_train_tau", "dspark_train_acc", "dspark_train_sim_acc_len",
    "dspark_train_grad_norm", "dspark_train_learning_rate", "dspark_train_step_seconds",
    "dspark_train_data_wait_seconds", "dspark_transport_bytes_total", "dspark_transport_get_seconds",
    "dspark_eval_loss", "dspark_eval_accept_rate", "dspark_eval_tau", "dspark_eval_acc", "dspark_eval_sim_acc_len",
]
STEP_LINE = re.compile(r"step (\d+)/(\d+) loss ([\d.]+) tau ([\d.]+)")
EVAL_LINE = re.compile(r"eval at step (\d+) on \d+ samples: loss ([\d.]+) tau ([\d.]+)")


@pytest.fixture(scope="module")
def demo_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dspark_trainer.local.tiny_target import ensure_demo_target

    return ensure_demo_target(tmp_path_factory.mktemp("demo-target") / "target")


def test_config(root: Path) -> Path:
    cfg = yaml.safe_load(LOCAL_DEMO_CONFIG.read_text())
    cfg["schedule"]["numEpochs"] = 1
    cfg["checkpoint"]["intervalSteps"] = 10
    cfg["eval"]["intervalSteps"] = 10
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


test_config.__test__ = False  # type: ignore[attr-defined]


@dataclass
class Run:
    workdir: Path
    returncode: int
    output: str
    metrics: str = ""
    progress: list[dict[str, Any]] = field(default_factory=list)
    capture_metrics: dict[str, str] = field(default_factory=dict)  # capture server URL -> its last /metrics


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as resp:
        body: str = resp.read().decode()
        return body


def scrape(workdir: Path, stop: threading.Event, run: Run) -> None:
    """Keep the last /metrics text and every /progress document while the trainer serves them."""
    port = None
    while not stop.wait(0.3):
        if port is None:
            try:
                port = int(yaml.safe_load((workdir / "job.yaml").read_text())["metrics"]["port"])
            except (OSError, TypeError, KeyError, ValueError):
                continue
        try:
            run.metrics = get(f"http://127.0.0.1:{port}/metrics")
            run.progress.append(json.loads(get(f"http://127.0.0.1:{port}/progress")))
        except (OSError, ValueError):
            continue


def scrape_capture_servers(workdir: Path, stop: threading.Event, run: Run) -> None:
    """Keep the last /metrics text of every capture server (their URLs: job.yaml's capture.endpoints)."""
    endpoints: list[str] = []
    while not stop.wait(0.3):
        if not endpoints:
            try:
                endpoints = list(yaml.safe_load((workdir / "job.yaml").read_text())["capture"]["endpoints"])
            except (OSError, TypeError, KeyError, ValueError):
                continue
        for url in endpoints:
            try:
                run.capture_metrics[url] = get(f"{url}/metrics")
            except (OSError, ValueError):
                continue


def start_pipeline(workdir: Path, config: Path, *extra: str) -> subprocess.Popen[str]:
    dspark = str(Path(sys.executable).parent / "dspark")
    return subprocess.Popen([dspark, "train", "--local", str(config), "--workdir", str(workdir), "--no-progress",
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_pipeline(workdir: Path, config: Path, *extra: str, timeout: float = 900) -> Run:
    run = Run(workdir=workdir, returncode=-1, output="")
    stop = threading.Event()
    watchers = [threading.Thread(target=fn, args=(workdir, stop, run), daemon=True)
                for fn in (scrape, scrape_capture_servers)]
    for watcher in watchers:
        watcher.start()
    proc = start_pipeline(workdir, config, *extra)
    try:
        run.output, _ = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join(5)
        if proc.poll() is None:
            proc.kill()
    run.returncode = proc.returncode
    return run


def counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def sample_logs(workdir: Path) -> dict[str, list[tuple[int, list[str]]]]:
    return {p.name: read_sample_log(p) for p in sorted((workdir / "samples").glob("rank-*.jsonl"))}


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory, demo_target: Path) -> Run:
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(demo_target, root / "demo" / "target")
    run = run_pipeline(root / "demo", test_config(root))
    assert run.returncode == 0, run.output[-5000:]
    return run


def test_loss_falls_and_tau_rises(completed: Run) -> None:
    log = (completed.workdir / "logs" / "trainer.log").read_text()
    steps = [(int(s), float(loss), float(tau)) for s, _total, loss, tau in STEP_LINE.findall(log)]
    evals = [(int(s), float(loss), float(tau)) for s, loss, tau in EVAL_LINE.findall(log)]
    assert steps[0][0] == 1 and steps[-1][0] == int(STEP_LINE.findall(log)[-1][1])
    first, last = steps[0], steps[-1]
    assert last[1] < 0.85 * first[1], steps
    assert last[2] > first[2] + 0.3, steps
    assert len(evals) >= 3 and evals[-1][2] > evals[0][2], evals
    assert "final training loss" in completed.output and "held-out eval" in completed.output
    assert str(completed.workdir / "draft") in completed.output


def test_metrics_endpoint_serves_every_trainer_metric(completed: Run) -> None:
    names = {line.split("{")[0].split(" ")[0] for line in completed.metrics.splitlines() if line and line[0] != "#"}
    missing = [m for m in DESIGN_TRAINER_METRICS if not any(n == m or n.startswith(m + "_") for n in names)]
    assert not missing, missing
    assert 'dspark_train_loss{term="l1"}' in completed.metrics
    assert 'dspark_train_accept_rate{position="3"}' in completed.metrics
    running = [p for p in completed.progress if p.get("state") == "Running" and p.get("step", 0) > 0]
    assert running and running[-1]["world_size"] == 2 and running[-1]["throughput"] > 0
    assert len(running[-1]["accept_rate"]) == 4


def test_exported_draft_loads_bit_identically(completed: Run) -> None:
    import torch
    from dspark_trainer.model.checkpoint import import_checkpoint, read_checkpoint_state
    from dspark_trainer.model.draft import DSparkDraftModel

    draft = completed.workdir / "draft"
    cfg, state = import_checkpoint(draft)
    model = DSparkDraftModel(cfg)
    # the serving export: bf16 (the confidence head float32), no embedding / LM head (taken from the target)
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["embed_tokens.weight", "lm_head.weight"]
    again = read_checkpoint_state(draft)
    assert {t.dtype for n, t in again.items() if not n.startswith("confidence_head.")} == {torch.bfloat16}
    for name, tensor in model.state_dict().items():
        if name not in missing:
            assert torch.equal(tensor.to(again[name].dtype), again[name]), name
    config = json.loads((draft / "config.json").read_text())
    assert config["architectures"] == ["Qwen3DSparkModel"] and config["block_size"] == 4
    assert config["torch_dtype"] == "bfloat16"
    marker = json.loads((draft / "dspark_complete.json").read_text())
    assert marker["step"] == 47 and marker["samples"] == 47 * 8


def test_no_process_outlives_the_pipeline(completed: Run) -> None:
    assert not processes_mentioning(str(completed.workdir))


def test_ctrl_c_checkpoints_stops_everything_and_a_rerun_resumes_exactly(
    tmp_path: Path, demo_target: Path, completed: Run
) -> None:
    workdir = tmp_path / "demo"
    shutil.copytree(demo_target, workdir / "target")
    config = test_config(tmp_path)
    proc = start_pipeline(workdir, config)
    log0 = workdir / "samples" / "rank-00000.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log0.exists() and len(log0.read_text().splitlines()) >= 13:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    assert "interrupted" in out
    assert not processes_mentioning(str(workdir))
    ckpts = sorted((workdir / "checkpoints").glob("step-*"))
    assert ckpts and int(ckpts[-1].name.split("-")[1]) >= 13, out[-3000:]
    rerun = run_pipeline(workdir, config)
    assert rerun.returncode == 0, rerun.output[-5000:]
    assert "resuming the interrupted run" in rerun.output
    assert sample_logs(workdir) == sample_logs(completed.workdir)


def test_two_capture_servers_feed_one_trainer(tmp_path: Path, demo_target: Path) -> None:
    """`--capture-devices cpu,cpu`: two capture servers, each with its own port and log, both in
    capture.endpoints, both answer capture requests, and the run completes and stops every process."""
    workdir = tmp_path / "demo"
    shutil.copytree(demo_target, workdir / "target")
    cfg = yaml.safe_load(LOCAL_DEMO_CONFIG.read_text())
    cfg["schedule"]["maxSteps"] = 12
    cfg["checkpoint"]["intervalSteps"] = 12
    cfg["eval"]["intervalSteps"] = 12
    cfg["eval"]["maxSamples"] = 8
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = run_pipeline(workdir, config, "--capture-devices", "cpu,cpu")
    assert run.returncode == 0, run.output[-5000:]
    assert "reference capture server 1/2" in run.output and "reference capture server 2/2" in run.output

    endpoints = yaml.safe_load((workdir / "job.yaml").read_text())["capture"]["endpoints"]
    assert len(endpoints) == 2 and len(set(endpoints)) == 2, endpoints
    logs = workdir / "logs"
    assert (logs / "capture-server-0.log").is_file() and (logs / "capture-server-1.log").is_file()
    assert not (logs / "capture-server.log").exists()
    requests = {url: counter(run.capture_metrics.get(url, ""), "dspark_capture_requests_total") for url in endpoints}
    records = {url: counter(run.capture_metrics.get(url, ""), "dspark_capture_records_total") for url in endpoints}
    assert all(n > 0 for n in requests.values()), requests
    assert all(n > 0 for n in records.values()), records
    # 12 steps of 8 samples + the held-out evaluations, spread over both servers
    assert sum(records.values()) >= 12 * 8 * 0.8, records

    marker = json.loads((workdir / "draft" / "dspark_complete.json").read_text())
    assert marker["step"] == 12 and marker["samples"] == 12 * 8
    assert "final training loss" in run.output
    assert not processes_mentioning(str(workdir))
