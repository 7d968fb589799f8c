"""A role's partial pod template against the real test cluster: it reaches the pods the controllers create, and
bad ones are refused naming the field (at admission by the schema, by the operator's checks, by the dry run)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_cluster_env import OperatorEnv, small_job

pytestmark = pytest.mark.cluster

OVERRIDE: dict[str, Any] = {
    "metadata": {"labels": {"team": "ml"}, "annotations": {"example.com/owner": "platform"}},
    "spec": {
        "imagePullSecrets": [{"name": "regcred"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}}
        ]}},
        "volumes": [{"name": "certs", "configMap": {"name": "ca-bundle", "optional": True}}],
        "containers": [
            {
                "name": "trainer",
                "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
                "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": True}],
            }
        ],
    },
}
TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}


def test_a_pod_template_reaches_the_created_pods(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    env.kubectl("create", "secret", "generic", "s3-credentials", "-n", ns, "--from-literal=AWS_REGION=eu-1")
    env.apply(ns, small_job("tmpl", trainer={"podTemplate": OVERRIDE}, scheduling={"tolerations": [TOLERATION]}))
    job = env.wait_phase(ns, "tmpl", "Running", timeout=120)
    (pod,) = env.pods(ns, "tmpl", "trainer")
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["team"] == "ml" and meta["labels"]["app.kubernetes.io/component"] == "trainer"
    assert meta["annotations"]["example.com/owner"] == "platform"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert TOLERATION in spec["tolerations"]
    assert spec["affinity"] == OVERRIDE["spec"]["affinity"]
    assert {"name": "certs", "configMap": {"name": "ca-bundle", "optional": True, "defaultMode": 420}} in spec[
        "volumes"
    ]
    (container,) = spec["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert {"name": "certs", "mountPath": "/etc/certs", "readOnly": True} in container["volumeMounts"]
    assert spec["serviceAccountName"] == "tmpl-trainer"  # the operator's, untouched
    ready = env.wait(
        lambda: (c := env.condition(ns, "tmpl", "Ready")) and c["status"] == "True" and c, what="Ready=True"
    )
    assert ready["reason"] == "AllReady", (ready, job["status"])


def test_bad_pod_templates_are_refused_naming_the_field(dsj_env: OperatorEnv, k8s_namespace: str) -> None:
    env, ns = dsj_env, k8s_namespace
    # The schema: a field that has its one place elsewhere (spec.scheduling) is not declared in podTemplate.
    body = small_job("schema", trainer={"podTemplate": {"spec": {"nodeSelector": {"pool": "gpu"}}}})
    proc = env.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0 and "spec.trainer.podTemplate.spec.nodeSelector" in proc.stderr, proc.stderr

    # The operator's checks: a volume named like one of the operator's.
    env.apply(ns, small_job("owned", trainer={"podTemplate": {"spec": {"volumes": [{"name": "output",
                                                                                     "emptyDir": {}}]}}}))
    failed = env.wait(lambda: (c := env.condition(ns, "owned", "Failed")) and c["status"] == "True" and c,
                      what="owned: Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.trainer.podTemplate.spec.volumes[0].name" in failed["message"], failed
    assert "the operator creates" in failed["message"], failed

    # The API server's dry run of the children: an affinity operator that does not exist.
    bad = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "Around", "values": ["gpu"]}]}]}}}
    env.apply(ns, small_job("dry", inference={"podTemplate": {"spec": {"affinity": bad}}}))
    failed = env.wait(lambda: (c := env.condition(ns, "dry", "Failed")) and c["status"] == "True" and c,
                      what="dry: Failed")
    assert "spec.inference.podTemplate.spec.affinity" in failed["message"], failed
    assert env.pods(ns, "dry") == []
