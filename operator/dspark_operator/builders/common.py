"""Names, labels, owner references and pod-level settings shared by every builder."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dspark_trainer.config import TransportProtocol
from dspark_trainer.config.job import JOB_CONFIG_DIR, JOB_CONFIG_ENV, JOB_CONFIG_PATH, POD_IP_ENV

from dspark_operator import __version__
from dspark_operator.api.podtemplate import PodTemplateOverride
from dspark_operator.api.spec import DSparkTrainingJobSpec, ResourceRequirements
from dspark_operator.constants import (
    ANNOTATION_SPEC_HASH,
    API_VERSION,
    APP_NAME,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_JOB_NAME,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_VERSION,
    MANAGED_BY,
    MODELS_MOUNT,
)

Manifest = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ChildNames:
    """Names of a job's children (all `<job>-<suffix>`)."""

    mooncake: str
    inference: str
    trainer: str
    config: str
    service_account: str
    role: str
    role_binding: str
    pod_monitor: str


def child_names(job_name: str) -> ChildNames:
    """The deterministic names of the children of job `job_name`."""
    return ChildNames(
        mooncake=f"{job_name}-mooncake",
        inference=f"{job_name}-inference",
        trainer=f"{job_name}-trainer",
        config=f"{job_name}-config",
        service_account=f"{job_name}-trainer",
        role=f"{job_name}-trainer",
        role_binding=f"{job_name}-trainer",
        pod_monitor=f"{job_name}",
    )


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """Everything a builder may depend on."""

    name: str
    namespace: str
    uid: str
    spec: DSparkTrainingJobSpec
    trainer_image: str
    inference_image: str
    podmonitor_available: bool = False
    rdma_available: bool = False  # whether the cluster's nodes advertise transport.rdmaResourceName

    @property
    def names(self) -> ChildNames:
        """Child names of this job."""
        return child_names(self.name)

    @property
    def protocol(self) -> TransportProtocol:
        """The transport protocol of the job: the spec's, with auto decided by the nodes' RDMA resources."""
        chosen = TransportProtocol(self.spec.transport.protocol)
        if chosen != TransportProtocol.AUTO:
            return chosen
        return TransportProtocol.RDMA if self.rdma_available else TransportProtocol.TCP

    @property
    def rdma(self) -> bool:
        """Whether the transport uses RDMA."""
        return self.protocol == TransportProtocol.RDMA

    def svc_host(self, service: str) -> str:
        """Cluster DNS name of one of this job's Services."""
        return f"{service}.{self.namespace}.svc"


def selector_labels(ctx: BuildContext, component: str) -> dict[str, str]:
    """The stable labels used in selectors (never change for a job's lifetime)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: ctx.name, LABEL_COMPONENT: component}


def labels(ctx: BuildContext, component: str) -> dict[str, str]:
    """The full label set of a child."""
    out = {
        **selector_labels(ctx, component),
        LABEL_PART_OF: APP_NAME,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_VERSION: __version__,
        LABEL_JOB_NAME: ctx.name,
    }
    return out


def workload_labels(ctx: BuildContext, component: str) -> dict[str, str]:
    """Labels for workloads and their pods. No Kueue queue label: with spec.scheduling.queueName the job is one
    Kueue Workload of its own (dspark_operator.queueing), and Kueue's pod, Deployment or StatefulSet integrations
    must not queue its pods a second time."""
    return labels(ctx, component)


def owner_reference(ctx: BuildContext) -> dict[str, Any]:
    """The controller owner reference to the job (garbage collection, blockOwnerDeletion)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ctx.name,
        "uid": ctx.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(ctx: BuildContext, name: str, component: str, *, workload: bool = False) -> dict[str, Any]:
    """Object metadata of a child."""
    return {
        "name": name,
        "namespace": ctx.namespace,
        "labels": workload_labels(ctx, component) if workload else labels(ctx, component),
        "ownerReferences": [owner_reference(ctx)],
    }


