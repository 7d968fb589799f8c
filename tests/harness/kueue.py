"""Kueue for tests: the real controller manager (built from its Go module by scripts/build-kueue.sh) as a local
process against a LocalCluster, with its CRDs installed and DSparkTrainingJob registered as an external framework.

Kueue's webhooks are not registered with the API server (the operator creates complete Workloads itself); the
webhook server still starts, on a free port of 127.0.0.1 with a certificate from the cluster's CA.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml
from dspark_trainer.util.net import free_port
from dspark_trainer.util.polling import poll_until

from harness.cluster import LocalCluster

KUEUE_VERSION = "v0.17.0"  # as pinned in scripts/build-kueue.sh
EXTERNAL_FRAMEWORK = "DSparkTrainingJob.v1alpha1.dspark.io"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")  # fixed in Kueue's main.go (needs root, as the tests run)


def kueue_dir() -> Path:
    """The cached Kueue build (bin/kueue, crds/); a clear error with the command that builds it when absent."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dspark-k8s"
    path = cache / f"kueue-{KUEUE_VERSION}"
    if not (path / "bin" / "kueue").exists() or not list((path / "crds").glob("*.yaml")):
        raise FileNotFoundError(f"{path} is incomplete: run scripts/build-kueue.sh (make cluster-bins does)")
    return path


class KueueProcess:
    """The Kueue controller manager of one test cluster."""

    def __init__(self, cluster: LocalCluster, work: Path) -> None:
        self.cluster = cluster
        self.work = work
        self.home = kueue_dir()
        self.log_path = work / "kueue.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = free_port()

    def config(self) -> dict[str, Any]:
        """The manager's Configuration (config.kueue.x-k8s.io/v1beta2)."""
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": "kueue-system",
            "manageJobsWithoutQueueName": False,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
            "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(self.work / "certs")},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["batch/job"], "externalFrameworks": [EXTERNAL_FRAMEWORK]},
        }

    def install_crds(self) -> None:
        """Kueue's CustomResourceDefinitions, established."""
        self.cluster.kubectl("apply", "--server-side", "-f", str(self.home / "crds"), timeout=120)
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(self.home / "crds"),
                             timeout=90)

    def start(self) -> KueueProcess:
        self.work.mkdir(parents=True, exist_ok=True)
        self.install_crds()
        with contextlib.suppress(Exception):
            self.cluster.create_namespace("kueue-system")
        certs = self.work / "certs"
        certs.mkdir(exist_ok=True)
        pair = self.cluster.pki.issue("kueue-webhook", "kueue-webhook", server=True, client=False,
                                      ip_addresses=("127.0.0.1",))
        # The webhook server's certificate (config webhook.certDir), and the metrics server's, which Kueue reads
        # from a fixed path when its internal certificate management is off.
        for directory in (certs, METRICS_CERT_DIR):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "tls.crt").write_bytes(pair.cert.read_bytes())
            (directory / "tls.key").write_bytes(pair.key.read_bytes())
        config = self.work / "kueue-config.yaml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.home / "bin" / "kueue"), f"--config={config}", "--feature-gates=VisibilityOnDemand=false",
                 "--zap-log-level=2"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        finally:
            log.close()
        poll_until(self._healthy, timeout=120, what=f"Kueue to be ready\n{self.log_tail()}", interval=0.5)
        return self

    def _healthy(self) -> bool:
        import urllib.request

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"kueue exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
