"""PodMonitor (Prometheus Operator) scraping the trainer's rank 0, SGLang and the Mooncake master."""

from __future__ import annotations

from dspark_operator.builders.common import BuildContext, Manifest, metadata, with_hash
from dspark_operator.constants import (
    COMPONENT_MONITORING,
    LABEL_INSTANCE,
    LABEL_NAME,
    PODMONITOR_GROUP,
    PODMONITOR_VERSION,
)


def build_pod_monitor(ctx: BuildContext) -> Manifest:
    """One PodMonitor for all the job's pods: port `metrics` (trainer, Mooncake) and `http` (SGLang)."""
    interval = ctx.spec.metrics.interval
    # Only trainer rank 0 serves metrics: drop the other trainer pods.
    drop_other_ranks = {
        "sourceLabels": [
            "__meta_kubernetes_pod_label_app_kubernetes_io_component",
            "__meta_kubernetes_pod_label_apps_kubernetes_io_pod_index",
        ],
        "regex": "trainer;[1-9][0-9]*",
        "action": "drop",
    }
    add_job = {"targetLabel": "dspark_job", "replacement": ctx.name, "action": "replace"}
    add_component = {
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
        "targetLabel": "component",
        "action": "replace",
    }
    return with_hash(
        {
            "apiVersion": f"{PODMONITOR_GROUP}/{PODMONITOR_VERSION}",
            "kind": "PodMonitor",
            "metadata": metadata(ctx, ctx.names.pod_monitor, COMPONENT_MONITORING),
            "spec": {
                "selector": {"matchLabels": {LABEL_NAME: "dspark", LABEL_INSTANCE: ctx.name}},
                "podMetricsEndpoints": [
                    {
                        "port": "metrics",
                        "path": "/metrics",
                        "interval": interval,
                        "relabelings": [drop_other_ranks, add_job, add_component],
                    },
                    {"port": "http", "path": "/metrics", "interval": interval, "relabelings": [add_job, add_component]},
                ],
            },
        }
    )
