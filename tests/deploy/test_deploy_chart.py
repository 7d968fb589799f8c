"""The Helm chart, offline: lint, rendering with default and other values, the schema's error
messages, RBAC coverage of what the operator really creates, the CRD copy, dashboards and rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    CHART,
    DASHBOARDS,
    RULES_FILE,
    by_kind,
    helm_binary,
    helm_template,
    render,
    run,
)

NON_DEFAULT = [
    "--set", "rbac.scope=namespace",
    "--set", "watchNamespaces={team-a,team-b}",
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
    "--set", "metrics.jobsPodMonitor.enabled=true",
    "--set", "prometheusRule.enabled=true",
    "--set", "grafana.dashboards.namespace=monitoring",
    "--set", "grafana.dashboards.annotations.grafana_folder=DSpark",
    "--set", "image.digest=sha256:" + "a" * 64,
    "--set", "operator.logLevel=debug",
    "--set", "operator.trainerImage=registry.example.com/dspark-trainer:1.2.3",
    "--set", "operator.inferenceImage=registry.example.com/dspark-serving:1.2.3",
    "--set", "rbac.batchJobs=false",
    "--set", "fullnameOverride=dspark-op",
    "--set", "nodeSelector.pool=system",
]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deploy,) = by_kind(docs, "Deployment")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(docs)["env"] if "value" in e}


# ------------------------------------------------------------------------------------ lint/render


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_helm_lint(values: list[str]) -> None:
    out = run([helm_binary(), "lint", "--strict", str(CHART), "--namespace", "dspark-system", *values])
    assert "0 chart(s) failed" in out.stdout


def test_default_render() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Service",
         "Deployment", "ConfigMap", "ConfigMap", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
         "Role", "RoleBinding"]
    )
    for d in docs:  # standard labels everywhere
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dspark-operator", d["kind"]
        assert labels["app.kubernetes.io/instance"] == "dspark-operator"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "dspark-operator-0.1.0"
    (deploy,) = by_kind(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate"}  # leader election: an overlap reconciles nothing twice
    (lease_role,) = by_kind(docs, "Role")
    assert lease_role["metadata"]["namespace"] == deploy["metadata"]["namespace"]  # the release namespace
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(docs)
    assert c["image"] == "ghcr.io/dspark-k8s/dspark-operator:0.1.0"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"healthz": 8080, "metrics": 8000}
    env = env_of(docs)
    assert env["DSPARK_OPERATOR_NAMESPACES"] == ""  # all namespaces
    assert env["DSPARK_OPERATOR_METRICS_PORT"] == "8000"
    assert env["DSPARK_OPERATOR_LIVENESS_PORT"] == "8080"
    assert env["DSPARK_OPERATOR_LEADER_ELECTION"] == "true"
    assert env["DSPARK_OPERATOR_LEASE_NAME"] == "dspark-operator"
    assert "DSPARK_TRAINER_IMAGE" not in env
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_non_default_render() -> None:
    docs = render(*NON_DEFAULT)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "Role", "RoleBinding", "RoleBinding", "Service",
         "Role", "RoleBinding", "Deployment", "ConfigMap", "ConfigMap", "ServiceMonitor", "PodMonitor",
         "PrometheusRule", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    )
    assert {d["metadata"]["name"] for d in by_kind(docs, "Deployment")} == {"dspark-op"}
    assert {r["metadata"]["namespace"] for r in watch_roles(docs)} == {"team-a", "team-b"}
    for rb in by_kind(docs, "RoleBinding"):
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "dspark-op", "namespace": "dspark-system"}]
    c = container(docs)
    assert c["image"] == "ghcr.io/dspark-k8s/dspark-operator@sha256:" + "a" * 64
    assert c["args"] == ["--verbose"]
    env = env_of(docs)
    assert env["DSPARK_OPERATOR_NAMESPACES"] == "team-a,team-b"
    assert env["DSPARK_TRAINER_IMAGE"] == "registry.example.com/dspark-trainer:1.2.3"
    assert env["DSPARK_INFERENCE_IMAGE"] == "registry.example.com/dspark-serving:1.2.3"
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "system"}
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    for cm in by_kind(docs, "ConfigMap"):
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "DSpark"}
    for role in by_kind(docs, "Role"):
        assert not any("batch" in r["apiGroups"] for r in role["rules"])


def test_namespace_scope_defaults_to_the_release_namespace() -> None:
    docs = render("--set", "rbac.scope=namespace", namespace="ml")
    assert [r["metadata"]["namespace"] for r in watch_roles(docs)] == ["ml"]
    assert env_of(docs)["DSPARK_OPERATOR_NAMESPACES"] == "ml"


def watch_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Roles that grant the watched namespaces (not the leader-election Role)."""
    return [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]


