"""Operator benchmark (not a test): time from `kubectl apply` to all children created, and memory.

Starts the local test control plane (etcd, kube-apiserver, controller manager, scheduler, kwok) and
`dspark-operator` as a subprocess, then measures, for one job applied alone (repeated) and for 50
jobs applied in one `kubectl apply`:
- apply -> all 10 children exist (p50, p95, max),
- apply -> phase Running (p50, p95, max; kwok makes pods Running at once),
- the job's first appearance in the API -> all children created (the operator's own latency;
  `kubectl apply` creates 50 objects one after the other, which takes a while on its own),
and the operator's resident memory (idle, after the 50 jobs, and its peak).

    .venv/bin/python benchmarks/operator_bench.py [--single 20] [--many 50] [--json out.json]

Children are polled every ~20 ms through the API (the resolution is printed with the results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test harness
from harness.cluster import LocalCluster, NodeSpec
from harness.operator_process import OperatorProcess, small_job_manifest

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "dsparktrainingjobs.dspark.io.yaml"
API = "/apis/dspark.io/v1alpha1"
CHILD_LISTS = (
    ("/api/v1", "serviceaccounts"),
    ("/api/v1", "configmaps"),
    ("/api/v1", "services"),
    ("/apis/apps/v1", "deployments"),
    ("/apis/apps/v1", "statefulsets"),
    ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
)
CHILDREN_PER_JOB = 10


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": round(pct(values, 0.5), 3),
        "p95_s": round(pct(values, 0.95), 3),
        "max_s": round(max(values), 3),
        "mean_s": round(statistics.fmean(values), 3),
    }


class Bench:
    def __init__(self, cluster: LocalCluster, operator: OperatorProcess) -> None:
        self.cluster = cluster
        self.operator = operator
        self.poll_seconds: list[float] = []
        self.apply_seconds: list[float] = []  # when the last job of a round appeared (kubectl's own pace)

    def child_counts(self, ns: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        t = time.monotonic()
        for prefix, plural in CHILD_LISTS:
            status, body = self.cluster.api(
                "GET", f"{prefix}/namespaces/{ns}/{plural}?labelSelector=app.kubernetes.io/managed-by=dspark-operator"
            )
            assert status == 200, body
            for item in body["items"]:
                inst = item["metadata"]["labels"]["app.kubernetes.io/instance"]
                counts[inst] = counts.get(inst, 0) + 1
        self.poll_seconds.append(time.monotonic() - t)
        return counts

    def phases(self, ns: str) -> dict[str, str | None]:
        status, body = self.cluster.api("GET", f"{API}/namespaces/{ns}/dsparktrainingjobs")
        assert status == 200, body
        return {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in body["items"]}

    def run_round(self, ns: str, names: list[str], timeout: float = 600) -> dict[str, list[float]]:
        """Apply the jobs with one `kubectl apply` (in the background: it creates them one by one) and poll.

        Per job: seconds from the apply to all children created and to Running, and from the job's
        first appearance in the API to all children created (the operator's own latency)."""
        text = "\n---\n".join(json.dumps(small_job_manifest(n)) for n in names)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [self.cluster.kubectl_path, f"--kubeconfig={self.cluster.kubeconfig}", "apply", "-n", ns, "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(text.encode())
        proc.stdin.close()
        seen: dict[str, float] = {}
        created: dict[str, float] = {}
        running: dict[str, float] = {}
        deadline = t0 + timeout
        while len(running) < len(names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(created)} created / {len(running)} running of {len(names)}")
            before = time.monotonic()
            now_phases = self.phases(ns)
            for n in now_phases:
                seen.setdefault(n, before - t0)
            counts = self.child_counts(ns)
            now = time.monotonic()
            for n in names:
                if n not in created and counts.get(n, 0) >= CHILDREN_PER_JOB:
                    created[n] = now - t0
                if n not in running and now_phases.get(n) == "Running":
                    running[n] = time.monotonic() - t0
            time.sleep(0.02)
        if proc.wait() != 0:
            raise RuntimeError(f"kubectl apply failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        self.apply_seconds.append(max(seen.values()))
        return {
            "apply_to_children": [created[n] for n in names],
            "apply_to_running": [running[n] for n in names],
            "job_seen_to_children": [created[n] - seen[n] for n in names],
        }

    def cleanup(self, ns: str) -> None:
        self.cluster.kubectl("delete", "dsj", "--all", "-n", ns, "--wait=false")
        self.cluster.wait_until(
            lambda: not self.child_counts(ns) and not self.phases(ns), timeout=300, what=f"{ns} to be empty"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--single", type=int, default=20, help="repetitions of the one-job round")
    parser.add_argument("--many", type=int, default=50, help="jobs in the concurrent round")
    parser.add_argument("--many-rounds", type=int, default=2, help="repetitions of the concurrent round")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dspark-op-bench-") as tmp:
        nodes = (
            NodeSpec("kwok-cpu-0", pods=250),
            NodeSpec("kwok-cpu-1", pods=250),
            NodeSpec("kwok-gpu-0", gpus=8, rdma=8),
        )
        cluster = LocalCluster(Path(tmp) / "cluster", nodes=nodes)
        cluster.start()
        try:
            cluster.kubectl("apply", "-f", str(CRD))
            cluster.wait_crd_established("dsparktrainingjobs.dspark.io")
            operator = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log")
            operator.start()
            bench = Bench(cluster, operator)
            try:
                time.sleep(2.0)  # let the operator finish its start-up before measuring memory
                rss_idle = operator.rss_bytes()
                ns = cluster.create_namespace("bench-single")
                single: dict[str, list[float]] = {}
                for i in range(args.single):
                    for k, v in bench.run_round(ns, [f"one-{i:03d}"]).items():
                        single.setdefault(k, []).extend(v)
                rss_single = operator.rss_bytes()
                bench.cleanup(ns)
                many: dict[str, list[float]] = {}
                rss_many = 0
                for r_ in range(args.many_rounds):
                    ns = cluster.create_namespace(f"bench-many-{r_}")
                    for k, v in bench.run_round(ns, [f"many-{i:03d}" for i in range(args.many)]).items():
                        many.setdefault(k, []).extend(v)
                    rss_many = max(rss_many, operator.rss_bytes())
                    bench.cleanup(ns)
                with open(f"/proc/{operator.proc.pid}/status") as f:  # type: ignore[union-attr]
                    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
                metrics = operator.metrics()
            finally:
                operator.stop()
        finally:
            cluster.stop()

    mib = 1024 * 1024
    results = {
        "single_job": {k: summary(v) for k, v in single.items()},
        f"{args.many}_jobs_in_one_apply": {k: summary(v) for k, v in many.items()},
        "kubectl_apply_of_many_jobs_s": [round(x, 2) for x in bench.apply_seconds[args.single :]],
        "operator_rss_mib": {
            "idle": round(rss_idle / mib, 1),
            "after_single_rounds": round(rss_single / mib, 1),
            f"with_{args.many}_jobs": round(rss_many / mib, 1),
            "peak": round(peak / mib, 1),
        },
        "poll_resolution_s": round(statistics.fmean(bench.poll_seconds) + 0.02, 3),
        "reconciles": {k: v for k, v in metrics.items() if k.startswith("dspark_operator_reconcile_total")},
        "reconcile_seconds_mean": round(
            metrics.get("dspark_operator_reconcile_seconds_sum", 0)
            / max(1.0, metrics.get("dspark_operator_reconcile_seconds_count", 1)),
            4,
        ),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
