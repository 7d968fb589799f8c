"""The test control plane itself: real etcd, kube-apiserver, controllers and scheduler, kwok nodes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from harness.cluster import GPU_RESOURCE, RDMA_RESOURCE, LocalCluster

pytestmark = pytest.mark.cluster


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def running_pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = get_json(cluster, "pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]


def wait_running(cluster: LocalCluster, namespace: str, selector: str, count: int) -> list[dict[str, Any]]:
    """Waits until exactly `count` pods matching `selector` are Running on a node."""

    def check() -> list[dict[str, Any]] | None:
        pods = running_pods(cluster, namespace, selector)
        return pods if len(pods) == count else None

    return cluster.wait_until(check, timeout=90, what=f"{count} Running pods with {selector} in {namespace}")


def test_kubectl_talks_to_the_pinned_apiserver(k8s_cluster: LocalCluster) -> None:
    version = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == k8s_cluster.versions.k8s
    nodes = {n["metadata"]["name"] for n in get_json(k8s_cluster, "nodes")["items"]}
    assert {n.name for n in k8s_cluster.nodes} <= nodes


def test_deployment_pods_become_running_on_kwok_nodes(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 3
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers:
                - name: web
                  image: registry.invalid/web:1
                  resources: {requests: {cpu: 100m, memory: 64Mi}}
        """
    )
    k8s_cluster.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=manifest)
    pods = wait_running(k8s_cluster, k8s_namespace, "app=web", 3)
    node_names = {n.name for n in k8s_cluster.nodes}
    assert {p["spec"]["nodeName"] for p in pods} <= node_names
    k8s_cluster.wait_until(
        lambda: get_json(k8s_cluster, "deployment", "web", "-n", k8s_namespace)["status"].get("availableReplicas") == 3,
        timeout=60,
        what="Deployment web available",
    )


def _gpu_pod(name: str, gpus: int, rdma: int) -> dict[str, Any]:
    limits = {GPU_RESOURCE: str(gpus), RDMA_RESOURCE: str(rdma)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "gpu"}},
        "spec": {
            "containers": [{"name": "train", "image": "registry.invalid/train:1", "resources": {"limits": limits}}],
        },
    }


def test_gpu_and_rdma_pods_land_on_gpu_nodes(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    # Each GPU node has 8 GPUs: one full-node pod per GPU node takes them all, one more cannot be placed.
    nodes = len(k8s_cluster.gpu_nodes)
    for i in range(nodes + 1):
        k8s_cluster.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=json.dumps(_gpu_pod(f"gpu-{i}", 8, 1)))
    pods = wait_running(k8s_cluster, k8s_namespace, "app=gpu", nodes)
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(k8s_cluster.gpu_nodes)

    def unschedulable() -> str | None:
        for pod in get_json(k8s_cluster, "pods", "-n", k8s_namespace, "-l", "app=gpu")["items"]:
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return str(cond.get("message", ""))
        return None

    message = k8s_cluster.wait_until(unschedulable, timeout=60, what="the extra GPU pod to be Unschedulable")
    assert GPU_RESOURCE in message

    # The Python client reads the same kubeconfig and sees the advertised resources.
    from kubernetes import client

    api = client.CoreV1Api(k8s_cluster.api_client())
    status = api.read_node(k8s_cluster.gpu_nodes[0]).status
    assert status is not None and status.allocatable is not None
    assert status.allocatable[GPU_RESOURCE] == "8"
    assert status.allocatable[RDMA_RESOURCE] == "8"


def test_deleting_an_owner_garbage_collects_its_children(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_cluster.kubectl("create", "configmap", "owner", "-n", ns, "--from-literal=a=b")
    uid = get_json(k8s_cluster, "configmap", "owner", "-n", ns)["metadata"]["uid"]
    for i in range(2):
        child = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"child-{i}",
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
            },
            "data": {"i": str(i)},
        }
        k8s_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(child))
    # A Deployment owns ReplicaSets, which own Pods.
    k8s_cluster.kubectl("create", "deployment", "gc", "-n", ns, "--image=registry.invalid/gc:1", "--replicas=2")
    wait_running(k8s_cluster, ns, "app=gc", 2)

    k8s_cluster.kubectl("delete", "configmap", "owner", "-n", ns, "--wait=false")
    k8s_cluster.kubectl("delete", "deployment", "gc", "-n", ns, "--wait=false")

    def collected() -> bool:
        names = {c["metadata"]["name"] for c in get_json(k8s_cluster, "configmaps", "-n", ns)["items"]}
        replicasets = get_json(k8s_cluster, "replicasets", "-n", ns, "-l", "app=gc")["items"]
        pods = get_json(k8s_cluster, "pods", "-n", ns, "-l", "app=gc")["items"]
        return not ({"child-0", "child-1"} & names) and not replicasets and not pods

    k8s_cluster.wait_until(collected, timeout=90, what="owned ConfigMaps, ReplicaSets and Pods to be collected")


