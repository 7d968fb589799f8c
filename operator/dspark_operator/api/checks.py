"""Spec rules the operator checks itself (pure functions, each returns the first problem or None).

Most of them are also CEL rules of the CRD, so `kubectl apply` already refuses the spec; the operator checks
them again because a spec can reach it without that admission (an older CRD, a test, a direct API write) and
because a few cannot be said in CEL (the known targets' depth, the SGLang flags the operator owns). The target
layers are checked by the trainer's own rule (``dspark_trainer.target_resolution``), so the operator and the trainer
agree on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from dspark_trainer.capture.sglang_args import owned_flag
from dspark_trainer.config import ConfigError, InferenceEngine, TransportProtocol
from dspark_trainer.config.draft import sglang_layer_problem
from dspark_trainer.target_resolution import describe_target, known_target_layers, resolve_layer_ids

from dspark_operator.api.paths import ABSOLUTE_DIR, OPERATOR_MOUNTS, SYSTEM_DIRS, overlaps
from dspark_operator.api.podtemplate import DNS1123_LABEL, PodTemplateOverride
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


def check_output_volume(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """Outputs go to a PersistentVolumeClaim unless the spec says, with output.ephemeral, that losing them is fine."""
    out = spec.trainer.output
    if out.claim_name and out.ephemeral:
        return InvalidSpec(
            "spec.trainer.output.ephemeral",
            f"true contradicts claimName {out.claim_name!r} (the output is on that volume): drop one of them",
        )
    if not out.claim_name and not out.ephemeral:
        return InvalidSpec(
            "spec.trainer.output.claimName",
            "is required: without a PersistentVolumeClaim the checkpoints and the draft go to an emptyDir and are "
            "lost with the trainer pods. Set it to a claim, or set trainer.output.ephemeral: true to accept that",
        )
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


# Volume names the operator gives its own volumes (in one role or another).
OPERATOR_VOLUMES = frozenset({"config", "dshm", "output", "data", "models"})
# Label prefixes the operator sets or selects on, and the controllers' own pod labels.
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "dspark.io/", "kueue.x-k8s.io/", "apps.kubernetes.io/")
RESERVED_LABELS = frozenset({"controller-revision-hash", "pod-template-hash", "statefulset.kubernetes.io/pod-name"})
RESERVED_ANNOTATION_PREFIXES = ("dspark.io/",)
AFFINITY_KINDS = frozenset({"nodeAffinity", "podAffinity", "podAntiAffinity"})
_VOLUME_NAME = re.compile(DNS1123_LABEL)
_ABSOLUTE = re.compile(ABSOLUTE_DIR)


def role_pod_templates(spec: DSparkTrainingJobSpec) -> list[tuple[str, str, PodTemplateOverride | None]]:
    """(spec field, container name, override) of every role's partial pod template."""
    return [
        ("spec.inference.podTemplate", "capture", spec.inference.pod_template),
        ("spec.trainer.podTemplate", "trainer", spec.trainer.pod_template),
        ("spec.transport.masterPodTemplate", "mooncake-master", spec.transport.master_pod_template),
    ]


def _metadata_problem(field: str, tmpl: PodTemplateOverride) -> InvalidSpec | None:
    for key in tmpl.metadata.labels:
        if key.startswith(RESERVED_LABEL_PREFIXES) or key in RESERVED_LABELS:
            return InvalidSpec(
                f"{field}.metadata.labels[{key}]",
                "is a label the operator or a controller sets or selects on (app.kubernetes.io/*, dspark.io/*, "
                "kueue.x-k8s.io/*, apps.kubernetes.io/*); use your own key (Kueue's queue: spec.scheduling.queueName)",
            )
    for key in tmpl.metadata.annotations:
        if key.startswith(RESERVED_ANNOTATION_PREFIXES):
            return InvalidSpec(f"{field}.metadata.annotations[{key}]", "dspark.io/* annotations are the operator's")
    return None


