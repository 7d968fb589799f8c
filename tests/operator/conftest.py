"""Fixtures for the operator's integration tests: the CRD, extra kwok GPU nodes and a running
`dspark-operator` subprocess against the session's test cluster (see tests/fixtures_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.cluster import LocalCluster, NodeSpec
from harness.operator_process import OperatorProcess
from operator_cluster_env import REPO, OperatorEnv

CRD = REPO / "crds" / "dsparktrainingjobs.dspark.io.yaml"
CHART = REPO / "charts" / "dspark-operator"
POLICY_TEMPLATE = "templates/trainer-status-policy.yaml"
POLICY_RELEASE = "dspark-operator-tests"
# A pending pod no scheduler looked at for this long gets Schedulable=False (the default is 60 s).
SCHEDULER_GRACE_SECONDS = 8
# More GPU nodes than the cluster's default four, so both examples and the other tests fit at once:
# the scheduler spreads the 1-GPU inference pods over the emptiest nodes, and each 8-GPU trainer pod
# then needs a node with no inference pod on it.
EXTRA_NODES = tuple(NodeSpec(f"dspark-op-gpu-{i}", gpus=8, rdma=8) for i in range(8))


@pytest.fixture(scope="session")
def dsj_env(k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorEnv]:
    """The CRD and the chart's trainer-status admission policy installed, extra GPU nodes, and `dspark-operator`
    running cluster-wide."""
    k8s_cluster.kubectl("apply", "-f", str(CRD))
    k8s_cluster.wait_crd_established("dsparktrainingjobs.dspark.io")
    policy = k8s_cluster.helm("template", POLICY_RELEASE, str(CHART), "--show-only", POLICY_TEMPLATE).stdout
    k8s_cluster.kubectl("apply", "-f", "-", input=policy)
    for node in EXTRA_NODES:
        status, out = k8s_cluster.api("POST", "/api/v1/nodes", node.manifest())
        assert status in (201, 409), out
    k8s_cluster.wait_until(
        lambda: all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (k8s_cluster.api("GET", f"/api/v1/nodes/{n.name}")[1].get("status") or {}).get(
                    "conditions", []
                )
            )
            for n in EXTRA_NODES
        ),
        timeout=60,
        what="the extra kwok GPU nodes to be Ready",
    )
    log = tmp_path_factory.mktemp("dspark-operator") / "operator.log"
    operator = OperatorProcess(
        k8s_cluster.kubeconfig,
        log,
        args=["--resync-seconds", "30", "--scheduler-grace-seconds", str(SCHEDULER_GRACE_SECONDS)],
    )
    operator.start()
    env = OperatorEnv(k8s_cluster, operator)
    try:
        yield env
    finally:
        operator.stop()
        k8s_cluster.kubectl("delete", "-f", str(CRD), "--wait=false", check=False)
        k8s_cluster.kubectl("delete", "-f", "-", "--wait=false", input=policy, check=False)
        for node in EXTRA_NODES:
            k8s_cluster.api("DELETE", f"/api/v1/nodes/{node.name}")
