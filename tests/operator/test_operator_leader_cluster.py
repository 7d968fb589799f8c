"""Two operator replicas with leader election against the real test cluster: only the Lease holder
reconciles; killing it hands the jobs to the standby; the killed replica comes back as a standby."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.operator_process import OperatorProcess
from operator_cluster_env import OperatorEnv, small_job

pytestmark = pytest.mark.cluster

LEASE_SECONDS = 6


def leader_flag(op: OperatorProcess) -> float:
    return op.metrics().get("dspark_operator_leader", -1.0)


@pytest.fixture
def replicas(dsj_env: OperatorEnv, tmp_path: Path) -> Iterator[tuple[str, list[OperatorProcess]]]:
    """Two namespaced operators with leader election; the session's cluster-wide operator is stopped meanwhile
    (it would reconcile the namespace too)."""
    cluster = dsj_env.cluster
    ns = cluster.create_namespace(f"dspark-ha-{uuid.uuid4().hex[:6]}")
    args = ["-n", ns, "--leader-election", "--lease-namespace", ns, "--lease-name", "dspark-operator",
            "--lease-duration-seconds", str(LEASE_SECONDS), "--resync-seconds", "3"]
    ops = [OperatorProcess(cluster.kubeconfig, tmp_path / f"replica-{i}.log", args=args) for i in range(2)]
    dsj_env.operator.stop()
    try:
        for op in ops:
            op.start()
        yield ns, ops
    finally:
        for op in ops:
            op.stop()
        dsj_env.operator.start()
        cluster.delete_namespace(ns)


def test_one_replica_reconciles_and_the_standby_takes_over(
    dsj_env: OperatorEnv, replicas: tuple[str, list[OperatorProcess]]
) -> None:
    env = dsj_env
    ns, ops = replicas

    def one_leader() -> tuple[OperatorProcess, OperatorProcess] | None:
        flags = [leader_flag(op) for op in ops]
        if sorted(flags) != [0.0, 1.0]:
            return None
        return (ops[0], ops[1]) if flags[0] == 1.0 else (ops[1], ops[0])

    leader, standby = env.wait(one_leader, timeout=30, what="exactly one replica to hold the lease")
    lease = json.loads(env.kubectl("get", "lease", "dspark-operator", "-n", ns, "-o", "json").stdout)
    assert leader.proc is not None
    assert lease["spec"]["holderIdentity"].endswith(f"_{leader.proc.pid}")

    env.apply(ns, small_job("ha-first"))
    env.wait(lambda: env.phase(ns, "ha-first"), timeout=60, what="the leader to reconcile the first job")
    seen = leader.reconciles()
    env.wait(lambda: leader.reconciles() > seen, timeout=30, what="a periodic reconciliation by the leader")
    assert standby.reconciles() == 0, standby.log_tail()

    leader.stop(kill=True)
    env.wait(lambda: leader_flag(standby) == 1.0, timeout=LEASE_SECONDS * 4,
             what="the standby to take the lease after the leader was killed")
    env.apply(ns, small_job("ha-second"))
    env.wait(lambda: env.phase(ns, "ha-second"), timeout=60, what="the new leader to reconcile a new job")
    assert standby.reconciles() > 0
    lease = json.loads(env.kubectl("get", "lease", "dspark-operator", "-n", ns, "-o", "json").stdout)
    assert standby.proc is not None
    assert lease["spec"]["holderIdentity"].endswith(f"_{standby.proc.pid}")
    assert lease["spec"]["leaseTransitions"] >= 2

    # The killed replica comes back and stands by while the new leader keeps renewing.
    leader.start()
    assert leader_flag(leader) == 0.0
    seen = standby.reconciles()
    env.wait(lambda: standby.reconciles() > seen, timeout=30, what="the new leader to keep reconciling")
    assert leader.reconciles() == 0, leader.log_tail()
    assert leader_flag(standby) == 1.0


def test_a_clean_stop_releases_the_lease_at_once(
    dsj_env: OperatorEnv, replicas: tuple[str, list[OperatorProcess]]
) -> None:
    env = dsj_env
    ns, ops = replicas
    leader = env.wait(lambda: next((op for op in ops if leader_flag(op) == 1.0), None), timeout=30,
                      what="a replica to hold the lease")
    standby = ops[1] if leader is ops[0] else ops[0]
    assert leader.stop() == 0  # SIGTERM: Kopf stops, the lease is released
    lease = json.loads(env.kubectl("get", "lease", "dspark-operator", "-n", ns, "-o", "json").stdout)
    assert not lease["spec"].get("holderIdentity")
    # The standby polls every lease/5 seconds: it leads well before the lease could have expired.
    env.wait(lambda: leader_flag(standby) == 1.0, timeout=LEASE_SECONDS - 1, what="the standby to take the free lease")