def test_statefulset_and_job_controllers(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: v1
        kind: Service
        metadata: {name: trainer}
        spec: {clusterIP: None, selector: {app: trainer}, ports: [{name: rdzv, port: 29500}]}
        ---
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: trainer}
        spec:
          serviceName: trainer
          replicas: 2
          podManagementPolicy: Parallel
          selector: {matchLabels: {app: trainer}}
          template:
            metadata: {labels: {app: trainer}}
            spec:
              containers: [{name: t, image: registry.invalid/t:1}]
        ---
        apiVersion: batch/v1
        kind: Job
        metadata: {name: once}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers: [{name: j, image: registry.invalid/j:1}]
        """
    )
    k8s_cluster.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=manifest)
    pods = wait_running(k8s_cluster, k8s_namespace, "app=trainer", 2)
    assert sorted(p["metadata"]["name"] for p in pods) == ["trainer-0", "trainer-1"]
    k8s_cluster.wait_until(
        lambda: get_json(k8s_cluster, "job", "once", "-n", k8s_namespace)["status"].get("succeeded") == 1,
        timeout=90,
        what="Job once to succeed (kwok completes Job pods)",
    )


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.dspark.io}
spec:
  group: test.dspark.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1}
            status:
              type: object
              properties:
                phase: {type: string}
"""


def test_crd_install_and_custom_object_round_trip(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    k8s_cluster.kubectl("apply", "-f", "-", input=CRD)
    try:
        k8s_cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.test.dspark.io", "--timeout=60s")
        widget = {"apiVersion": "test.dspark.io/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}}
        # Discovery of a new CRD can lag a moment behind Established: retry until kubectl knows it.
        k8s_cluster.wait_until(
            lambda: k8s_cluster.kubectl(
                "apply", "-n", k8s_namespace, "-f", "-", input=json.dumps(widget), check=False
            ).returncode
            == 0,
            timeout=60,
            what="kubectl apply of a Widget",
        )
        got = get_json(k8s_cluster, "wdg", "w1", "-n", k8s_namespace)
        assert got["spec"] == {"size": 3}

        # Schema validation is enforced by the API server.
        bad = {**widget, "metadata": {"name": "w2"}, "spec": {"size": 0}}
        proc = k8s_cluster.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=json.dumps(bad), check=False)
        assert proc.returncode != 0 and "spec.size" in proc.stderr

        # The Python client sees the same object and can write its status subresource.
        from kubernetes import client

        api = client.CustomObjectsApi(k8s_cluster.api_client())
        obj: dict[str, Any] = api.get_namespaced_custom_object(  # type: ignore[assignment]
            "test.dspark.io", "v1", k8s_namespace, "widgets", "w1"
        )
        assert obj["spec"]["size"] == 3
        api.patch_namespaced_custom_object_status(
            "test.dspark.io", "v1", k8s_namespace, "widgets", "w1", {"status": {"phase": "Ready"}}
        )
        assert get_json(k8s_cluster, "widget", "w1", "-n", k8s_namespace)["status"] == {"phase": "Ready"}
    finally:
        k8s_cluster.kubectl("delete", "crd", "widgets.test.dspark.io", "--wait=false", check=False)


def test_helm_version_and_install(k8s_cluster: LocalCluster, k8s_namespace: str, tmp_path: Path) -> None:
    out = k8s_cluster.helm("version", "--short").stdout
    assert out.strip().startswith(k8s_cluster.versions.helm), out

    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hi\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-hello\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    k8s_cluster.helm("install", "demo", str(chart), "-n", k8s_namespace, "--set", "greeting=hello", "--wait")
    cm = get_json(k8s_cluster, "configmap", "demo-hello", "-n", k8s_namespace)
    assert cm["data"] == {"greeting": "hello"}
    releases = json.loads(k8s_cluster.helm("list", "-n", k8s_namespace, "-o", "json").stdout)
    assert [r["name"] for r in releases] == ["demo"]