def pod_scheduling(ctx: BuildContext) -> dict[str, Any]:
    """Pod spec fields from spec.scheduling."""
    sched = ctx.spec.scheduling
    out: dict[str, Any] = {}
    if sched.node_selector:
        out["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        out["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in sched.tolerations]
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    if sched.scheduler_name:
        out["schedulerName"] = sched.scheduler_name
    return out


def container_resources(
    ctx: BuildContext, base: ResourceRequirements, *, gpus: int, rdma: bool
) -> dict[str, dict[str, Any]]:
    """requests/limits: the user's CPU/memory plus GPUs and RDMA devices (extended resources: requests == limits)."""
    requests: dict[str, Any] = dict(base.requests)
    limits: dict[str, Any] = dict(base.limits)
    extended: dict[str, int] = {}
    if gpus > 0:
        extended[ctx.spec.scheduling.gpu_resource_name] = gpus
    if rdma:
        extended[ctx.spec.transport.rdma_resource_name] = ctx.spec.transport.rdma_resource_count
    requests.update(extended)
    limits.update(extended)
    out: dict[str, dict[str, Any]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


POD_USER = 1000
"""The uid/gid of the trainer and serving images' user (their Dockerfile's USER)."""
RDMA_CAPABILITIES = ("IPC_LOCK",)
"""The only capability a pod gets, and only with RDMA: registering (pinning) memory for the NICs."""


def security_context(*, rdma: bool) -> dict[str, Any]:
    """Container security context: the Pod Security Standard `restricted` (no privilege escalation, every
    capability dropped); with RDMA only IPC_LOCK is added back (memory registration)."""
    caps: dict[str, Any] = {"drop": ["ALL"]}
    if rdma:
        caps["add"] = list(RDMA_CAPABILITIES)
    return {"privileged": False, "allowPrivilegeEscalation": False, "capabilities": caps}


def pod_security_context() -> dict[str, Any]:
    """Pod security context of every pod of a job: non-root (the images' user), the runtime's default seccomp
    profile, and volumes group-owned by that user so the output volume is writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_USER,
        "runAsGroup": POD_USER,
        "fsGroup": POD_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_template(
    ctx: BuildContext,
    component: str,
    *,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    override: PodTemplateOverride | None = None,
    service_account: str | None = None,
    scheduling: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The pod template of a role, finished in one place: the workload labels, the containers and volumes, no
    service links, the restricted pod security context, `spec.scheduling` (or `scheduling`), a ServiceAccount with
    its token only when `service_account` is given, any other pod `fields`, then the role's `override` merged."""
    spec: dict[str, Any] = {
        "containers": containers,
        "volumes": volumes,
        "automountServiceAccountToken": service_account is not None,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        **fields,
        **(pod_scheduling(ctx) if scheduling is None else scheduling),
    }
    if service_account is not None:
        spec["serviceAccountName"] = service_account
    return merge_pod_override({"metadata": {"labels": workload_labels(ctx, component)}, "spec": spec}, override)


def workload(
    ctx: BuildContext, kind: str, name: str, component: str, *, replicas: int, template: dict[str, Any], **spec: Any
) -> Manifest:
    """The apps/v1 ``kind`` (Deployment, StatefulSet) ``name`` of ``component``: ``replicas``, the other ``spec``
    fields, the component's selector and the pod ``template``; hashed."""
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": metadata(ctx, name, component, workload=True),
            "spec": {
                "replicas": replicas,
                **spec,
                "selector": {"matchLabels": selector_labels(ctx, component)},
                "template": template,
            },
        }
    )


def service(ctx: BuildContext, name: str, component: str, ports: list[dict[str, Any]], **spec: Any) -> Manifest:
    """The Service ``name`` of ``component``'s pods: the given ``spec`` fields, the selector and ``ports``; hashed."""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(ctx, name, component),
            "spec": {**spec, "selector": selector_labels(ctx, component), "ports": ports},
        }
    )


