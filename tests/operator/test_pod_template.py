"""The per-role partial pod template: the pure merge (builders/common.py) and its validation (api/checks.py)."""

from __future__ import annotations

from typing import Any

import pytest
from dspark_operator.api.podtemplate import PodTemplateOverride
from dspark_operator.builders import build_children
from dspark_operator.builders.common import merge_pod_override
from dspark_operator.builders.regenerate_job import build_regenerate_job
from dspark_operator.rejections import spec_field_for
from operator_helpers import assert_invalid, find, make_ctx

OVERRIDE: dict[str, Any] = {
    "metadata": {"labels": {"team": "ml"}, "annotations": {"sidecar.istio.io/inject": "false"}},
    "spec": {
        "imagePullSecrets": [{"name": "regcred"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}
        ]}}},
        "volumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "containers": [
            {
                "name": "trainer",
                "envFrom": [{"secretRef": {"name": "s3"}}, {"configMapRef": {"name": "proxy"}, "prefix": "P_"}],
                "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": True}],
            }
        ],
        "securityContext": {"supplementalGroups": [2000], "fsGroupChangePolicy": "OnRootMismatch"},
    },
}


def _template(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]


def test_merge_is_additive_and_pure() -> None:
    base = {
        "metadata": {"labels": {"app.kubernetes.io/name": "dspark"}},
        "spec": {
            "containers": [{"name": "trainer", "volumeMounts": [{"name": "config", "mountPath": "/etc/dspark"}]}],
            "volumes": [{"name": "config", "configMap": {"name": "c"}}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        },
    }
    merged = merge_pod_override(base, PodTemplateOverride.model_validate(OVERRIDE))
    assert base["spec"]["volumes"] == [{"name": "config", "configMap": {"name": "c"}}], "the input is not changed"
    assert merged["metadata"]["labels"] == {"team": "ml", "app.kubernetes.io/name": "dspark"}
    assert merged["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    spec = merged["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert [v["name"] for v in spec["volumes"]] == ["config", "certs"]
    (container,) = spec["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}, {"prefix": "P_", "configMapRef": {"name": "proxy"}}]
    assert container["volumeMounts"][-1] == {"name": "certs", "mountPath": "/etc/certs", "readOnly": True}
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "supplementalGroups": [2000],
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert spec["affinity"]["nodeAffinity"]
    assert merge_pod_override(base, None) == base


def test_no_override_changes_nothing() -> None:
    """Every role's template without an override: the same pod spec fields as before the override existed."""
    children = build_children(make_ctx())
    for kind, component in (("Deployment", "inference"), ("Deployment", "mooncake-master"), ("StatefulSet", None)):
        spec = _template(find(children, kind, component))["spec"]
        assert not {"imagePullSecrets", "affinity"} & set(spec)
        assert "annotations" not in _template(find(children, kind, component))["metadata"]


def test_override_reaches_each_role() -> None:
    inference = {**OVERRIDE, "spec": {**OVERRIDE["spec"], "containers": [{**OVERRIDE["spec"]["containers"][0],
                                                                         "name": "capture"}]}}
    master = {"spec": {"serviceAccountName": "mooncake", "imagePullSecrets": [{"name": "regcred"}]}}
    ctx = make_ctx({"trainer": {"podTemplate": OVERRIDE}, "inference": {"podTemplate": inference},
                    "transport": {"masterPodTemplate": master}})
    children = build_children(ctx)
    trainer = _template(find(children, "StatefulSet"))
    assert trainer["spec"]["serviceAccountName"] == "demo-trainer"
    assert trainer["metadata"]["labels"]["team"] == "ml"
    assert {"name": "certs", "secret": {"secretName": "ca"}} in trainer["spec"]["volumes"]
    capture = _template(find(children, "Deployment", "inference"))["spec"]["containers"][0]
    assert capture["envFrom"][0] == {"secretRef": {"name": "s3"}}
    mooncake = _template(find(children, "Deployment", "mooncake-master"))["spec"]
    assert mooncake["serviceAccountName"] == "mooncake" and mooncake["automountServiceAccountToken"] is False
    assert mooncake["imagePullSecrets"] == [{"name": "regcred"}]


def test_regeneration_job_takes_pull_secrets_and_metadata_of_the_trainer() -> None:
    ctx = make_ctx({"dataset": {"regenerate": {}},
                    "trainer": {"output": {"claimName": "out", "ephemeral": False}, "podTemplate": OVERRIDE}})
    pod = _template(build_regenerate_job(ctx))
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert "affinity" not in pod["spec"] and "envFrom" not in pod["spec"]["containers"][0]


def _trainer(spec: dict[str, Any]) -> dict[str, Any]:
    return {"trainer": {"podTemplate": spec}}


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (_trainer({"spec": {"nodeSelector": {"a": "b"}}}), "spec.trainer.podTemplate.spec.nodeSelector",
         "spec.scheduling.nodeSelector"),
        (_trainer({"spec": {"tolerations": []}}), "spec.trainer.podTemplate.spec.tolerations",
         "spec.scheduling.tolerations"),
        (_trainer({"spec": {"priorityClassName": "high"}}), "spec.trainer.podTemplate.spec.priorityClassName",
         "spec.scheduling.priorityClassName"),
        (_trainer({"spec": {"containers": [{"name": "trainer", "resources": {}}]}}),
         "spec.trainer.podTemplate.spec.containers[0].resources", "spec.trainer.resources"),
        (_trainer({"spec": {"containers": [{"name": "trainer", "env": []}]}}),
         "spec.trainer.podTemplate.spec.containers[0].env", "envFrom"),
        (_trainer({"spec": {"serviceAccountName": "mine"}}), "spec.trainer.podTemplate.spec.serviceAccountName",
         "<job>-trainer"),
        (_trainer({"metadata": {"labels": {"app.kubernetes.io/component": "x"}}}),
         "spec.trainer.podTemplate.metadata.labels", "selects on"),
        (_trainer({"metadata": {"annotations": {"dspark.io/spec-hash": "x"}}}),
         "spec.trainer.podTemplate.metadata.annotations", "operator's"),
        (_trainer({"spec": {"volumes": [{"name": "output", "emptyDir": {}}]}}),
         "spec.trainer.podTemplate.spec.volumes[0].name", "the operator creates"),
        (_trainer({"spec": {"volumes": [{"emptyDir": {}}]}}), "spec.trainer.podTemplate.spec.volumes[0].name",
         "needs a name"),
        (_trainer({"spec": {"containers": [{"name": "sidecar"}]}}),
         "spec.trainer.podTemplate.spec.containers[0].name", "its one container is 'trainer'"),
        (_trainer({"spec": {"volumes": [{"name": "x", "emptyDir": {}}], "containers": [
            {"name": "trainer", "volumeMounts": [{"name": "x", "mountPath": "/output/x"}]}]}}),
         "spec.trainer.podTemplate.spec.containers[0].volumeMounts[0].mountPath", "output volume"),
        (_trainer({"spec": {"volumes": [{"name": "x", "emptyDir": {}}], "containers": [
            {"name": "trainer", "volumeMounts": [{"name": "x", "mountPath": "/etc/dspark"}]}]}}),
         "spec.trainer.podTemplate.spec.containers[0].volumeMounts[0].mountPath", "job config"),
        (_trainer({"spec": {"containers": [{"name": "trainer", "volumeMounts": [{"name": "data",
                                                                                   "mountPath": "/x"}]}]}}),
         "spec.trainer.podTemplate.spec.containers[0].volumeMounts[0].name", "not one of"),
        (_trainer({"spec": {"containers": [{"name": "trainer", "envFrom": [{"prefix": "DSPARK_",
                                                                              "secretRef": {"name": "s"}}]}]}}),
         "spec.trainer.podTemplate.spec.containers[0].envFrom[0].prefix", "operator's"),
        (_trainer({"spec": {"affinity": {"nodeSelector": {}}}}), "spec.trainer.podTemplate.spec.affinity",
         "nodeAffinity"),
        ({"transport": {"masterPodTemplate": {"spec": {"containers": [{"name": "capture"}]}}}},
         "spec.transport.masterPodTemplate.spec.containers[0].name", "'mooncake-master'"),
        ({"inference": {"podTemplate": {"spec": {"securityContext": {"runAsUser": 0}}}}},
         "spec.inference.podTemplate.spec.securityContext.runAsUser", "greater than or equal to 1"),
    ],
)
def test_bad_overrides_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    assert_invalid(spec, field, words)


def test_api_refusals_of_override_fields_name_the_pod_template() -> None:
    ctx = make_ctx({"trainer": {"podTemplate": OVERRIDE}})
    sts = find(build_children(ctx), "StatefulSet")
    extra = len(sts["spec"]["template"]["spec"]["volumes"]) - 1
    for child_field, field in (
        ("spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution",
         "spec.trainer.podTemplate.spec.affinity"),
        ("spec.template.spec.imagePullSecrets[0].name", "spec.trainer.podTemplate.spec.imagePullSecrets"),
        (f"spec.template.spec.volumes[{extra}].secret", "spec.trainer.podTemplate.spec.volumes"),
        ("spec.template.spec.volumes[0].configMap", "spec"),
        ("spec.template.spec.containers[0].envFrom[0].secretRef", "spec.trainer.podTemplate"),
        ("spec.template.metadata.annotations", "spec.trainer.podTemplate.metadata"),
    ):
        assert spec_field_for(sts, child_field) == field, child_field
