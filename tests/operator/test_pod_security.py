"""Pod Security: every pod of a job passes the `restricted` Pod Security Standard without RDMA, and with RDMA
breaks `baseline` only by the one capability RDMA needs (IPC_LOCK). Checked by the apiserver's own PodSecurity
admission on labelled namespaces: server-side dry-run creation of each pod template, and a real job."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from dspark_operator.builders import build_children, build_regenerate_job
from harness.cluster import LocalCluster
from harness.operator_process import small_job_manifest
from operator_cluster_env import OperatorEnv
from operator_helpers import make_ctx

pytestmark = pytest.mark.cluster

REGEN = {"dataset": {"path": "/data/train.jsonl", "regenerate": {}}, "trainer": {"output": {"claimName": "out"}}}


def pod_templates(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    ctx = make_ctx(spec)
    out = []
    manifests = build_children(ctx)
    if "regenerate" in spec.get("dataset", {}):
        manifests.append(build_regenerate_job(ctx))
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]))
    return out


def level_namespace(cluster: LocalCluster, level: str) -> str:
    return cluster.create_namespace(f"pss-{level}-{uuid.uuid4().hex[:6]}",
                                    labels={"pod-security.kubernetes.io/enforce": level})


def dry_run_pod(cluster: LocalCluster, ns: str, name: str, template: dict[str, Any]) -> tuple[int, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name.split("/")[1][:50] + "-x", "namespace": ns},
           "spec": {**template["spec"], "serviceAccountName": "default"}}
    return cluster.api("POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All", pod)


def test_pods_pass_restricted_without_rdma_and_baseline_but_ipc_lock_with_it(k8s_cluster: LocalCluster) -> None:
    restricted = level_namespace(k8s_cluster, "restricted")
    baseline = level_namespace(k8s_cluster, "baseline")
    try:
        tcp = pod_templates({"transport": {"protocol": "tcp"}, **REGEN})
        assert {n.split("/")[0] for n, _ in tcp} == {"Deployment", "StatefulSet", "Job"}
        for name, template in tcp:
            status, out = dry_run_pod(k8s_cluster, restricted, name, template)
            assert status == 201, (name, out)
        for name, template in pod_templates({"transport": {"protocol": "rdma"}}):
            containers = template["spec"]["containers"]
            needs_rdma = any("IPC_LOCK" in (c["securityContext"]["capabilities"].get("add") or []) for c in containers)
            status, out = dry_run_pod(k8s_cluster, baseline, name, template)
            if not needs_rdma:  # the Mooncake master never needs RDMA
                assert status == 201, (name, out)
                continue
            message = json.dumps(out)
            assert status == 403 and "non-default capabilities" in message and "IPC_LOCK" in message, (name, out)
            # ... and nothing else: without IPC_LOCK the same pod passes even `restricted`.
            for c in containers:
                c["securityContext"]["capabilities"].pop("add", None)
            status, out = dry_run_pod(k8s_cluster, restricted, name, template)
            assert status == 201, (name, out)
    finally:
        k8s_cluster.delete_namespace(restricted)
        k8s_cluster.delete_namespace(baseline)


def test_a_job_runs_in_a_restricted_namespace(dsj_env: OperatorEnv, k8s_cluster: LocalCluster) -> None:
    ns = level_namespace(k8s_cluster, "restricted")
    try:
        dsj_env.apply(ns, small_job_manifest("pss"))
        dsj_env.wait(lambda: len(dsj_env.pods(ns, "pss")) >= 3, timeout=90, what="the job's pods to be created")
        events = dsj_env.get(f"/api/v1/namespaces/{ns}/events") or {}
        forbidden = [e["message"] for e in events.get("items") or [] if "violates PodSecurity" in e.get("message", "")]
        assert not forbidden, forbidden
    finally:
        k8s_cluster.delete_namespace(ns)