def container_port(name: str, port: int) -> dict[str, Any]:
    """A named TCP container port."""
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def service_port(name: str, port: int) -> dict[str, Any]:
    """A TCP Service port onto the container port of the same name."""
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


def merge_pod_override(template: Mapping[str, Any], override: PodTemplateOverride | None) -> dict[str, Any]:
    """`template` with a role's partial pod template merged (a new dict). Additive: labels and annotations are
    added (the operator's labels win), volumes appended, envFrom and volumeMounts appended to the container of the
    same name, securityContext fields set over the operator's; imagePullSecrets, serviceAccountName and affinity
    are set. What may be overridden at all is checked before (`api.checks.check_pod_templates`)."""
    out = copy.deepcopy(dict(template))
    if override is None:
        return out
    meta, spec = out.setdefault("metadata", {}), out["spec"]
    if override.metadata.labels:
        meta["labels"] = {**override.metadata.labels, **meta.get("labels", {})}
    if override.metadata.annotations:
        meta["annotations"] = {**meta.get("annotations", {}), **override.metadata.annotations}
    extra = override.spec
    if extra.image_pull_secrets:
        spec["imagePullSecrets"] = [ref.to_wire() for ref in extra.image_pull_secrets]
    if extra.service_account_name:
        spec["serviceAccountName"] = extra.service_account_name
    if extra.affinity:
        spec["affinity"] = copy.deepcopy(extra.affinity)
    if extra.volumes:
        spec["volumes"] = [*spec.get("volumes", []), *copy.deepcopy(extra.volumes)]
    if extra.security_context is not None:
        spec["securityContext"] = {**spec.get("securityContext", {}), **_non_empty(extra.security_context.to_wire())}
    for part in extra.containers:
        for container in spec["containers"]:
            if container["name"] == part.name:
                if part.env_from:
                    container["envFrom"] = [*container.get("envFrom", []), *(e.to_wire() for e in part.env_from)]
                if part.volume_mounts:
                    mounts = [m.to_wire() for m in part.volume_mounts]
                    container["volumeMounts"] = [*container.get("volumeMounts", []), *mounts]
    return out


def _non_empty(wire: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wire.items() if v not in ([], {})}


def job_env(ctx: BuildContext) -> list[dict[str, Any]]:
    """The contract's environment, the same in every pod: where the job config is, and the pod's IP (the
    address its Mooncake client advertises)."""
    return [
        {"name": JOB_CONFIG_ENV, "value": JOB_CONFIG_PATH},
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def config_volume(ctx: BuildContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of the job's ConfigMap at /etc/dspark, in every pod."""
    return (
        {"name": "config", "configMap": {"name": ctx.names.config}},
        {"name": "config", "mountPath": JOB_CONFIG_DIR, "readOnly": True},
    )


def models_volume(ctx: BuildContext) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(volume, volumeMount)] of target.modelClaimName read-only at /models, or [] without one."""
    claim = ctx.spec.target.model_claim_name
    if not claim:
        return []
    return [
        (
            {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
            {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
        )
    ]


def hf_token_env(ctx: BuildContext) -> list[dict[str, Any]]:
    """HF_TOKEN from the referenced Secret, if any."""
    ref = ctx.spec.target.hf_token_secret_ref
    if ref is None:
        return []
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """A stable hash of a manifest (without the hash annotation itself)."""
    data = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    meta = data.get("metadata", {})
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(ANNOTATION_SPEC_HASH, None)
        if not annotations:
            del meta["annotations"]
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def with_hash(manifest: Manifest) -> Manifest:
    """The manifest with its spec-hash annotation set (used to skip no-op applies)."""
    digest = spec_hash(manifest)
    manifest.setdefault("metadata", {}).setdefault("annotations", {})[ANNOTATION_SPEC_HASH] = digest
    return manifest
