"""A small asynchronous Kubernetes REST client for the reconciler.

It uses the `kubernetes` package only for credentials, TLS and connection pooling (kubeconfig or
in-cluster service account, token refresh included) and talks plain REST paths, so one code path
serves every kind, including custom resources and server-side apply. Blocking calls run in a
dedicated thread pool so the Kopf event loop never blocks.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from dspark_operator.constants import API_VERSION, FIELD_MANAGER, KIND, PLURAL

JsonObj = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the API server (status 0: no answer at all)."""

    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})


@dataclass(frozen=True)
class KindInfo:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def collection(self, namespace: str | None) -> str:
        """The collection path, e.g. /apis/apps/v1/namespaces/ns/deployments."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace is not None:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def item(self, namespace: str | None, name: str) -> str:
        """The object path."""
        return f"{self.collection(namespace)}/{name}"


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("v1", "ServiceAccount", "serviceaccounts"),
        KindInfo("v1", "ConfigMap", "configmaps"),
        KindInfo("v1", "Service", "services"),
        KindInfo("v1", "Pod", "pods"),
        KindInfo("v1", "Node", "nodes", namespaced=False),
        KindInfo("v1", "Namespace", "namespaces", namespaced=False),
        KindInfo("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        KindInfo("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", namespaced=False),
        KindInfo("v1", "Event", "events"),
        KindInfo("apps/v1", "Deployment", "deployments"),
        KindInfo("apps/v1", "StatefulSet", "statefulsets"),
        KindInfo("batch/v1", "Job", "jobs"),
        KindInfo("rbac.authorization.k8s.io/v1", "Role", "roles"),
        KindInfo("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
        KindInfo("monitoring.coreos.com/v1", "PodMonitor", "podmonitors"),
        KindInfo("kueue.x-k8s.io/v1beta2", "Workload", "workloads"),
        KindInfo("kueue.x-k8s.io/v1beta2", "LocalQueue", "localqueues"),
        KindInfo(API_VERSION, KIND, PLURAL),
    )
}


def kind_of(manifest: Mapping[str, Any]) -> KindInfo:
    """The KindInfo of a manifest (by its kind)."""
    return KINDS[str(manifest["kind"])]


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> k8s_client.Configuration:
    """Credentials: in-cluster when running in a pod (and no kubeconfig is given), else a kubeconfig."""
    cfg = k8s_client.Configuration()
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    return cfg


class KubeApi:
    """Asynchronous REST calls on top of a `kubernetes.client.ApiClient`."""

    def __init__(
        self,
        configuration: k8s_client.Configuration,
        *,
        max_workers: int = 16,
        request_timeout: float = 30.0,
    ) -> None:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, max_workers)
        self._client = k8s_client.ApiClient(configuration)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dspark-kube")
        self._timeout = request_timeout

    def close(self) -> None:
        """Stop the thread pool and close connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
    ) -> JsonObj | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            serialized = self._client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query) or None,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(*serialized, _request_timeout=self._timeout)
            raw = response.read()
        except k8s_client.ApiException as exc:  # transport-level failures (TLS, ...)
            raise ApiError(int(exc.status or 0), str(exc.reason), str(exc.body or exc.reason)) from exc
        except Exception as exc:  # connection refused, timeouts, ...
            raise ApiError(0, type(exc).__name__, str(exc)) from exc
        data: Any = None
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"message": raw.decode("utf-8", "replace")[:500]}
        if not 200 <= response.status <= 299:
            message = data.get("message", "") if isinstance(data, dict) else ""
            reason = data.get("reason", "") if isinstance(data, dict) else ""
            body = data if isinstance(data, dict) else None
            raise ApiError(response.status, reason or str(response.reason), message, body)
        return data if isinstance(data, dict) else None

    async def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
    ) -> JsonObj | None:
        """One REST call; returns the decoded JSON object (None when empty); raises ApiError."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, method, path, query, body, content_type)

    async def get(self, path: str) -> JsonObj | None:
        """GET an object; None when it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def list(self, path: str, label_selector: str | None = None) -> list[JsonObj]:
        """The items of a collection (one page; our collections are small)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        data = await self.request("GET", path, query)
        return list((data or {}).get("items") or [])

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> JsonObj | None:
        """Server-side apply with the operator's field manager."""
        info = kind_of(manifest)
        meta = manifest["metadata"]
        return await self.request(
            "PATCH",
            info.item(meta.get("namespace"), meta["name"]),
            [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")],
            dict(manifest),
            "application/apply-patch+yaml",
        )

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonObj | None:
        """JSON merge patch."""
        return await self.request(
            "PATCH", path, [("fieldManager", FIELD_MANAGER)], dict(patch), "application/merge-patch+json"
        )

    async def delete(
        self, path: str, *, uid: str | None = None, propagation: str = "Background", grace_seconds: int | None = None
    ) -> bool:
        """Delete an object (only if its uid matches, when given); False when it was already gone or replaced."""
        body: JsonObj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self.request("DELETE", path, body=body, content_type="application/json")
        except ApiError as err:
            if err.status in (404, 409):
                return False
            raise
        return True

    async def api_group_exists(self, group_version: str) -> bool:
        """Whether the API server serves a group/version (e.g. monitoring.coreos.com/v1)."""
        try:
            return await self.get(f"/apis/{group_version}") is not None
        except ApiError:
            return False
