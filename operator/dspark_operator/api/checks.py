"""Spec rules the operator checks itself (pure functions, each returns the first problem or None).

Most of them are also CEL rules of the CRD, so `kubectl apply` already refuses the spec; the operator checks
them again because a spec can reach it without that admission (an older CRD, a test, a direct API write) and
because a few cannot be said in CEL (the known targets' depth, the SGLang flags the operator owns). The target
layers are checked by the trainer's own rule (``dspark_trainer.target_resolution``), so the operator and the trainer
agree on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dspark_trainer.capture.sglang_args import owned_flag
from dspark_trainer.config import ConfigError, InferenceEngine, TransportProtocol
from dspark_trainer.config.draft import sglang_layer_problem
from dspark_trainer.target_resolution import describe_target, known_target_layers, resolve_layer_ids

from dspark_operator.api.problems import InvalidSpec
from dspark_operator.api.spec import DSparkTrainingJobSpec, EnvVar, ResourceRequirements
from dspark_operator.constants import (
    MOONCAKE_METADATA_PORT,
    MOONCAKE_METRICS_PORT,
    MOONCAKE_RPC_PORT,
    TRAINER_RDZV_PORT,
)

RESERVED_ENV_PREFIXES = ("DSPARK_", "MOONCAKE_")
RESERVED_ENV_NAMES = frozenset({"SGLANG_PLUGINS", "HF_TOKEN", "NODE_RANK"})
# torchrun sets these for every trainer process from the operator's command line.
RESERVED_TRAINER_ENV_NAMES = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
)
# Ports the operator gives the job's processes (trainer pods and the Mooncake master they talk to).
RESERVED_TRAINER_PORTS: dict[int, str] = {
    TRAINER_RDZV_PORT: "torchrun rendezvous in the trainer pods",
    MOONCAKE_RPC_PORT: "Mooncake master RPC",
    MOONCAKE_METADATA_PORT: "Mooncake master HTTP metadata",
    MOONCAKE_METRICS_PORT: "Mooncake master metrics",
}


def check_batch(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """The global batch splits evenly over ranks x micro batches."""
    tr = spec.trainer
    ranks = tr.nodes * max(tr.gpus_per_node, 1)
    per_step = ranks * tr.schedule.micro_batch_size
    if tr.schedule.global_batch_size % per_step:
        return InvalidSpec(
            "spec.trainer.schedule.globalBatchSize",
            f"{tr.schedule.global_batch_size} is not a multiple of nodes x max(gpusPerNode, 1) x microBatchSize "
            f"= {tr.nodes} x {max(tr.gpus_per_node, 1)} x {tr.schedule.micro_batch_size} = {per_step}",
        )
    return None


def check_inference(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """GPUs, tensor parallelism, context length and the SGLang flags the operator owns."""
    inf = spec.inference
    if inf.gpus is not None and 0 < inf.gpus < inf.tensor_parallel_size:
        return InvalidSpec(
            "spec.inference.gpus", f"{inf.gpus} is less than tensorParallelSize={inf.tensor_parallel_size}"
        )
    if inf.engine == InferenceEngine.REFERENCE and inf.tensor_parallel_size != 1:
        return InvalidSpec(
            "spec.inference.tensorParallelSize",
            f"{inf.tensor_parallel_size}: must be 1 with engine reference (it does not shard the target)",
        )
    if inf.context_length is not None and inf.context_length <= spec.dataset.max_length:
        return InvalidSpec(
            "spec.inference.contextLength",
            f"{inf.context_length} must exceed dataset.maxLength={spec.dataset.max_length} (a capture sends up to "
            "maxLength tokens and generates one); raise it or leave it unset",
        )
    problem = sglang_layer_problem(spec.draft.target_layer_ids)
    if inf.engine == InferenceEngine.SGLANG and problem:
        return InvalidSpec("spec.draft.targetLayerIds", problem)
    if inf.extra_args and inf.engine != InferenceEngine.SGLANG:
        return InvalidSpec("spec.inference.extraArgs", "are SGLang flags: only for inference.engine sglang")
    for i, arg in enumerate(inf.extra_args):
        flag = owned_flag(arg)
        if flag is not None:
            return InvalidSpec(
                f"spec.inference.extraArgs[{i}]", f"{flag} is set by the operator from the spec and may not be given"
            )
    return None


def _env_problem(section: str, env: Sequence[EnvVar], reserved: frozenset[str]) -> InvalidSpec | None:
    seen: dict[str, int] = {}
    for i, var in enumerate(env):
        if var.name in reserved or var.name.startswith(RESERVED_ENV_PREFIXES):
            return InvalidSpec(f"spec.{section}.env[{i}].name", f"{var.name} is reserved for the operator")
        if var.name in seen:
            return InvalidSpec(
                f"spec.{section}.env[{i}].name", f"{var.name} is already set by spec.{section}.env[{seen[var.name]}]"
            )
        seen[var.name] = i
    return None


def check_env(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """No reserved, operator-set or duplicate environment variable names."""
    problem = _env_problem("inference", spec.inference.env, RESERVED_ENV_NAMES)
    problem = problem or _env_problem("trainer", spec.trainer.env, RESERVED_ENV_NAMES | RESERVED_TRAINER_ENV_NAMES)
    if problem:
        return problem
    tp = spec.transport
    if tp.device_names and tp.protocol != TransportProtocol.TCP:
        for i, var in enumerate(spec.trainer.env):
            if var.name == "NCCL_IB_HCA":
                return InvalidSpec(
                    f"spec.trainer.env[{i}].name",
                    "NCCL_IB_HCA is set by the operator from transport.deviceNames; give the devices in one place",
                )
    return None


def check_ports(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """The trainer's metrics port is none of the ports the operator uses."""
    port = spec.metrics.port
    if port in RESERVED_TRAINER_PORTS:
        return InvalidSpec(
            "spec.metrics.port",
            f"{port} is the {RESERVED_TRAINER_PORTS[port]} port; choose another (the default is 9400)",
        )
    return None


