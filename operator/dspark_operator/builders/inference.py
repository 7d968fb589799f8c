"""SGLang inference servers with the dspark hidden-state capture plugin: Deployment + Service."""

from __future__ import annotations

from typing import Any

from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    container_resources,
    hf_token_env,
    metadata,
    mooncake_env,
    pod_scheduling,
    security_context,
    selector_labels,
    with_hash,
    workload_labels,
)
from dspark_operator.constants import (
    COMPONENT_INFERENCE,
    CONFIG_MOUNT,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    MODELS_MOUNT,
    TRAINER_CONFIG_FILE,
)

CAPTURE_PLUGIN = "dspark_capture"


def sglang_args(ctx: BuildContext) -> list[str]:
    """Arguments of `python3 -m sglang.launch_server`."""
    inf = ctx.spec.inference
    target = ctx.spec.target
    args = ["--model-path", target.model]
    if target.revision:
        args += ["--revision", target.revision]
    args += [
        "--dtype",
        target.dtype,
        "--tp-size",
        str(inf.tensor_parallel_size),
        "--host",
        "0.0.0.0",
        "--port",
        str(inf.port),
        # Hidden-state capture needs whole-sequence prefills and no prefix reuse.
        "--chunked-prefill-size",
        "-1",
        "--disable-radix-cache",
        "--enable-metrics",
    ]
    if inf.mem_fraction_static is not None:
        args += ["--mem-fraction-static", str(inf.mem_fraction_static)]
    args += list(inf.extra_args)
    return args


def build_inference_deployment(ctx: BuildContext, *, replicas: int | None = None) -> Manifest:
    """The SGLang Deployment (replicas from the spec, or 0 when the job is scaled down)."""
    inf = ctx.spec.inference
    gpus = inf.gpus if inf.gpus is not None else inf.tensor_parallel_size
    env: list[dict[str, Any]] = [
        {"name": "SGLANG_PLUGINS", "value": CAPTURE_PLUGIN},
        {"name": "DSPARK_CONFIG", "value": f"{CONFIG_MOUNT}/{TRAINER_CONFIG_FILE}"},
        {"name": ENV_JOB_NAME, "value": ctx.name},
        {"name": ENV_JOB_NAMESPACE, "value": ctx.namespace},
        *mooncake_env(ctx),
        *hf_token_env(ctx),
        *[{"name": e.name, "value": e.value} for e in inf.env],
    ]
    volume_mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": inf.shm_size}},
        {"name": "config", "configMap": {"name": ctx.names.config}},
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
        "name": "sglang",
        "image": ctx.inference_image if inf.image is None else inf.image,
        "command": ["python3", "-m", "sglang.launch_server"],
        "args": sglang_args(ctx),
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
