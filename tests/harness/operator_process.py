"""Run `dspark-operator` as a subprocess against a cluster (tests and benchmarks; not used in production)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def operator_command() -> list[str]:
    """The `dspark-operator` console script next to this Python, else `python -m dspark_operator.main`."""
    script = Path(sys.executable).with_name("dspark-operator")
    if script.exists():
        return [str(script)]
    found = shutil.which("dspark-operator")
    return [found] if found else [sys.executable, "-m", "dspark_operator.main"]


def small_job_manifest(
    name: str, *, nodes: int = 1, gpus_per_node: int = 0, global_batch_size: int | None = None
) -> dict[str, Any]:
    """A DSparkTrainingJob that fits many times on kwok nodes: tiny requests, no inference GPUs, TCP transport,
    an ephemeral output (emptyDir).

    The global batch defaults to 8 per trainer GPU (8 per node without GPUs).
    """

    def small() -> dict[str, Any]:
        return {"requests": {"cpu": "10m", "memory": "16Mi"}}

    return {
        "apiVersion": "dspark.io/v1alpha1",
        "kind": "DSparkTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "target": {"model": "Qwen/Qwen3-0.6B"},
            "dataset": {"path": "builtin:demo-conversations"},
            "inference": {"gpus": 0, "resources": small()},
            "trainer": {
                "nodes": nodes,
                "gpusPerNode": gpus_per_node,
                "resources": small(),
                "schedule": {"globalBatchSize": global_batch_size or 8 * nodes * max(gpus_per_node, 1)},
                "output": {"ephemeral": True},
            },
            "transport": {"protocol": "tcp", "masterResources": small()},
        },
    }


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to {'name{labels}': value} (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line.strip())
        if m:
            out[f"{m.group(1)}{m.group(2) or ''}"] = float(m.group(3))
    return out


class OperatorProcess:
    """`dspark-operator` in a subprocess with its own metrics and liveness ports and a log file."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> OperatorProcess:
        """Start and wait until the liveness endpoint answers."""
        env = {**os.environ, **self.extra_env, "KUBECONFIG": str(self.kubeconfig)}
        cmd = [
            *operator_command(),
            "--metrics-port",
            str(self.metrics_port),
            "--liveness-port",
            str(self.liveness_port),
            *self.args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dspark-operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.alive():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"dspark-operator did not become live in {timeout}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        """Whether the liveness endpoint answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        """Current metrics of the operator."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def metrics_text(self) -> str:
        """Raw /metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def reconciles(self, result: str | None = None) -> float:
        """dspark_operator_reconcile_total, of one result or all."""
        samples = self.metrics()
        return sum(
            v
            for k, v in samples.items()
            if k.startswith("dspark_operator_reconcile_total") and (result is None or f'result="{result}"' in k)
        )

    def rss_bytes(self) -> int:
        """Resident memory of the operator process."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, *, kill: bool = False, timeout: float = 30) -> int | None:
        """SIGTERM (or SIGKILL) and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)

    def restart(self, *, kill: bool = False) -> OperatorProcess:
        """Stop and start again (same ports)."""
        self.stop(kill=kill)
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        """The end of the operator's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
