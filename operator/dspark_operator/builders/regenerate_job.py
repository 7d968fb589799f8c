"""The data-regeneration Job (issue 9, part 3): a batch/v1 Job running ``dspark data regenerate`` against the
job's own inference Service before training, writing the regenerated dataset to the output volume.

Pure, like the other builders; NOT wired into ``build_children``/the reconciler yet. The integration plan
(spec field, validation, ordering, status) is in docs/data.md, "On Kubernetes". Until ``spec.dataset.regenerate``
exists in ``api/spec.py``, the settings model lives here (``RegenerateSpec``); move it there when wiring.

What the Job does: one pod (no GPU) with the trainer image starts a local Ray (``--num-cpus`` = the CPUs it
requests), waits for the inference Service's ``/v1/models`` (the servers may still be loading the target), reads
``spec.dataset.path`` (the dataset volume, read-only at /data), and writes sharded jsonl to
``<output.mountPath>/<regenerate.outputDir>`` on the output volume, which the trainer then reads as its dataset.
A pod that dies is replaced (``backoffLimit``) and resumes from the committed shards; a finished output makes a
rerun a no-op. The counts go to the container's termination message (``/dev/termination-log``) for the operator.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from dspark_trainer.config import ConfigModel
from pydantic import Field

from dspark_operator.api.spec import ResourceRequirements
from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    container_resources,
    metadata,
    pod_scheduling,
    security_context,
    with_hash,
    workload_labels,
)
from dspark_operator.constants import DATA_MOUNT

COMPONENT_REGENERATE = "regenerate"  # move to constants.py when wiring
TERMINATION_LOG = "/dev/termination-log"
SHM_MOUNT = "/dev/shm"


class RegenerateSpec(ConfigModel):
    """Regenerate the assistant turns of the dataset with the target itself before training (the published DSpark
    recipe: temperature 0.7, top_p 0.8, top_k 20, thinking disabled). Proposed as `spec.dataset.regenerate`."""

    output_dir: str = Field(
        "regenerated", min_length=1, max_length=1024,
        description="Directory under trainer.output.mountPath for the regenerated dataset (the trainer reads it).",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(0.8, gt=0, le=1, description="Nucleus sampling probability.")
    top_k: int = Field(20, ge=-1, description="Top-k sampling (-1: off).")
    max_tokens: int = Field(2048, ge=1, le=131072, description="Longest generated turn, in tokens.")
    enable_thinking: bool = Field(False, description="Let the target think (chat_template_kwargs.enable_thinking).")
    seed: int | None = Field(None, ge=0, description="Base seed for per-request seeds (reproducible reruns).")
    reject_truncated: bool = Field(False, description="Reject a sample when a turn hits maxTokens.")
    shard_size: int = Field(1000, ge=1, le=1_000_000, description="Samples per output shard (the unit of resume).")
    concurrency_per_replica: int = Field(
        32, ge=1, le=4096, description="Requests in flight per inference replica (the Job multiplies by replicas)."
    )
    workers: int = Field(2, ge=1, le=64, description="Shards regenerated at a time.")
    max_retries: int = Field(5, ge=0, le=100, description="Retries of a failed request (exponential back-off).")
    request_timeout_seconds: float = Field(600.0, gt=0, description="Timeout of one request.")
    wait_endpoints_seconds: float = Field(
        1800.0, gt=0, description="How long the Job waits for the inference servers to answer /v1/models."
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Pod failures before the Job fails (each resumes).")
    cpus: int = Field(4, ge=1, le=256, description="CPUs of the Job pod (requested; local Ray uses them).")
    memory: str = Field("8Gi", min_length=1, description="Memory of the Job pod (request and limit).")
    shm_size: str = Field("2Gi", min_length=1, description="Memory-backed /dev/shm for Ray's object store.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Extra requests/limits, merged over cpus and memory."
    )


def regenerate_job_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-regenerate"


def regenerated_dataset_path(ctx: BuildContext, regen: RegenerateSpec) -> str:
    """Where the regenerated dataset lands; the trainer config's ``dataset.path`` when regeneration is on."""
    return posixpath.join(ctx.spec.trainer.output.mount_path, regen.output_dir)


def inference_endpoint(ctx: BuildContext) -> str:
    """The job's inference Service (SGLang's OpenAI-compatible server shares the capture port)."""
    return f"http://{ctx.svc_host(ctx.names.inference)}:{ctx.spec.inference.port}"


def _bytes(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity (``2Gi``, ``512Mi``, ``1G``, ``1048576``)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i?)?", quantity.strip())
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    unit = m.group(2) or ""
    powers = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
    factor = 1 if not unit else (1024 if unit.endswith("i") else 1000) ** powers[unit[0]]
    return int(float(m.group(1)) * factor)


def regenerate_args(ctx: BuildContext, regen: RegenerateSpec) -> list[str]:
    """Arguments of ``dspark`` in the Job's container."""
    replicas = ctx.spec.inference.replicas
    object_store = max(64 << 20, int(_bytes(regen.shm_size) * 0.8))
    args = [
        "data", "regenerate",
        "--input", ctx.spec.dataset.path,
        "--output", regenerated_dataset_path(ctx, regen),
        # One Service in front of all replicas: kube-proxy spreads the client's keep-alive connections (as many as
        # the concurrency) over the pods, so the bound is replicas x per-replica.
        "--endpoint", inference_endpoint(ctx),
        "--concurrency-per-endpoint", str(replicas * regen.concurrency_per_replica),
        "--temperature", str(regen.temperature),
        "--top-p", str(regen.top_p),
        "--top-k", str(regen.top_k),
        "--max-tokens", str(regen.max_tokens),
        "--shard-size", str(regen.shard_size),
        "--workers", str(regen.workers),
        "--max-retries", str(regen.max_retries),
        "--request-timeout", str(regen.request_timeout_seconds),
        "--wait-endpoints", str(regen.wait_endpoints_seconds),
        "--num-cpus", str(regen.cpus),
        "--object-store-memory", str(object_store),
        "--summary-to", TERMINATION_LOG,
        "--no-progress",
    ]
    if regen.enable_thinking:
        args.append("--enable-thinking")
    if regen.seed is not None:
        args += ["--seed", str(regen.seed)]
    if regen.reject_truncated:
        args.append("--reject-truncated")
    return args


def build_regenerate_job(ctx: BuildContext, regen: RegenerateSpec, *, suspend: bool = False) -> Manifest:
    """The regeneration Job of a DSparkTrainingJob."""
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
        "name": "regenerate",
        "image": ctx.spec.trainer.image or ctx.trainer_image,
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
            "metadata": metadata(ctx, regenerate_job_name(ctx), COMPONENT_REGENERATE, workload=True),
            "spec": {
                "backoffLimit": regen.backoff_limit,
                "suspend": suspend,
                "template": {
                    "metadata": {"labels": workload_labels(ctx, COMPONENT_REGENERATE)},
                    "spec": {
                        "restartPolicy": "Never",  # a new pod per retry; it resumes from the committed shards
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "terminationGracePeriodSeconds": 60,
                        "containers": [container],
                        "volumes": volumes,
                        **pod_scheduling(ctx),
                    },
                },
            },
        }
    )