def test_leader_election_off_runs_one_replica_with_recreate() -> None:
    docs = render("--set", "leaderElection.enabled=false")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(docs, "Role")
    assert "DSPARK_OPERATOR_LEADER_ELECTION" not in env_of(docs)
    proc = helm_template("--set", "leaderElection.enabled=false", "--set", "replicaCount=2", check=False)
    assert proc.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled: true" in proc.stderr


def test_two_replicas_elect_a_leader() -> None:
    docs = render("--set", "replicaCount=2", "--set", "leaderElection.leaseDurationSeconds=20")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert env_of(docs)["DSPARK_OPERATOR_LEASE_DURATION_SECONDS"] == "20"


def test_metrics_disabled() -> None:
    docs = render("--set", "metrics.enabled=false")
    assert not by_kind(docs, "Service")
    assert env_of(docs)["DSPARK_OPERATOR_METRICS_PORT"] == "0"
    assert {p["name"] for p in container(docs)["ports"]} == {"healthz"}


def test_notes_tell_what_to_do_next() -> None:
    out = run([helm_binary(), "install", "--dry-run=client", "dspark-operator", str(CHART),
               "--namespace", "dspark-system"])
    notes = out.stdout.split("NOTES:", 1)[1]
    for text in ("rollout status deployment/dspark-operator", "kubectl get dsj", "examples/minimal-job.yaml",
                 "--speculative-algorithm DSPARK", "helm show crds", "DSpark training"):
        assert text in notes, text


# ------------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("rbac.scope=cluser", "at '/rbac/scope': value must be one of 'cluster', 'namespace'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("metrics.port=70000", "at '/metrics/port': maximum"),
        ("operator.maxConcurrentReconciles=0", "at '/operator/maxConcurrentReconciles': minimum"),
        ("operator.logLevel=trace", "at '/operator/logLevel': value must be one of 'info', 'debug', 'warning'"),
        ("image.digest=latest", "at '/image/digest': 'latest' does not match pattern"),
        ("metrics.serviceMonitor.interval=30", "at '/metrics/serviceMonitor/interval': got number, want string"),
        ("metrics.serviceMonitor.interval=soon", "at '/metrics/serviceMonitor/interval': 'soon' does not match"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("rbac.clusterWide=true", "at '/rbac': additional properties 'clusterWide' not allowed"),
        ("grafana.dashboards.enabled=yes", "at '/grafana/dashboards/enabled': got string, want boolean"),
    ],
)
def test_schema_rejects_bad_values(setting: str, message: str) -> None:
    flag = "--set-string" if setting.endswith("=yes") else "--set"
    proc = helm_template(flag, setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "watchNamespaces={a}"], "watchNamespaces is only used with rbac.scope=namespace"),
        (["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
         "metrics.serviceMonitor.enabled needs metrics.enabled=true"),
        (["--set", "metrics.port=8080"], "metrics.port and operator.livenessPort must differ"),
    ],
)
def test_cross_field_checks(args: list[str], message: str) -> None:
    proc = helm_template(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------ RBAC


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] and not r.get("resourceNames")
        for r in rules
    )


def operator_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (role,) = [d for d in docs if d["kind"] in ("ClusterRole", "Role")
               and not d["metadata"]["name"].endswith(("-kopf", "-leader-election"))]
    return list(role["rules"])


