"""Mooncake master: Deployment (1 replica) + Service (rpc, HTTP metadata, metrics). The master runs
`dspark mooncake-master`, which listens on the ports of the job config's transport section."""

from __future__ import annotations

from typing import Any

from dspark_trainer.config.job import JOB_CONFIG_ENV, JOB_CONFIG_PATH

from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    config_volume,
    container_resources,
    metadata,
    pod_template,
    security_context,
    selector_labels,
    with_hash,
)
from dspark_operator.constants import (
    COMPONENT_MOONCAKE,
    MOONCAKE_METADATA_PORT,
    MOONCAKE_METRICS_PORT,
    MOONCAKE_RPC_PORT,
)


def build_mooncake_deployment(ctx: BuildContext, *, replicas: int = 1) -> Manifest:
    """The Mooncake master Deployment (replicas 1, or 0 when the job is scaled down)."""
    image = ctx.spec.transport.master_image or ctx.trainer_image
    config_vol, config_mount = config_volume(ctx)
    resources = container_resources(ctx, ctx.spec.transport.master_resources, gpus=0, rdma=False)
    container: dict[str, Any] = {
        "name": "mooncake-master",
        "image": image,
        # The master role reads its ports from the job config (the addresses its clients are given).
        "command": ["dspark", "mooncake-master", "--config", JOB_CONFIG_PATH],
        "env": [{"name": JOB_CONFIG_ENV, "value": JOB_CONFIG_PATH}],
        "volumeMounts": [config_mount],
        "ports": [
            {"name": "rpc", "containerPort": MOONCAKE_RPC_PORT, "protocol": "TCP"},
            {"name": "http-metadata", "containerPort": MOONCAKE_METADATA_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": MOONCAKE_METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"tcpSocket": {"port": "rpc"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "rpc"}, "periodSeconds": 10, "failureThreshold": 6},
        "securityContext": security_context(rdma=False),
    }
    if resources:
        container["resources"] = resources
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(ctx, ctx.names.mooncake, COMPONENT_MOONCAKE, workload=True),
            "spec": {
                "replicas": replicas,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector_labels(ctx, COMPONENT_MOONCAKE)},
                "template": pod_template(
                    ctx,
                    COMPONENT_MOONCAKE,
                    containers=[container],
                    volumes=[config_vol],
                    override=ctx.spec.transport.master_pod_template,
                ),
            },
        }
    )


def build_mooncake_service(ctx: BuildContext) -> Manifest:
    """ClusterIP Service of the Mooncake master."""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(ctx, ctx.names.mooncake, COMPONENT_MOONCAKE),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(ctx, COMPONENT_MOONCAKE),
                "ports": [
                    {"name": "rpc", "port": MOONCAKE_RPC_PORT, "targetPort": "rpc", "protocol": "TCP"},
                    {
                        "name": "http-metadata",
                        "port": MOONCAKE_METADATA_PORT,
                        "targetPort": "http-metadata",
                        "protocol": "TCP",
                    },
                    {"name": "metrics", "port": MOONCAKE_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
                ],
            },
        }
    )
