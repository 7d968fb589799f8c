"""Mooncake master: Deployment (1 replica) + Service (rpc, HTTP metadata, metrics)."""

from __future__ import annotations

from typing import Any

from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    metadata,
    pod_scheduling,
    selector_labels,
    with_hash,
    workload_labels,
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
    res = ctx.spec.transport.master_resources
    resources: dict[str, Any] = {}
    if res.requests:
        resources["requests"] = dict(res.requests)
    if res.limits:
        resources["limits"] = dict(res.limits)
    container: dict[str, Any] = {
        "name": "mooncake-master",
        "image": image,
        "command": ["mooncake_master"],
        "args": [
            f"--rpc_port={MOONCAKE_RPC_PORT}",
            "--enable_http_metadata_server=true",
            "--http_metadata_server_host=0.0.0.0",
            f"--http_metadata_server_port={MOONCAKE_METADATA_PORT}",
            "--enable_metric_reporting=true",
            f"--metrics_port={MOONCAKE_METRICS_PORT}",
        ],
        "ports": [
            {"name": "rpc", "containerPort": MOONCAKE_RPC_PORT, "protocol": "TCP"},
            {"name": "http-metadata", "containerPort": MOONCAKE_METADATA_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": MOONCAKE_METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"tcpSocket": {"port": "rpc"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "rpc"}, "periodSeconds": 10, "failureThreshold": 6},
        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False},
    }
    if resources:
        container["resources"] = resources
    pod_labels = workload_labels(ctx, COMPONENT_MOONCAKE)
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(ctx, ctx.names.mooncake, COMPONENT_MOONCAKE, workload=True),
            "spec": {
                "replicas": replicas,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector_labels(ctx, COMPONENT_MOONCAKE)},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "containers": [container],
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        **pod_scheduling(ctx),
                    },
                },
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
