"""End to end from what the operator renders: `kubectl apply` of a tiny DSparkTrainingJob with the reference
engine, in the real test cluster, its pods run as local processes by the process kubelet (tests/harness):
the Mooncake master, a reference capture server and a torchrun trainer stream hidden states through a real
Mooncake master, train, export the draft and patch loss and acceptance into the job's status, and a real
Prometheus scrapes the trainer. No hand help: the test only applies the job, watches, and (in the second
run) kills the trainer pod's processes to see the gang restart resume from the checkpoint without losing
or repeating a sample."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.local.tiny_model import make_tiny_qwen3_target
from dspark_trainer.util.net import free_port
from harness.cluster import LocalCluster
from harness.process_kubelet import ProcessKubelet
from harness.prometheus import PrometheusServer, find_binary
from operator_cluster_env import OperatorEnv

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODE_LABEL = "dspark.io/process-node"
MAX_STEPS = 24
GLOBAL_BATCH = 4
TIMEOUT = 600.0


@pytest.fixture(scope="module")
def process_kubelet(k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessKubelet]:
    if os.geteuid() != 0:
        msg = "the process kubelet needs root (private mount and PID namespaces)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    kubelet = ProcessKubelet(k8s_cluster, tmp_path_factory.mktemp("process-kubelet"), labels={NODE_LABEL: "true"})
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    if find_binary() is None:
        msg = "prometheus is not installed (scripts/install-system-deps.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_interval="1s") as prom:
        yield prom


CONVERSATION_TOPICS = ["the sea", "a garden", "trains", "the moon", "bread", "rain", "a library", "music"]


def write_dataset(path: Path, count: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(count):
            topic = CONVERSATION_TOPICS[i % len(CONVERSATION_TOPICS)]
            f.write(json.dumps({"id": f"c{i}", "messages": [
                {"role": "user", "content": f"Tell me about {topic}, part {i}."},
                {"role": "assistant", "content": f"Here is a short note about {topic}: it is calm and bright, "
                                                 f"number {i}, and worth a visit."},
            ]}) + "\n")


def write_prompts(path: Path, count: int = 4) -> None:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {CONVERSATION_TOPICS[i]}."}) + "\n"
                            for i in range(count)))


def job_manifest(name: str, metrics_port: int, inference_port: int) -> dict[str, Any]:
    small = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    return {
        "apiVersion": "dspark.io/v1alpha1",
        "kind": "DSparkTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "target": {"model": "/models/tiny", "dtype": "float32", "modelClaimName": "models"},
            "draft": {"blockSize": 4, "numDraftLayers": 1, "numAnchors": 16, "numTargetLayersCaptured": 2,
                      "markovRank": 16},
            "dataset": {"path": "/data/train.jsonl", "claimName": "data", "maxLength": 96, "evalFraction": 0.1},
            "inference": {"engine": "reference", "port": inference_port, "resources": small},
            "trainer": {
                "nodes": 1, "gpusPerNode": 0, "resources": small,
                "schedule": {"microBatchSize": 2, "globalBatchSize": GLOBAL_BATCH, "maxSteps": MAX_STEPS, "seed": 0},
                "optimizer": {"learningRate": 3e-3},
                "checkpoint": {"intervalSteps": 4, "keepLast": 2},
                "eval": {"intervalSteps": 12, "maxSamples": 4},
                "output": {"claimName": "output"},
                "terminationGracePeriodSeconds": 60,
            },
            "transport": {"protocol": "tcp", "globalSegmentSize": 64 * 1024**2, "localBufferSize": 32 * 1024**2,
                          "masterResources": small},
            "runPolicy": {"backoffLimit": 2},
            "scheduling": {"nodeSelector": {NODE_LABEL: "true"}},
            "metrics": {"port": metrics_port, "interval": "5s"},
            # After training: real speculative decoding of the export with the target, into the status.
            "evaluation": {"promptSet": "/data/prompts.jsonl", "numPrompts": 4, "maxNewTokens": 24},
        },
    }


def progress(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (OSError, ValueError):
        return None


class Watch:
    """The job's phase transitions with timestamps (what `kubectl get dsj -w` shows)."""

    def __init__(self, env: OperatorEnv, ns: str, name: str) -> None:
        self.env, self.ns, self.name = env, ns, name
        self.t0 = time.monotonic()
        self.phases: list[tuple[float, str]] = []

    def poll(self) -> dict[str, Any]:
        job = self.env.job(self.ns, self.name) or {}
        phase = (job.get("status") or {}).get("phase") or "<none>"
        if not self.phases or self.phases[-1][1] != phase:
            self.phases.append((time.monotonic() - self.t0, phase))
        return job

    def until(self, predicate: Any, what: str, kubelet: ProcessKubelet, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.poll()
            if predicate(job):
                return job
            if (job.get("status") or {}).get("phase") == "Failed":
                break
            time.sleep(0.5)
        raise AssertionError(
            f"{self.ns}/{self.name}: {what} not reached; phases {self.phases}\nstatus: "
            f"{json.dumps((self.env.job(self.ns, self.name) or {}).get('status'), indent=1)[-3000:]}\n"
            f"kubelet errors: {kubelet.errors[-5:]}\n"
            + "\n".join(kubelet.log_tail(self.ns, f"{self.name}-{c}", lines=30)
                        for c in ("trainer-0", "mooncake", "inference"))
            + f"\noperator log:\n{self.env.operator.log_tail()}"
        )

    def report(self) -> str:
        return " -> ".join(f"{phase} (+{t:.1f}s)" for t, phase in self.phases)


def run_job(env: OperatorEnv, kubelet: ProcessKubelet, ns: str, name: str, metrics_port: int,
            *, kill_at_step: int | None = None) -> dict[str, Any]:
    """Apply one job on fresh volumes, optionally kill its trainer mid-run, and return what it ended with."""
    claims = {"models": "ReadOnlyMany", "data": "ReadOnlyMany", "output": "ReadWriteOnce"}
    for claim in claims:  # the claims' hostPath volumes start empty (no draft of an earlier run)
        shutil.rmtree(f"/tmp/{ns}-{claim}", ignore_errors=True)
    env.bound_claims(ns, claims)
    make_tiny_qwen3_target(Path(f"/tmp/{ns}-models") / "tiny", hidden_size=64, num_layers=6, vocab_size=512)
    write_dataset(Path(f"/tmp/{ns}-data") / "train.jsonl")
    write_prompts(Path(f"/tmp/{ns}-data") / "prompts.jsonl")
    env.apply(ns, job_manifest(name, metrics_port, free_port()))
    watch = Watch(env, ns, name)
    killed: dict[str, Any] = {}
    if kill_at_step is not None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            watch.poll()
            p = progress(metrics_port) or {}
            checkpoints = list((Path(f"/tmp/{ns}-output") / "checkpoints").glob("step-*"))
            if p.get("state") == "Running" and int(p.get("step") or 0) >= kill_at_step and checkpoints:
                killed = {"step": int(p["step"]), "samples": p.get("samples"), "checkpoints": sorted(
                    c.name for c in checkpoints), "pid": kubelet.kill_container(ns, f"{name}-trainer-0", "trainer")}
                break
            time.sleep(0.2)
        assert killed, f"the trainer never reached step {kill_at_step}: phases {watch.phases}"
    job = watch.until(lambda j: (j.get("status") or {}).get("phase") == "Succeeded", "Succeeded", kubelet)
    status = job["status"]
    draft = Path(f"/tmp/{ns}-output") / "draft"
    return {"status": status, "phases": watch.phases, "report": watch.report(), "killed": killed,
            "draft": draft, "metrics_port": metrics_port}


def test_applied_job_trains_end_to_end_and_survives_a_trainer_kill(
    dsj_env: OperatorEnv, process_kubelet: ProcessKubelet, prometheus: PrometheusServer,
    k8s_namespace: str, k8s_cluster: LocalCluster,
) -> None:
    env, ns = dsj_env, k8s_namespace
    # --- run 1: no hand help, Pending -> Running -> Succeeded --------------------------------------
    port = free_port()
    prometheus.add_target("dspark-trainer", f"127.0.0.1:{port}", labels={"dspark_job": "e2e"})
    base = run_job(env, process_kubelet, ns, "e2e", port)
    phases = [p for _, p in base["phases"]]
    assert "Running" in phases and phases[-1] == "Succeeded" and "Failed" not in phases, base["report"]
    assert phases.index("Running") < phases.index("Succeeded")
    progress_1 = base["status"]["progress"]
    assert progress_1["step"] == MAX_STEPS and progress_1["samples"] == MAX_STEPS * GLOBAL_BATCH
    assert progress_1["loss"] > 0 and 1.0 <= progress_1["tau"] <= 1 + 4  # 1 + block size
    assert len(progress_1["acceptRate"]) == 4 and all(0 <= a <= 1 for a in progress_1["acceptRate"])
    assert base["status"].get("restarts", 0) == 0
    evaluation = progress_1["evaluation"]  # measured by real speculative decoding after training
    assert "message" not in evaluation, evaluation
    assert evaluation["promptSet"] == "/data/prompts.jsonl" and evaluation["numPrompts"] == 4
    assert 1.0 <= evaluation["tau"] <= 1 + 4 and len(evaluation["acceptRate"]) == 4 and evaluation["speedup"] > 0
    assert base["status"]["draftPath"] == "/output/draft"
    assert (base["draft"] / "config.json").is_file() and (base["draft"] / "model.safetensors").is_file()
    print(f"\nrun without kill: {base['report']}; step {progress_1['step']}, samples {progress_1['samples']}, "
          f"loss {progress_1['loss']:.4f}, tau {progress_1['tau']:.3f}, acceptRate {progress_1['acceptRate']}; "
          f"real decoding: tau {evaluation['tau']:.3f}, acceptance {evaluation['acceptRate']}, "
          f"speedup {evaluation['speedup']:.2f}x")

    # --- run 2: the trainer pod's processes are killed mid-run -------------------------------------
    ns2 = k8s_cluster.create_namespace(f"e2e-kill-{ns[-6:]}")
    try:
        kill = run_job(env, process_kubelet, ns2, "e2e", free_port(), kill_at_step=9)
        progress_2 = kill["status"]["progress"]
        phases_2 = [p for _, p in kill["phases"]]
        assert phases_2[-1] == "Succeeded" and "Failed" not in phases_2, kill["report"]
        assert kill["status"]["restarts"] == 1, kill["status"]
        # The same samples as the run without the kill: none lost, none trained twice.
        assert progress_2["step"] == progress_1["step"] == MAX_STEPS
        assert progress_2["samples"] == progress_1["samples"] == MAX_STEPS * GLOBAL_BATCH
        # Resumed from the checkpoint on the same data order: the run ends where the uninterrupted one did.
        assert math.isclose(progress_2["loss"], progress_1["loss"], rel_tol=1e-3), (progress_1, progress_2)
        log = process_kubelet.log_tail(ns2, "e2e-trainer-0", "trainer", lines=400)
        assert "resum" in log.lower(), log[-2000:]
        print(f"run with kill at step {kill['killed']['step']} (checkpoints {kill['killed']['checkpoints']}): "
              f"{kill['report']}; restarts {kill['status']['restarts']}; step {progress_2['step']}, samples "
              f"{progress_2['samples']}, loss {progress_2['loss']:.4f}, tau {progress_2['tau']:.3f}")
    finally:
        k8s_cluster.delete_namespace(ns2)
        for claim in ("models", "data", "output"):
            shutil.rmtree(f"/tmp/{ns2}-{claim}", ignore_errors=True)

    # --- the real Prometheus scraped the first trainer while it ran --------------------------------
    series = prometheus.query('max_over_time(dspark_train_step{dspark_job="e2e"}[30m])')
    assert series and float(series[0]["value"][1]) > 0, series
    loss = prometheus.query('max_over_time(dspark_train_loss{dspark_job="e2e",term="total"}[30m])')
    assert loss, prometheus.series_names()
    real_tau = prometheus.query('max_over_time(dspark_eval_spec_tau{dspark_job="e2e"}[30m])')
    assert real_tau and math.isclose(float(real_tau[0]["value"][1]), evaluation["tau"], rel_tol=1e-6), real_tau
