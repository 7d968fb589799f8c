"""The data-regeneration Job: a batch/v1 Job running ``dspark data regenerate`` against the
job's own inference Service before training, writing the regenerated dataset to the output volume.

Pure, like the other builders. The reconciler creates it (once the inference servers are ready) for jobs with
``spec.dataset.regenerate``, keeps the trainer at zero replicas until it succeeds, and never updates it (a Job's pod
template is immutable): it is created when missing and deleted when the job is suspended or fails while it runs.

What the Job does: one pod (no GPU) with the trainer image starts a local Ray (``--num-cpus`` = the CPUs it
requests) or joins ``rayAddress``, waits for the inference Service's ``/v1/models``, reads ``spec.dataset.path``
(the dataset volume, read-only at /data, or a builtin dataset), and writes sharded jsonl to
``<output.mountPath>/<regenerate.outputDir>`` on the output volume, which the trainer then reads as its dataset.
A pod that dies is replaced (``backoffLimit``) and resumes from the committed shards; a finished output makes a
rerun a no-op. Exit code 2 (unreadable input, an output written with other settings) fails the Job at once (pod
failure policy) instead of retrying. The counts go to the container's termination message for the operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from dspark_operator.api.paths import output_path
from dspark_operator.api.podtemplate import PodSpecOverride, PodTemplateOverride
from dspark_operator.api.spec import RegenerateSpec, ResourceRequirements
from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    container_resources,
    metadata,
    pod_scheduling,
    pod_template,
    security_context,
    with_hash,
)
from dspark_operator.constants import COMPONENT_REGENERATE, DATA_MOUNT

__all__ = [
    "COMPONENT_REGENERATE",
    "RegenerateSpec",
    "build_regenerate_job",
    "failure_from_pods",
    "regenerate_args",
    "regenerate_job_name",
]

TERMINATION_LOG = "/dev/termination-log"
SHM_MOUNT = "/dev/shm"
CONTAINER = "regenerate"
# `dspark data regenerate` exits 2 for errors a retry cannot fix (bad input, output of another run, bad options).
EXIT_NOT_RETRYABLE = 2


def regenerate_job_name(job_name: str) -> str:
    """``<job>-regenerate``: the regeneration Job of a DSparkTrainingJob."""
    return f"{job_name}-regenerate"


def _regen_of(ctx: BuildContext, regen: RegenerateSpec | None) -> RegenerateSpec:
    regen = regen if regen is not None else ctx.spec.dataset.regenerate
    if regen is None:
        raise ValueError("spec.dataset.regenerate is not set")
    return regen


def inference_endpoint(ctx: BuildContext) -> str:
    """The job's inference Service (SGLang's OpenAI-compatible server shares the capture port)."""
    return f"http://{ctx.svc_host(ctx.names.inference)}:{ctx.spec.inference.port}"


_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    **{u: Decimal(1000) ** (i + 1) for i, u in enumerate("kMGTPE")},
    **{f"{u}i": Decimal(1024) ** (i + 1) for i, u in enumerate("KMGTPE")},
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")


def quantity_bytes(quantity: int | str) -> int:
    """The value of a Kubernetes quantity as a whole number (``2Gi``, ``512Mi``, ``1G``, ``1e9``, ``1048576``)."""
    if isinstance(quantity, int):
        return quantity
    m = _QUANTITY.fullmatch(quantity.strip())
    if not m:
        raise ValueError(f"not a quantity: {quantity!r}")
    number = Decimal(m.group(1))
    if m.group(2):
        number *= Decimal(10) ** int(m.group(2)[1:])
    return int(number * _SUFFIX[m.group(3) or ""])


def regenerate_args(ctx: BuildContext, regen: RegenerateSpec | None = None) -> list[str]:
    """Arguments of ``dspark`` in the Job's container (flags of ``dspark data regenerate``)."""
    regen = _regen_of(ctx, regen)
    replicas = ctx.spec.inference.replicas
    args = [
        "data",
        "regenerate",
        "--input",
        ctx.spec.dataset.path,
        "--output",
        output_path(ctx.spec, regen.output_dir),
        # One Service in front of all replicas: kube-proxy spreads the client's keep-alive connections (as many as
        # the concurrency) over the pods, so the bound is replicas x per-replica.
        "--endpoint",
        inference_endpoint(ctx),
        "--concurrency-per-endpoint",
        str(replicas * regen.concurrency_per_replica),
        "--temperature",
        str(regen.temperature),
        "--top-p",
        str(regen.top_p),
        "--top-k",
        str(regen.top_k),
        "--max-tokens",
        str(regen.max_tokens),
        "--shard-size",
        str(regen.shard_size),
        "--workers",
        str(regen.workers),
        "--max-retries",
        str(regen.max_retries),
        "--request-timeout",
        str(regen.request_timeout_seconds),
        "--wait-endpoints",
        str(regen.wait_endpoints_seconds),
        "--summary-to",
        TERMINATION_LOG,
        "--no-progress",
    ]
    if regen.ray_address:
        args += ["--ray-address", regen.ray_address]
    else:
        # Local Ray in the pod: its CPUs, and an object store inside the memory-backed /dev/shm.
        object_store = max(64 << 20, int(quantity_bytes(regen.shm_size) * 0.8))
        args += ["--num-cpus", str(regen.cpus), "--object-store-memory", str(object_store)]
    if regen.enable_thinking:
        args.append("--enable-thinking")
    if regen.seed is not None:
        args += ["--seed", str(regen.seed)]
    if regen.reject_truncated:
        args.append("--reject-truncated")
    return args


