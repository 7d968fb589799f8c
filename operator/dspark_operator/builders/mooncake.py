"""Mooncake master: Deployment (1 replica) + Service (rpc, HTTP metadata, metrics). The master runs
`dspark mooncake-master`, which listens on the ports of the job config's transport section."""

from __future__ import annotations

from typing import Any

from dspark_trainer.config.job import JOB_CONFIG_ENV, JOB_CONFIG_PATH

from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    config_volume,
    container_port,
    container_resources,
    pod_template,
    security_context,
    service,
    service_port,
    workload,
)
from dspark_operator.constants import (
    COMPONENT_MOONCAKE,
    MOONCAKE_METADATA_PORT,
    MOONCAKE_METRICS_PORT,
    MOONCAKE_RPC_PORT,
)

MOONCAKE_PORTS = (
    ("rpc", MOONCAKE_RPC_PORT),
    ("http-metadata", MOONCAKE_METADATA_PORT),
    ("metrics", MOONCAKE_METRICS_PORT),
)
"""The master's named ports: its container's and its Service's."""


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
        "ports": [container_port(name, port) for name, port in MOONCAKE_PORTS],
        "readinessProbe": {"tcpSocket": {"port": "rpc"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "rpc"}, "periodSeconds": 10, "failureThreshold": 6},
        "securityContext": security_context(rdma=False),
    }
    if resources:
        container["resources"] = resources
    return workload(
        ctx,
        "Deployment",
        ctx.names.mooncake,
        COMPONENT_MOONCAKE,
        replicas=replicas,
        strategy={"type": "Recreate"},
        template=pod_template(
            ctx,
            COMPONENT_MOONCAKE,
            containers=[container],
            volumes=[config_vol],
            override=ctx.spec.transport.master_pod_template,
        ),
    )


def build_mooncake_service(ctx: BuildContext) -> Manifest:
    """ClusterIP Service of the Mooncake master."""
    ports = [service_port(name, port) for name, port in MOONCAKE_PORTS]
    return service(ctx, ctx.names.mooncake, COMPONENT_MOONCAKE, ports, type="ClusterIP")
