"""The trainer gang: a StatefulSet (Parallel, one pod per node, OnDelete updates) + headless Service.

Every pod runs `torchrun --nnodes N --nproc-per-node G --node-rank <ordinal>` with the rendezvous at
pod 0 of the headless Service (port 29500). The ordinal comes from the pod-index label
(`apps.kubernetes.io/pod-index`, via the downward API) or, on older clusters, the pod name suffix.
Updates use `OnDelete`: the operator restarts the whole gang itself, never one pod at a time.
"""

from __future__ import annotations

import shlex
from typing import Any

from dspark_trainer.config.job import JOB_CONFIG_PATH, POD_INDEX_ENV, POD_NAME_ENV

from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    config_volume,
    container_port,
    container_resources,
    hf_token_env,
    job_env,
    models_volume,
    pod_template,
    security_context,
    service,
    service_port,
    workload,
)
from dspark_operator.constants import (
    COMPONENT_TRAINER,
    DATA_MOUNT,
    LABEL_POD_INDEX,
    PUBLISH_CREDENTIALS_MOUNT,
    TRAINER_RDZV_PORT,
)

TRAINER_MODULE = "dspark_trainer.cli"


def rendezvous_host(ctx: BuildContext) -> str:
    """DNS name of trainer pod 0 through the headless Service."""
    return f"{ctx.names.trainer}-0.{ctx.names.trainer}.{ctx.namespace}.svc"


def torchrun_args(ctx: BuildContext) -> list[str]:
    """torchrun's own arguments, without the node rank (which each pod adds from its ordinal)."""
    tr = ctx.spec.trainer
    return [
        "torchrun",
        "--nnodes",
        str(tr.nodes),
        "--nproc-per-node",
        str(max(tr.gpus_per_node, 1)),
        "--master-addr",
        rendezvous_host(ctx),
        "--master-port",
        str(TRAINER_RDZV_PORT),
    ]


def trainer_args() -> list[str]:
    """What torchrun runs in every process: the trainer on the mounted job config."""
    return ["-m", TRAINER_MODULE, "train", "--config", JOB_CONFIG_PATH]


def _shell_words(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def trainer_script(ctx: BuildContext) -> str:
    """The shell entry point of a trainer pod.

    It derives the node rank, runs torchrun (forwarding SIGTERM so the trainer can checkpoint) and,
    after a successful run, idles until the operator scales the gang down (so a finished run is not
    restarted by the pod's restartPolicy: Always).
    """
    launch = f'{_shell_words(torchrun_args(ctx))} --node-rank "$rank" {_shell_words(trainer_args())}'
    return "\n".join(
        [
            "set -u",
            'child=""',
            'term=""',
            'trap \'term=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null\' TERM INT',
            f'rank="${{{POD_INDEX_ENV}:-}}"',
            f'[ -n "$rank" ] || rank="${{{POD_NAME_ENV}##*-}}"',
            f"{launch} &",
            "child=$!",
            # A SIGTERM that arrived before the child's pid was known is passed on now.
            '[ -z "$term" ] || kill -TERM "$child" 2>/dev/null',
            'wait "$child"; rc=$?',
            'while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done',
            '[ "$rc" -eq 0 ] || exit "$rc"',
            'echo "dspark: training finished; idle until the operator scales the trainer down"',
            "trap 'exit 0' TERM INT",
            '[ -z "$term" ] || exit 0',
            "while :; do sleep 5 & wait $!; done",
        ]
    )


def trainer_ports(ctx: BuildContext) -> list[tuple[str, int]]:
    """The trainer pods' named ports (their container's and the headless Service's): rendezvous, metrics if on."""
    ports = [("rdzv", TRAINER_RDZV_PORT)]
    if ctx.spec.metrics.enabled:
        ports.append(("metrics", ctx.spec.metrics.port))
    return ports


def build_trainer_statefulset(ctx: BuildContext, *, replicas: int | None = None) -> Manifest:
    """The trainer StatefulSet (replicas = nodes, or 0 when the job is scaled down)."""
    tr = ctx.spec.trainer
    env: list[dict[str, Any]] = [
        *job_env(ctx),
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": POD_INDEX_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{LABEL_POD_INDEX}']"}}},
        *hf_token_env(ctx),
    ]
    if ctx.rdma and ctx.spec.transport.device_names:
        env.append({"name": "NCCL_IB_HCA", "value": ctx.spec.transport.device_names})
    env += [{"name": e.name, "value": e.value} for e in tr.env]

    out = tr.output
    config_vol, config_mount = config_volume(ctx)
    volume_mounts: list[dict[str, Any]] = [
        config_mount,
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "output", "mountPath": out.mount_path},
    ]
    volumes: list[dict[str, Any]] = [
        config_vol,
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        (
            {"name": "output", "persistentVolumeClaim": {"claimName": out.claim_name}}
            if out.claim_name
            else {"name": "output", "emptyDir": {}}
        ),
    ]
    if ctx.spec.dataset.claim_name:
        volume_mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": ctx.spec.dataset.claim_name, "readOnly": True}}
        )
    for volume, mount in models_volume(ctx):
        volumes.append(volume)
        volume_mounts.append(mount)
    if tr.export.credentials_secret:
        volume_mounts.append({"name": "publish-credentials", "mountPath": PUBLISH_CREDENTIALS_MOUNT, "readOnly": True})
        # Group-readable: the trainer runs as non-root with the pod's fsGroup.
        volumes.append({"name": "publish-credentials",
                        "secret": {"secretName": tr.export.credentials_secret, "defaultMode": 0o440}})
    container: dict[str, Any] = {
        "name": "trainer",
        "image": tr.image or ctx.trainer_image,
        "command": ["/bin/sh", "-c", trainer_script(ctx)],
        "env": env,
        "ports": [container_port(name, port) for name, port in trainer_ports(ctx)],
        "resources": container_resources(ctx, tr.resources, gpus=tr.gpus_per_node, rdma=ctx.rdma),
        "securityContext": security_context(rdma=ctx.rdma),
        "volumeMounts": volume_mounts,
    }
    return workload(
        ctx,
        "StatefulSet",
        ctx.names.trainer,
        COMPONENT_TRAINER,
        replicas=tr.nodes if replicas is None else replicas,
        serviceName=ctx.names.trainer,
        podManagementPolicy="Parallel",
        updateStrategy={"type": "OnDelete"},
        template=pod_template(
            ctx,
            COMPONENT_TRAINER,
            containers=[container],
            volumes=volumes,
            override=tr.pod_template,
            service_account=ctx.names.service_account,
            restartPolicy="Always",
            terminationGracePeriodSeconds=tr.termination_grace_period_seconds,
        ),
    )


def build_trainer_service(ctx: BuildContext) -> Manifest:
    """Headless Service giving each trainer pod a stable DNS name (also before it is ready)."""
    ports = [service_port(name, port) for name, port in trainer_ports(ctx)]
    return service(ctx, ctx.names.trainer, COMPONENT_TRAINER, ports, clusterIP="None", publishNotReadyAddresses=True)