def build_regenerate_job(ctx: BuildContext, regen: RegenerateSpec | None = None, *, suspend: bool = False) -> Manifest:
    """The regeneration Job of a DSparkTrainingJob (``regen`` defaults to its ``spec.dataset.regenerate``)."""
    regen = _regen_of(ctx, regen)
    out = ctx.spec.trainer.output
    volume_mounts: list[dict[str, Any]] = [
        {"name": "output", "mountPath": out.mount_path},
        {"name": "dshm", "mountPath": SHM_MOUNT},
    ]
    volumes: list[dict[str, Any]] = [
        # validation requires output.claimName when regenerating (the trainer must see what the Job wrote)
        {"name": "output", "persistentVolumeClaim": {"claimName": out.claim_name}}
        if out.claim_name
        else {"name": "output", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": regen.shm_size}},
    ]
    if ctx.spec.dataset.claim_name:
        volume_mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": ctx.spec.dataset.claim_name, "readOnly": True}}
        )
    base = ResourceRequirements(
        requests={"cpu": regen.cpus, "memory": regen.memory, **regen.resources.requests},
        limits={"memory": regen.memory, **regen.resources.limits},
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": regen.image or ctx.spec.trainer.image or ctx.trainer_image,
        "command": ["dspark"],
        "args": regenerate_args(ctx, regen),
        "env": [
            {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": container_resources(ctx, base, gpus=0, rdma=False),
        "securityContext": security_context(rdma=False),
        "volumeMounts": volume_mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return with_hash(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata(ctx, regenerate_job_name(ctx.name), COMPONENT_REGENERATE, workload=True),
            "spec": {
                "backoffLimit": regen.backoff_limit,
                **({"activeDeadlineSeconds": regen.active_deadline_seconds} if regen.active_deadline_seconds else {}),
                "suspend": suspend,
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {
                                "containerName": CONTAINER,
                                "operator": "In",
                                "values": [EXIT_NOT_RETRYABLE],
                            },
                        },
                        # A pod evicted or preempted (node drain, ...) is replaced without counting as a failure.
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    ]
                },
                "template": pod_template(
                    ctx,
                    COMPONENT_REGENERATE,
                    containers=[container],
                    volumes=volumes,
                    override=regenerate_pod_override(ctx),
                    scheduling=regenerate_scheduling(ctx, regen),
                    restartPolicy="Never",  # a new pod per retry; it resumes from the committed shards
                    terminationGracePeriodSeconds=60,
                ),
            },
        }
    )


def regenerate_pod_override(ctx: BuildContext) -> PodTemplateOverride | None:
    """What the Job pod (trainer image, its own placement and volumes) takes from trainer.podTemplate: labels,
    annotations, imagePullSecrets and the pod securityContext."""
    tmpl = ctx.spec.trainer.pod_template
    if tmpl is None:
        return None
    spec = PodSpecOverride(image_pull_secrets=tmpl.spec.image_pull_secrets, security_context=tmpl.spec.security_context)
    return PodTemplateOverride(metadata=tmpl.metadata, spec=spec)


def regenerate_scheduling(ctx: BuildContext, regen: RegenerateSpec) -> dict[str, Any]:
    """The job-wide placement, with the regeneration's own node selector / tolerations where given
    (an empty one removes the job-wide one: the pod needs no GPU node)."""
    out = pod_scheduling(ctx)
    if regen.node_selector is not None:
        out.pop("nodeSelector", None)
        if regen.node_selector:
            out["nodeSelector"] = dict(regen.node_selector)
    if regen.tolerations is not None:
        out.pop("tolerations", None)
        if regen.tolerations:
            out["tolerations"] = [
                t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in regen.tolerations
            ]
    return out


# ------------------------------------------------------------------------------------------
# Reading the Job back (pure)


def job_conditions(job: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The Job's True conditions by type (Complete, Failed, SuccessCriteriaMet, FailureTarget, Suspended)."""
    out: dict[str, Mapping[str, Any]] = {}
    for cond in (job.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("status") == "True" and cond.get("type"):
            out[str(cond["type"])] = cond
    return out


def summary_from_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The counts a succeeded regeneration pod wrote to its termination message (``--summary-to``), if any."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != CONTAINER:
            continue
        terminated = (cs.get("state") or {}).get("terminated") or {}
        message = str(terminated.get("message") or "").strip()
        for line in reversed(message.splitlines()):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def failure_from_pods(pods: Sequence[Mapping[str, Any]], limit: int = 600) -> str:
    """What the latest failed regeneration pod said: its exit code and the tail of its termination message (the
    error, or the last log lines: ``FallbackToLogsOnError``). Empty when no failed pod tells anything."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    for pod in reversed(failed):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != CONTAINER:
                continue
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if not terminated:
                continue
            text = " ".join(str(terminated.get("message") or "").split())
            if len(text) > limit:
                text = "..." + text[-limit:]
            head = f"exit code {terminated.get('exitCode')}"
            if terminated.get("reason") and terminated.get("reason") != "Error":
                head += f" ({terminated['reason']})"
            return f"{head}: {text}" if text else head
    return ""


def describe_summary(summary: Mapping[str, Any] | None) -> str:
    """A short sentence from the termination-message counts (empty when there are none)."""
    if not summary:
        return ""
    written = summary.get("total_written", summary.get("written"))
    rejected = summary.get("total_rejected", summary.get("rejected"))
    parts = []
    if isinstance(written, int):
        parts.append(f"{written} samples written")
    if isinstance(rejected, int):
        parts.append(f"{rejected} rejected")
    return ", ".join(parts)
