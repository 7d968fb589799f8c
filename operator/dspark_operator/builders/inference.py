"""The capture servers (SGLang with the dspark plugin, or the reference engine): Deployment + Service."""

from __future__ import annotations

from typing import Any

from dspark_trainer.config import InferenceEngine
from dspark_trainer.config.job import JOB_CONFIG_PATH

from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    config_volume,
    container_resources,
    hf_token_env,
    job_env,
    metadata,
    pod_scheduling,
    pod_security_context,
    security_context,
    selector_labels,
    with_hash,
    workload_labels,
)
from dspark_operator.constants import COMPONENT_INFERENCE, MODELS_MOUNT

CAPTURE_COMMAND = ["dspark", "capture-server"]


def inference_gpus(ctx: BuildContext) -> int:
    """GPUs per capture server: the spec's, else tensorParallelSize for SGLang and none for the reference engine."""
    inf = ctx.spec.inference
    if inf.gpus is not None:
        return inf.gpus
    return inf.tensor_parallel_size if inf.engine == InferenceEngine.SGLANG else 0


def inference_image(ctx: BuildContext) -> str:
    """The capture servers' image: the spec's, else the operator's serving (SGLang) or trainer (reference) image."""
    inf = ctx.spec.inference
    if inf.image is not None:
        return inf.image
    return ctx.inference_image if inf.engine == InferenceEngine.SGLANG else ctx.trainer_image


def build_inference_deployment(ctx: BuildContext, *, replicas: int | None = None) -> Manifest:
    """The SGLang Deployment (replicas from the spec, or 0 when the job is scaled down)."""
    inf = ctx.spec.inference
    gpus = inference_gpus(ctx)
    env: list[dict[str, Any]] = [
        *job_env(ctx),
        *hf_token_env(ctx),
        *[{"name": e.name, "value": e.value} for e in inf.env],
    ]
    config_vol, config_mount = config_volume(ctx)
    volume_mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}, config_mount]
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": inf.shm_size}},
        config_vol,
    ]
    if ctx.spec.target.model_claim_name:
        volume_mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": ctx.spec.target.model_claim_name, "readOnly": True},
            }
        )
    container: dict[str, Any] = {
        "name": "capture",
        "image": inference_image(ctx),
        # The capture-server role reads the job config and starts inference.engine (SGLang or reference).
        "command": [*CAPTURE_COMMAND, "--config", JOB_CONFIG_PATH],
        "env": env,
        "ports": [{"name": "http", "containerPort": inf.port, "protocol": "TCP"}],
        "resources": container_resources(ctx, inf.resources, gpus=gpus, rdma=ctx.rdma),
        "securityContext": security_context(rdma=ctx.rdma),
        "volumeMounts": volume_mounts,
        # Loading a large target takes minutes: the startup probe allows up to 30 minutes.
        "startupProbe": {
            "httpGet": {"path": "/health_generate", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 30,
            "failureThreshold": 180,
        },
        "readinessProbe": {
            "httpGet": {"path": "/health_generate", "port": "http"},
            "periodSeconds": 15,
            "timeoutSeconds": 30,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 15,
            "timeoutSeconds": 10,
            "failureThreshold": 4,
        },
    }
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(ctx, ctx.names.inference, COMPONENT_INFERENCE, workload=True),
            "spec": {
                "replicas": inf.replicas if replicas is None else replicas,
                "selector": {"matchLabels": selector_labels(ctx, COMPONENT_INFERENCE)},
                "template": {
                    "metadata": {"labels": workload_labels(ctx, COMPONENT_INFERENCE)},
                    "spec": {
                        "containers": [container],
                        "volumes": volumes,
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": pod_security_context(),
                        **pod_scheduling(ctx),
                    },
                },
            },
        }
    )


def build_inference_service(ctx: BuildContext) -> Manifest:
    """ClusterIP Service the trainer ranks send capture requests to."""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(ctx, ctx.names.inference, COMPONENT_INFERENCE),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(ctx, COMPONENT_INFERENCE),
                "ports": [{"name": "http", "port": ctx.spec.inference.port, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )
