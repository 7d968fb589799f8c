"""All children of a job, in apply order."""

from __future__ import annotations

from dspark_operator.builders.common import BuildContext, Manifest
from dspark_operator.builders.config import build_config_map
from dspark_operator.builders.inference import build_inference_deployment, build_inference_service
from dspark_operator.builders.monitoring import build_pod_monitor
from dspark_operator.builders.mooncake import build_mooncake_deployment, build_mooncake_service
from dspark_operator.builders.rbac import build_role, build_role_binding, build_service_account
from dspark_operator.builders.trainer import build_trainer_service, build_trainer_statefulset

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet"})


def build_children(ctx: BuildContext, *, scaled_up: bool = True, trainer_up: bool = True) -> list[Manifest]:
    """Every child manifest of the job: RBAC, config, Services and workloads (replicas 0 if not scaled_up; the
    trainer at 0 also while not trainer_up, e.g. during data regeneration). The regeneration Job is not among them:
    it is created once, when wanted (see :mod:`dspark_operator.builders.regenerate_job`)."""
    zero = None if scaled_up else 0
    children = [
        build_service_account(ctx),
        build_role(ctx),
        build_role_binding(ctx),
        build_config_map(ctx),
        build_mooncake_service(ctx),
        build_mooncake_deployment(ctx, replicas=1 if scaled_up else 0),
        build_inference_service(ctx),
        build_inference_deployment(ctx, replicas=zero),
        build_trainer_service(ctx),
        build_trainer_statefulset(ctx, replicas=zero if trainer_up else 0),
    ]
    if ctx.spec.metrics.enabled and ctx.spec.metrics.pod_monitor and ctx.podmonitor_available:
        children.append(build_pod_monitor(ctx))
    return children


def workload_replicas(manifest: Manifest) -> int | None:
    """spec.replicas of a workload manifest (None for other kinds)."""
    if manifest.get("kind") not in WORKLOAD_KINDS:
        return None
    return int(manifest["spec"]["replicas"])
