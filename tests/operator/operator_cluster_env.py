"""Helpers of the operator's integration tests (the cluster, the operator process, polling)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.cluster import LocalCluster, wait_until
from harness.operator_process import OperatorProcess, small_job_manifest

REPO = Path(__file__).resolve().parents[2]
API = "/apis/dspark.io/v1alpha1"


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in (nested dicts merged, anything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def small_job(name: str, *, nodes: int = 1, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    """A job that fits many times on the kwok nodes (tcp transport, few GPUs, tiny requests); `spec` entries are
    merged into the spec's sections (an output claimName replaces the ephemeral output)."""
    body = small_job_manifest(name, nodes=nodes, gpus_per_node=gpus)
    body["spec"] = merged(body["spec"], spec)
    output = body["spec"]["trainer"]["output"]
    if "claimName" in output:
        output.pop("ephemeral", None)
    return body


class OperatorEnv:
    """The cluster, the operator process and helpers used by the tests."""

    def __init__(self, cluster: LocalCluster, operator: OperatorProcess) -> None:
        self.cluster = cluster
        self.operator = operator

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl(*args, input=input, check=check)

    def get(self, path: str) -> dict[str, Any] | None:
        status, body = self.cluster.api("GET", path)
        if status == 404:
            return None
        assert status == 200, (status, body)
        return dict(body)

    def job(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get(f"/apis/dspark.io/v1alpha1/namespaces/{ns}/dsparktrainingjobs/{name}")

    def phase(self, ns: str, name: str) -> str | None:
        job = self.job(ns, name)
        return ((job or {}).get("status") or {}).get("phase")

    def condition(self, ns: str, name: str, ctype: str) -> dict[str, Any] | None:
        job = self.job(ns, name) or {}
        for c in (job.get("status") or {}).get("conditions") or []:
            if c["type"] == ctype:
                return dict(c)
        return None

    def list(self, ns: str, api: str, plural: str, selector: str) -> list[dict[str, Any]]:
        prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
        body = self.get(f"{prefix}/namespaces/{ns}/{plural}?labelSelector={selector}") or {}
        return list(body.get("items") or [])

    def children(self, ns: str, name: str) -> dict[str, dict[str, Any]]:
        """Every child of a job by 'Kind/name'."""
        sel = f"app.kubernetes.io/instance={name}"
        out: dict[str, dict[str, Any]] = {}
        for api, plural, kind in (
            ("v1", "serviceaccounts", "ServiceAccount"),
            ("v1", "configmaps", "ConfigMap"),
            ("v1", "services", "Service"),
            ("apps/v1", "deployments", "Deployment"),
            ("apps/v1", "statefulsets", "StatefulSet"),
            ("rbac.authorization.k8s.io/v1", "roles", "Role"),
            ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
        ):
            for obj in self.list(ns, api, plural, sel):
                out[f"{kind}/{obj['metadata']['name']}"] = obj
        return out

    def pods(self, ns: str, name: str, component: str | None = None) -> list[dict[str, Any]]:
        sel = f"app.kubernetes.io/instance={name}"
        if component:
            sel += f",app.kubernetes.io/component={component}"
        return self.list(ns, "v1", "pods", sel)

    def wait(self, predicate: Any, *, timeout: float = 60, what: str) -> Any:
        def on_timeout() -> str:
            return f"operator log:\n{self.operator.log_tail()}\n{self.cluster.logs(10)}"

        return wait_until(predicate, timeout=timeout, what=what, interval=0.2, on_timeout=on_timeout)

    def wait_phase(self, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        self.wait(lambda: self.phase(ns, name) == phase, timeout=timeout, what=f"{ns}/{name} to be {phase}")
        job = self.job(ns, name)
        assert job is not None
        return job

    def apply(self, ns: str, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-n", ns, "-f", "-", input=text)

    def bound_claims(self, ns: str, claims: dict[str, str], *, storage: str = "1Gi", timeout: float = 60) -> None:
        """PersistentVolumeClaims `{name: access mode}`, each bound to its own hostPath PV (kwok pods never mount
        them; the scheduler needs them bound); returns once all are Bound."""
        for claim, mode in claims.items():
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{ns}-{claim}"},
                "spec": {
                    "capacity": {"storage": storage},
                    "accessModes": [mode],
                    "hostPath": {"path": f"/tmp/{ns}-{claim}"},
                    "storageClassName": "",
                    "claimRef": {"namespace": ns, "name": claim},
                },
            }
            pvc = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": ns},
                "spec": {
                    "accessModes": [mode],
                    "resources": {"requests": {"storage": storage}},
                    "storageClassName": "",
                },
            }
            self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]}))
        self.wait(
            lambda: all(
                (self.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{c}") or {}).get("status", {}).get("phase")
                == "Bound"
                for c in claims
            ),
            timeout=timeout,
            what=f"the claims {sorted(claims)} to be bound",
        )

    def merge_patch(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        self.kubectl("patch", "-n", ns, "dsj", name, "--type=merge", "-p", json.dumps(patch))

    def trainer_client(self, ns: str, job: str) -> Any:
        """A kubernetes ApiClient authenticated as the job's trainer ServiceAccount (a token from the TokenRequest
        API, as a trainer pod gets one)."""
        from kubernetes import client as k8s_client

        token = self.kubectl("create", "token", "-n", ns, f"{job}-trainer").stdout.strip()
        cfg = k8s_client.Configuration()
        cfg.host = self.cluster.server
        cfg.ssl_ca_cert = str(self.cluster.pki.ca.cert)
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return k8s_client.ApiClient(cfg)

    @staticmethod
    def request_as(client: Any, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """One REST call with `client` (merge patch for PATCH): (HTTP status, body text)."""
        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        serialized = client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = client.call_api(*serialized)
        return int(response.status), response.read().decode("utf-8", "replace")

    def can_i(self, verb: str, resource: str, ns: str, user: str, *, subresource: str | None = None) -> bool:
        """`kubectl auth can-i` as `user`; `resource` may be TYPE/NAME."""
        args = ["auth", "can-i", verb, resource, "-n", ns, f"--as={user}"]
        if subresource:
            args.append(f"--subresource={subresource}")
        return str(self.kubectl(*args, check=False).stdout).strip() == "yes"

    def events(self, ns: str, name: str) -> str:
        """`kubectl get events` of one object (reason and message columns included)."""
        return str(self.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}").stdout)

    def wait_reconciled(self, before: float, timeout: float = 30) -> None:
        """Wait until the operator finished at least one more reconciliation than `before`."""
        self.wait(lambda: self.operator.reconciles() > before, timeout=timeout, what="another reconciliation")
