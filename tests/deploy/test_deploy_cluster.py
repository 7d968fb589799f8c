"""The Helm chart against the real test control plane (etcd, kube-apiserver with RBAC and
PodSecurity admission, controller manager, scheduler, kwok nodes):

- the rendered manifests (default and non-default values, CRD included) pass a server-side dry run;
- `helm install` gives an operator Deployment that becomes Available on a kwok node in a namespace
  enforcing the `restricted` Pod Security Standard, and `helm uninstall` removes what it installed;
- the installed RBAC lets the operator's ServiceAccount create every child the operator builds for
  a job (server-side dry run *as that ServiceAccount*, which includes the RBAC escalation check on
  the trainer's Role), and nothing it should not do.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from deploy_helpers import CHART, REPO, monitoring_crds, render
from harness.cluster import LocalCluster

pytestmark = pytest.mark.cluster

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture(scope="module")
def monitoring_api(k8s_cluster: LocalCluster) -> Iterator[None]:
    """The Prometheus Operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule) for the module's tests;
    removed afterwards unless they were there before."""
    paths = monitoring_crds()
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in paths]
    existed = {n for n in names if k8s_cluster.api("GET", f"{CRD_PATH}/{n}")[0] == 200}
    for p in paths:
        k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(p))
    for n in names:
        k8s_cluster.wait_crd_established(n)
    try:
        yield
    finally:
        for n in names:
            if n not in existed:
                k8s_cluster.kubectl("delete", "crd", n, "--wait=false", check=False)


def _docs_text(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def _dry_run(cluster: LocalCluster, docs: list[dict[str, Any]], *, as_user: str | None = None,
             namespace: str | None = None) -> str:
    args = ["apply", "--dry-run=server", "--server-side", "--force-conflicts", "--field-manager=dspark-test", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    if as_user:
        args += [f"--as={as_user}"]
    return cluster.kubectl(*args, input=_docs_text(docs)).stdout


def _template(namespace: str, *args: str, release: str = "dspark-operator") -> list[dict[str, Any]]:
    return render("--include-crds", *args, release=release, namespace=namespace)


def test_server_side_dry_run_default_values(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    docs = _template(k8s_namespace)
    assert any(d["kind"] == "CustomResourceDefinition" for d in docs)
    out = _dry_run(k8s_cluster, docs)
    for d in docs:
        assert f"{d['metadata']['name']} serverside-applied (server dry run)" in out, (d["kind"], out)


def test_server_side_dry_run_non_default_values(
    k8s_cluster: LocalCluster, k8s_namespace: str, monitoring_api: None
) -> None:
    team_a = k8s_cluster.create_namespace(f"team-a-{uuid.uuid4().hex[:6]}")
    team_b = k8s_cluster.create_namespace(f"team-b-{uuid.uuid4().hex[:6]}")
    try:
        docs = _template(
            k8s_namespace,
            "--set", "rbac.scope=namespace",
            "--set", f"watchNamespaces={{{team_a},{team_b}}}",
            "--set", "metrics.serviceMonitor.enabled=true",
            "--set", "metrics.jobsPodMonitor.enabled=true",
            "--set", "prometheusRule.enabled=true",
            "--set", "operator.logLevel=warning",
            "--set", "image.digest=sha256:" + "b" * 64,
            "--set", "serviceAccount.name=custom-sa",
            "--set", "resources.limits.cpu=1",
            "--set-json", 'tolerations=[{"key":"dedicated","operator":"Equal","value":"system","effect":"NoSchedule"}]',
            release=f"alt-{uuid.uuid4().hex[:6]}",
        )
        kinds = {d["kind"] for d in docs}
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Role", "RoleBinding"} <= kinds
        out = _dry_run(k8s_cluster, docs)
        assert out.count("serverside-applied (server dry run)") == len(docs), out
    finally:
        k8s_cluster.delete_namespace(team_a)
        k8s_cluster.delete_namespace(team_b)


def _objects_of_release(cluster: LocalCluster, namespace: str, release: str) -> list[str]:
    sel = f"app.kubernetes.io/instance={release}"
    out = []
    for resource, namespaced in (
        ("deployments.apps", True), ("replicasets.apps", True), ("pods", True), ("services", True),
        ("serviceaccounts", True), ("configmaps", True), ("roles.rbac.authorization.k8s.io", True),
        ("rolebindings.rbac.authorization.k8s.io", True), ("clusterroles.rbac.authorization.k8s.io", False),
        ("clusterrolebindings.rbac.authorization.k8s.io", False),
        ("validatingadmissionpolicies.admissionregistration.k8s.io", False),
        ("validatingadmissionpolicybindings.admissionregistration.k8s.io", False),
    ):
        args = ["get", resource, "-l", sel, "-o", "name"]
        args += ["-n", namespace] if namespaced else []
        out += [x for x in cluster.kubectl(*args).stdout.split() if x]
    return out


def test_helm_install_available_on_kwok_and_uninstall(k8s_cluster: LocalCluster) -> None:
    ns = k8s_cluster.create_namespace(f"dspark-system-{uuid.uuid4().hex[:6]}", labels=RESTRICTED)
    release = f"op-{uuid.uuid4().hex[:6]}"
    try:
        out = k8s_cluster.helm("install", release, str(CHART), "--namespace", ns, "--wait", "--timeout", "180s",
                               timeout=240)
        assert "NOTES" in out.stdout
        fullname = f"{release}-dspark-operator"
        deploy = json.loads(k8s_cluster.kubectl("get", "deployment", fullname, "-n", ns, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in deploy["status"]["conditions"]}
        assert conditions.get("Available") == "True", deploy["status"]
        assert deploy["status"]["readyReplicas"] == 1
        pods = json.loads(k8s_cluster.kubectl(
            "get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={release}", "-o", "json").stdout)["items"]
        assert len(pods) == 1
        pod = pods[0]
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"] in {n.name for n in k8s_cluster.nodes}  # a kwok node
        # Admitted under the `restricted` Pod Security Standard (enforced on the namespace).
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        # The CRD is installed (from the chart's crds/, or already there).
        assert k8s_cluster.crd_established("dsparktrainingjobs.dspark.io")
        status = k8s_cluster.helm("status", release, "--namespace", ns).stdout
        assert "STATUS: deployed" in status
        assert _objects_of_release(k8s_cluster, ns, release)

        k8s_cluster.helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "120s", timeout=180)
        k8s_cluster.wait_until(lambda: not _objects_of_release(k8s_cluster, ns, release), timeout=90,
                               what="everything of the release to be gone")
        # Helm keeps CRDs (and so users' jobs) on uninstall.
        assert k8s_cluster.crd_established("dsparktrainingjobs.dspark.io")
    finally:
        k8s_cluster.helm("uninstall", release, "--namespace", ns, check=False)
        k8s_cluster.delete_namespace(ns)


# ------------------------------------------------------------------------------------ RBAC, for real


def _children(job_ns: str, job_name: str, *, podmonitor: bool) -> list[dict[str, Any]]:
    """What the operator creates for examples/production-job.yaml in `job_ns` (its real builders)."""
    from dspark_operator.api import parse_job
    from dspark_operator.builders import BuildContext, build_children

    body = yaml.safe_load((REPO / "examples" / "production-job.yaml").read_text())
    body["metadata"].update(name=job_name, namespace=job_ns, uid=str(uuid.uuid4()), generation=1)
    job = parse_job(body)
    assert job.spec is not None, job.invalid
    ctx = BuildContext(name=job.name, namespace=job.namespace, uid=job.uid, spec=job.spec, trainer_image="t:1",
                       inference_image="s:1", podmonitor_available=podmonitor)
    return list(build_children(ctx))


def _can_i(cluster: LocalCluster, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={sa}", *([f"--subresource={sub}"] if sub else [])]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    out = cluster.kubectl(*args, check=False)
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_installed_rbac_lets_the_operator_create_its_children(
    k8s_cluster: LocalCluster, monitoring_api: None, scope: str
) -> None:
    ns = k8s_cluster.create_namespace(f"dspark-rbac-{uuid.uuid4().hex[:6]}")
    jobs_ns = k8s_cluster.create_namespace(f"team-{uuid.uuid4().hex[:6]}")
    other_ns = k8s_cluster.create_namespace(f"other-{uuid.uuid4().hex[:6]}")
    release = f"rbac-{uuid.uuid4().hex[:6]}"
    args = ["--set", "rbac.scope=namespace", "--set", f"watchNamespaces={{{jobs_ns}}}"] if scope == "namespace" else []
    try:
        k8s_cluster.helm("install", release, str(CHART), "--namespace", ns, *args, timeout=180)
        sa = f"system:serviceaccount:{ns}:{release}-dspark-operator"
        children = _children(jobs_ns, "rbac-demo", podmonitor=True)
        assert {c["kind"] for c in children} >= {"Deployment", "StatefulSet", "Role", "RoleBinding", "PodMonitor"}
        # Every child, created for real as the operator's ServiceAccount (creating the trainer's Role and
        # RoleBinding passes the API server's RBAC escalation checks only if the operator holds what they
        # grant). The owner job does not exist, so the garbage collector removes them again.
        out = k8s_cluster.kubectl("apply", "--server-side", "--field-manager=dspark-operator", f"--as={sa}",
                                  "-n", jobs_ns, "-f", "-", input=_docs_text(children)).stdout
        assert out.count("serverside-applied") == len(children), out
        for verb, resource in (
            ("list", "dsparktrainingjobs.dspark.io"), ("watch", "dsparktrainingjobs.dspark.io"),
            ("patch", "dsparktrainingjobs.dspark.io"), ("patch", "dsparktrainingjobs.dspark.io/status"),
            ("update", "dsparktrainingjobs.dspark.io/finalizers"),
            ("list", "pods"), ("watch", "pods"), ("delete", "pods"),
            ("create", "events"), ("create", "jobs.batch"), ("delete", "statefulsets.apps"),
            ("delete", "dsparktrainingjobs.dspark.io"),
            ("patch", "deployments.apps/scale"), ("patch", "statefulsets.apps/scale"),
        ):
            assert _can_i(k8s_cluster, sa, verb, resource, jobs_ns), (verb, resource)
        for verb, resource in (("list", "customresourcedefinitions.apiextensions.k8s.io"), ("watch", "namespaces")):
            assert _can_i(k8s_cluster, sa, verb, resource, None), (verb, resource)
        for verb, resource in (("create", "pods"), ("get", "secrets"), ("list", "secrets"), ("create", "nodes"),
                               ("create", "clusterroles.rbac.authorization.k8s.io"),
                               ("escalate", "roles.rbac.authorization.k8s.io"), ("delete", "namespaces")):
            assert not _can_i(k8s_cluster, sa, verb, resource, jobs_ns), (verb, resource)
        elsewhere = _can_i(k8s_cluster, sa, "create", "deployments.apps", other_ns)
        assert elsewhere is (scope == "cluster"), f"{scope} scope: may create deployments elsewhere: {elsewhere}"
    finally:
        k8s_cluster.helm("uninstall", release, "--namespace", ns, check=False)
        for n in (ns, jobs_ns, other_ns):
            k8s_cluster.delete_namespace(n)