def test_rbac_least_privilege() -> None:
    for docs in (render(), render("--set", "rbac.scope=namespace")):
        for d in docs:
            for rule in d.get("rules") or []:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], (d["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
                assert "secrets" not in rule["resources"], rule
                # Nodes: only listed (transport.protocol auto reads their RDMA resources), never changed.
                assert "nodes" not in rule["resources"] or rule["verbs"] == ["list"], rule
        rules = operator_rules(docs)
        assert not allowed(rules, "", "pods", "create")  # it deletes pods for a gang restart, never creates them
        assert allowed(rules, "", "pods", "delete")
    # Cluster scope: only the Kopf reads are cluster-wide besides the operator's own ClusterRole.
    (kopf,) = [d for d in render("--set", "rbac.scope=namespace") if d["kind"] == "ClusterRole"]
    assert kopf["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": ["scheduling.k8s.io"], "resources": ["priorityclasses"], "verbs": ["get"]},
    ]


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def test_rbac_covers_what_the_operator_creates() -> None:
    """Every child the operator builds (production spec, PodMonitor on) may be created, patched, listed and deleted;
    the operator holds every permission it grants the trainer's Role (no escalation needed)."""
    from dspark_operator.api import parse_job
    from dspark_operator.builders import BuildContext, build_children
    from dspark_operator.kube import kind_of

    body = yaml.safe_load((CHART.parents[1] / "examples" / "production-job.yaml").read_text())
    body["metadata"].update(namespace="team", uid="0b0f0c3e-0000-4000-8000-000000000001", generation=1)
    job = parse_job(body)
    assert job.spec is not None, job.invalid
    ctx = BuildContext(name=job.name, namespace=job.namespace, uid=job.uid, spec=job.spec, trainer_image="t:1",
                       inference_image="s:1", podmonitor_available=True)
    children = build_children(ctx)
    rules = operator_rules(render())
    kinds = set()
    for child in children:
        info = kind_of(child)
        kinds.add(info.kind)
        for verb in ("get", "list", "watch", "create", "patch", "update", "delete"):
            assert allowed(rules, _group(info.api_version), info.plural, verb), (info.kind, verb)
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
            "PodMonitor"} <= kinds
    for child in children:
        if child["kind"] != "Role":
            continue
        for rule in child["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert allowed(rules, group, resource, verb), ("trainer Role grants more", resource, verb)
    needed: list[tuple[str, str, tuple[str, ...]]] = [
        ("apps", "deployments/scale", ("get", "patch")),
        ("apps", "statefulsets/scale", ("get", "patch")),
        ("dspark.io", "dsparktrainingjobs", ("get", "list", "watch", "patch", "delete")),
        ("dspark.io", "dsparktrainingjobs/status", ("get", "patch")),
        ("dspark.io", "dsparktrainingjobs/finalizers", ("update",)),
    ]
    for group, resource, verbs in needed:
        for verb in verbs:
            assert allowed(rules, group, resource, verb), (resource, verb)
    assert allowed(rules, "batch", "jobs", "create")
    assert allowed(rules, "", "events", "create")


def test_trainer_status_policy_is_the_generated_one() -> None:
    """The chart's ValidatingAdmissionPolicy is what dspark_operator.policy generates from the status model: every
    status field but progress is guarded, for the trainer ServiceAccount of the job being changed only."""
    from dspark_operator import policy
    from dspark_operator.api.status import OPERATOR_STATUS_FIELDS

    template = CHART / "templates" / "trainer-status-policy.yaml"
    assert template.read_text() == policy.render_template(), "run: python -m dspark_operator.policy --write"
    assert policy.main(["--check", "--output", str(template)]) == 0
    docs = render()
    (vap,) = by_kind(docs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert vap["spec"] == policy.policy_spec()
    assert binding["spec"] == {"policyName": vap["metadata"]["name"], "validationActions": ["Deny"]}
    guarded = {v["expression"].split(".?")[-1] for v in vap["spec"]["validations"]}
    assert guarded == set(OPERATOR_STATUS_FIELDS) and "progress" not in guarded
    assert {"phase", "restarts", "conditions", "acceptedSpec"} <= guarded
    (rule,) = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["dsparktrainingjobs/status"] and rule["operations"] == ["UPDATE"]
    assert "'-trainer'" in vap["spec"]["matchConditions"][0]["expression"]
    off = render("--set", "trainerStatusPolicy.enabled=false")
    assert not by_kind(off, "ValidatingAdmissionPolicy") and not by_kind(off, "ValidatingAdmissionPolicyBinding")


# ------------------------------------------------------------------------------------ CRD, dashboards, rules


def test_chart_crd_is_the_generated_crd() -> None:
    from dspark_operator.crdgen import CRD_FILE_NAME, DEFAULT_OUTPUT
    from dspark_operator.crdgen import render as render_crd

    chart_crd = CHART / "crds" / CRD_FILE_NAME
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD_FILE_NAME]
    fix = f"cp {DEFAULT_OUTPUT.relative_to(CHART.parents[1])} {chart_crd.relative_to(CHART.parents[1])}"
    assert chart_crd.read_text() == render_crd(), f"chart CRD out of date with the models: run crdgen --write, {fix}"
    assert chart_crd.read_text() == DEFAULT_OUTPUT.read_text(), f"chart CRD differs from crds/: {fix}"


def test_dashboard_configmaps() -> None:
    cms = by_kind(render(), "ConfigMap")
    assert len(cms) == len(DASHBOARDS) == 2
    by_name = {cm["metadata"]["name"]: cm for cm in cms}
    for path in DASHBOARDS:
        cm = by_name[f"dspark-operator-dashboard-{path.stem}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key, text) = next(iter(cm["data"].items()))
        assert key == f"dspark-{path.stem}.json"
        assert json.loads(text) == json.loads(path.read_text())


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        uids.add(d["uid"])
        assert d["title"].startswith("DSpark")
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        names = {v["name"] for v in d["templating"]["list"]}
        assert {"datasource", "namespace"} <= names
        for p in d["panels"]:
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]
    assert uids == {"dspark-training", "dspark-operator"}
    training = json.loads((CHART / "dashboards" / "training.json").read_text())
    assert {"job", "namespace"} <= {v["name"] for v in training["templating"]["list"]}


def test_prometheus_rule_wraps_the_rule_file() -> None:
    (rule,) = by_kind(render("--set", "prometheusRule.enabled=true"), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"DSparkTrainingStalled", "DSparkDataStarvation", "DSparkLossNotFinite", "DSparkJobFailed"} <= alerts
