"""The `dspark` command line: --version, offline validation, and user errors as one clear line (never a
traceback): bad YAML, missing files and model directories, unreachable or missing clusters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dspark_trainer import __version__

REPO = Path(__file__).resolve().parents[2]
DSPARK = str(Path(sys.executable).parent / "dspark")


def dspark(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DSPARK, *args], capture_output=True, text=True, timeout=300, input=input, env=env)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    err = done.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_version() -> None:
    done = dspark("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"dspark-k8s {__version__}"


def test_validate_accepts_the_examples() -> None:
    files = [str(p) for p in sorted((REPO / "examples").glob("*.yaml"))]
    done = dspark("validate", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok") == len(files), done.stdout


def test_validate_names_the_field(tmp_path: Path) -> None:
    bad = yaml.safe_load((REPO / "examples" / "minimal-job.yaml").read_text())
    bad["spec"].setdefault("trainer", {})["nodes"] = 0
    other = json.loads(json.dumps(bad))
    other["metadata"]["name"] = "second"
    other["spec"]["trainer"]["nodes"] = 1
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all([bad, other]))
    done = dspark("validate", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and "invalid: spec.trainer.nodes" in lines[0] and lines[1].endswith(": ok"), lines


def test_validate_bad_yaml_and_missing_file_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: dspark.io/v1alpha1\nkind: DSparkTrainingJob\nspec: {target: [\n")
    one_line_error(dspark("validate", str(path)), "not valid YAML", "line")
    one_line_error(dspark("validate", str(tmp_path / "nope.yaml")), "cannot read", "nope.yaml")


def test_status_without_a_reachable_cluster_is_one_line(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}}],
    }))
    one_line_error(dspark("status", "demo", "--kubeconfig", str(kubeconfig)), "cannot reach the Kubernetes API",
                   "127.0.0.1:1")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")}
    one_line_error(dspark("status", "demo", env=env), "kubeconfig")


def test_missing_model_directory_and_config_file_are_one_line(tmp_path: Path) -> None:
    one_line_error(dspark("capture-server", "--model", str(tmp_path / "no-model"), "--master", "127.0.0.1:1"),
                   "no-model")
    one_line_error(dspark("train", "--config", str(tmp_path / "no-config.yaml")), "no-config.yaml", "does not exist")
    one_line_error(dspark("mooncake-master", "--config", str(tmp_path / "no-config.yaml")), "does not exist")
    one_line_error(dspark("capture-server", "--config", str(tmp_path / "no-config.yaml")), "does not exist")


@pytest.mark.cluster
def test_status_reads_a_job_from_the_cluster(k8s_cluster: object, k8s_namespace: str) -> None:
    from harness.cluster import LocalCluster

    assert isinstance(k8s_cluster, LocalCluster)
    k8s_cluster.kubectl("apply", "-f", str(REPO / "crds" / "dsparktrainingjobs.dspark.io.yaml"))
    k8s_cluster.wait_crd_established("dsparktrainingjobs.dspark.io")
    body = yaml.safe_load((REPO / "examples" / "minimal-job.yaml").read_text())
    body["metadata"]["namespace"] = k8s_namespace
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    name = body["metadata"]["name"]
    path = f"/apis/dspark.io/v1alpha1/namespaces/{k8s_namespace}/dsparktrainingjobs/{name}/status"
    status, out = k8s_cluster.api("PATCH", path, {"status": {"phase": "Running", "restarts": 1, "progress": {
        "step": 7, "total": 10, "loss": 1.25, "tau": 2.5, "acceptRate": [0.9, 0.5]}}},
        content_type="application/merge-patch+json")
    assert status == 200, out
    done = dspark("status", name, "-n", k8s_namespace, "--kubeconfig", str(k8s_cluster.kubeconfig))
    assert done.returncode == 0, done.stderr
    assert "phase      Running" in done.stdout and "step       7/10" in done.stdout
    assert "loss       1.25   tau 2.5" in done.stdout and "@1: 0.500" in done.stdout and "restarts   1" in done.stdout
    one_line_error(dspark("status", "nope", "-n", k8s_namespace, "--kubeconfig", str(k8s_cluster.kubeconfig)),
                   "no DSparkTrainingJob 'nope'")