def _device_in(resources: ResourceRequirements, names: Sequence[str]) -> str | None:
    for kind, values in (("requests", resources.requests), ("limits", resources.limits)):
        for name in names:
            if name in values:
                return f"{kind}.{name}"
    return None


def check_resources(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """GPUs and RDMA devices come from their own fields, never from `resources`."""
    names = (spec.scheduling.gpu_resource_name, spec.transport.rdma_resource_name)
    for section, resources, field in (
        ("trainer", spec.trainer.resources, "trainer.gpusPerNode"),
        ("inference", spec.inference.resources, "inference.gpus"),
    ):
        where = _device_in(resources, names)
        if where:
            return InvalidSpec(
                f"spec.{section}.resources.{where}",
                f"the operator adds GPUs from {field} and RDMA devices from transport.rdmaResourceCount; drop it",
            )
    return None


def check_optimizer(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """Split master weights need bf16 parameters, which only GPUs give here."""
    if spec.trainer.optimizer.master_weights == "split" and spec.trainer.gpus_per_node == 0:
        return InvalidSpec(
            "spec.trainer.optimizer.masterWeights",
            "split needs bf16 parameters, that is GPUs: set trainer.gpusPerNode > 0 or masterWeights: fp32",
        )
    return None


def check_target_layers(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """The captured layers fit the target, when its depth is known (``dspark_trainer.target_resolution``)."""
    layers = known_target_layers(spec.target)
    if layers is None:
        return None
    try:
        resolve_layer_ids(spec.draft, layers)
    except ConfigError as err:
        field = (
            "spec.draft.targetLayerIds"
            if spec.draft.target_layer_ids is not None
            else "spec.draft.numTargetLayersCaptured"
        )
        message = str(err).split(": ", 1)[1]
        return InvalidSpec(field, f"{message} ({describe_target(spec.target)} has {layers} layers)")
    return None


def check_output_dirs(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """The regenerated dataset lies apart from the draft and the checkpoints."""
    regen = spec.dataset.regenerate
    if regen is None:
        return None
    out = spec.trainer.output
    if not out.claim_name:
        return InvalidSpec(
            "spec.trainer.output.claimName",
            "dataset.regenerate needs an output volume: the regeneration Job writes the dataset there and the trainer "
            "pods read it (an emptyDir is not shared between pods)",
        )
    mine = _segments(regen.output_dir)  # relative, no "." or ".." segments (the schema's pattern)
    for field, other in (("draftDir", out.draft_dir), ("checkpointDir", out.checkpoint_dir)):
        theirs = _segments(other)
        shorter = min(len(mine), len(theirs))
        if mine[:shorter] == theirs[:shorter]:
            return InvalidSpec(
                "spec.dataset.regenerate.outputDir",
                f"{regen.output_dir!r} must not be, contain or lie inside trainer.output.{field} ({other!r})",
            )
    return None


# A ConfigMap holds at most 1 MiB of data; keep room for the parts that differ per namespace and uid.
CONFIGMAP_DATA_LIMIT = 1024 * 1024
CONFIG_SIZE_MARGIN = 4096


def check_config_size(spec: DSparkTrainingJobSpec, rendered_bytes: int) -> InvalidSpec | None:
    """The rendered job config fits its ConfigMap; otherwise name the largest free-form field."""
    if rendered_bytes <= CONFIGMAP_DATA_LIMIT - CONFIG_SIZE_MARGIN:
        return None
    sizes = {
        "spec.dataset.chatTemplate": len((spec.dataset.chat_template or "").encode()),
        "spec.dataset.chatTemplateKwargs": len(repr(spec.dataset.chat_template_kwargs).encode()),
        "spec.inference.extraArgs": sum(len(a.encode()) for a in spec.inference.extra_args),
    }
    field = max(sizes, key=lambda k: sizes[k])
    return InvalidSpec(
        field,
        f"the rendered job config would be {rendered_bytes} bytes, more than a ConfigMap holds "
        f"({CONFIGMAP_DATA_LIMIT - CONFIG_SIZE_MARGIN} usable); {field} alone is {sizes[field]} bytes. Shrink it "
        "(a large chat template can be a file on the dataset or model volume: give its path)",
    )


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s not in ("", "."))


def check_publish(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """A publish destination has credentials (the trainer would only find out after training)."""
    export = spec.trainer.export
    if export.destination is None:
        if export.credentials_secret or export.s3_endpoint_url or export.s3_region:
            return InvalidSpec("spec.trainer.export.destination", "credentialsSecret, s3EndpointUrl and s3Region "
                               "are only used with a destination; give destination: s3://BUCKET/PREFIX or "
                               "hf://OWNER/REPO, or remove them")
        return None
    if export.destination.startswith("s3://") and not export.credentials_secret:
        return InvalidSpec("spec.trainer.export.credentialsSecret", "an s3:// destination needs a Secret with "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; create one and name it here")
    if export.destination.startswith("hf://"):
        if export.s3_endpoint_url or export.s3_region:
            return InvalidSpec("spec.trainer.export.s3EndpointUrl", "is only used with an s3:// destination")
        if not export.credentials_secret and spec.target.hf_token_secret_ref is None:
            return InvalidSpec("spec.trainer.export.credentialsSecret", "an hf:// destination needs a Hub token "
                               "with write access: a Secret with key HF_TOKEN here, or target.hfTokenSecretRef")
    return None


CHECKS: tuple[Callable[[DSparkTrainingJobSpec], InvalidSpec | None], ...] = (
    check_batch,
    check_inference,
    check_env,
    check_ports,
    check_resources,
    check_optimizer,
    check_target_layers,
    check_output_dirs,
    check_publish,
)


def first_problem(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """The first problem any rule finds, or None."""
    for check in CHECKS:
        problem = check(spec)
        if problem is not None:
            return problem
    return None