def _volumes_problem(field: str, volumes: Sequence[Mapping[str, object]]) -> InvalidSpec | None:
    seen: set[str] = set()
    for i, vol in enumerate(volumes):
        name = vol.get("name")
        where = f"{field}.spec.volumes[{i}].name"
        if not isinstance(name, str) or not _VOLUME_NAME.match(name) or len(name) > 63:
            return InvalidSpec(where, f"{name!r}: every volume needs a name of a-z, 0-9 and '-' (at most 63)")
        if name in OPERATOR_VOLUMES:
            return InvalidSpec(
                where, f"{name!r} is a volume the operator creates ({', '.join(sorted(OPERATOR_VOLUMES))}); rename it"
            )
        if name in seen:
            return InvalidSpec(where, f"{name!r} is given twice")
        seen.add(name)
    return None


def _mount_path_problem(path: str, owned: Mapping[str, str]) -> str | None:
    if not _ABSOLUTE.match(path):
        return f"{path!r} must be an absolute path of plain segments, e.g. /etc/extra"
    for other, what in owned.items():
        if overlaps(path, other):
            return f"{path!r} clashes with {other}, where the operator mounts {what}; mount it elsewhere"
    for system in SYSTEM_DIRS:
        if overlaps(path, system):
            return f"{path!r} would hide the image's {system}; mount it elsewhere"
    return None


def _containers_problem(
    field: str, container: str, tmpl: PodTemplateOverride, owned: Mapping[str, str]
) -> InvalidSpec | None:
    names = {v.get("name") for v in tmpl.spec.volumes}
    for i, part in enumerate(tmpl.spec.containers):
        here = f"{field}.spec.containers[{i}]"
        if part.name != container:
            return InvalidSpec(
                f"{here}.name",
                f"{part.name!r} is not the role's container: its one container is {container!r} (no sidecars)",
            )
        for j, env_from in enumerate(part.env_from):
            if env_from.prefix and env_from.prefix.startswith(RESERVED_ENV_PREFIXES):
                return InvalidSpec(
                    f"{here}.envFrom[{j}].prefix", f"{env_from.prefix!r}: DSPARK_* and MOONCAKE_* are the operator's"
                )
        paths: set[str] = set()
        for j, mount in enumerate(part.volume_mounts):
            if mount.name not in names:
                return InvalidSpec(
                    f"{here}.volumeMounts[{j}].name",
                    f"{mount.name!r} is not one of {field}.spec.volumes (the operator's own volumes are mounted by it)",
                )
            problem = _mount_path_problem(mount.mount_path, owned)
            if problem is None and mount.mount_path in paths:
                problem = f"{mount.mount_path!r} is mounted twice"
            if problem:
                return InvalidSpec(f"{here}.volumeMounts[{j}].mountPath", problem)
            paths.add(mount.mount_path)
    return None


def _affinity_problem(field: str, tmpl: PodTemplateOverride) -> InvalidSpec | None:
    affinity = tmpl.spec.affinity or {}
    for key, value in affinity.items():
        if key not in AFFINITY_KINDS or not isinstance(value, Mapping):
            return InvalidSpec(
                f"{field}.spec.affinity.{key}",
                f"affinity has nodeAffinity, podAffinity and podAntiAffinity (objects as in a Pod), not {key!r}",
            )
    return None


def check_pod_templates(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """The roles' partial pod templates replace nothing the operator owns: its labels, volumes, mount paths, the
    container it runs, the reserved env prefixes, the trainer's ServiceAccount."""
    for field, container, tmpl in role_pod_templates(spec):
        if tmpl is None:
            continue
        owned = dict(OPERATOR_MOUNTS)
        if container == "trainer":
            owned[spec.trainer.output.mount_path] = "the output volume (trainer.output.mountPath)"
            if tmpl.spec.service_account_name:
                return InvalidSpec(
                    f"{field}.spec.serviceAccountName",
                    "the trainer runs as the ServiceAccount <job>-trainer, which the operator binds to report "
                    "status.progress; grant that ServiceAccount what else the trainer needs",
                )
        problem = (
            _metadata_problem(field, tmpl)
            or _volumes_problem(field, tmpl.spec.volumes)
            or _containers_problem(field, container, tmpl, owned)
            or _affinity_problem(field, tmpl)
        )
        if problem:
            return problem
    return None


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
    check_output_volume,
    check_output_dirs,
    check_publish,
    check_pod_templates,
)


def first_problem(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """The first problem any rule finds, or None."""
    for check in CHECKS:
        problem = check(spec)
        if problem is not None:
            return problem
    return None
