"""The `spec` of a DSparkTrainingJob: the single source of the CRD's spec schema.

Every field has a description (it becomes `kubectl explain` text). Constraints a CRD
schema can express live on the fields (ranges, enums, patterns) or as CEL rules
(`x-kubernetes-validations`, added by :mod:`dspark_operator.crdgen`); the rest are
checked by :mod:`dspark_operator.api.checks` (through :func:`dspark_operator.api.job.parse_spec`),
which the operator runs on every generation before anything acts on it.

Sections shared with the rendered job config (`dspark_trainer.config.job.JobConfig`, the pod
contract) are the same pydantic models or subclasses of them (`DraftOptions`, `OptimizerConfig`,
`InferenceConfig`, `TransportSettings`, ...), so a field and its default mean the same thing in the
CRD, in the rendered config and in every role that reads it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from dspark_trainer.config import (
    CaptureSettings,
    CheckpointSettings,
    ConfigModel,
    DatasetConfig,
    DraftOptions,
    EvalConfig,
    EvaluationConfig,
    ExportSettings,
    InferenceConfig,
    OptimizerConfig,
    RegenerateSettings,
    ScheduleConfig,
    TargetConfig,
    TransportSettings,
)
from pydantic import AfterValidator, Field, WithJsonSchema, field_validator, model_validator

from dspark_operator.api.paths import mount_path_problem, overlaps, relative_dir_problem
from dspark_operator.api.podtemplate import PodTemplateOverride

# The Kubernetes resource.Quantity grammar (as in the apimachinery OpenAPI schema).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
# DNS-1123 subdomain (names of Secrets, PVCs, PriorityClasses, ...).
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A qualified name such as `nvidia.com/gpu` or `rdma/hca` (extended resource names).
RESOURCE_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A label value (Kueue's queue name is one): at most 63 characters, alphanumeric at both ends.
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
# A name that is neither blank nor padded with spaces (a model id, a dataset path).
NAMED = r"^\S(.*\S)?$"
_NAMED_RE = re.compile(NAMED)
# The largest inline chat template (the rendered job config must fit a ConfigMap, at most 1 MiB).
MAX_CHAT_TEMPLATE = 256 * 1024


def check_named(value: str, field: str, example: str) -> str:
    """`value` unless it is blank or starts/ends with whitespace (then ValueError naming `field`)."""
    if not _NAMED_RE.match(value):
        raise ValueError(f"{value!r} is blank or starts/ends with whitespace: {field} must name it, e.g. {example}")
    return value


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"quantity must not be negative, got {value}")
    return value


DnsName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
"""The name of a Secret, PersistentVolumeClaim, PriorityClass, scheduler, ... (a DNS-1123 subdomain)."""

ImageRef = Annotated[str, Field(min_length=1, max_length=1024)]
"""A container image reference (registry/repository:tag or @digest)."""

Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


class ResourceRequirements(ConfigModel):
    """Extra compute resources for a container (CPU, memory, ...). GPUs and RDMA devices are
    added by the operator from the dedicated fields; do not list them here."""

    requests: dict[Annotated[str, Field(pattern=RESOURCE_NAME)], Quantity] = Field(
        default_factory=dict, description="Minimum resources the container needs, e.g. {cpu: 8, memory: 64Gi}."
    )
    limits: dict[Annotated[str, Field(pattern=RESOURCE_NAME)], Quantity] = Field(
        default_factory=dict, description="Maximum resources the container may use, e.g. {memory: 128Gi}."
    )


class SecretKeyRef(ConfigModel):
    """A key of a Secret in the job's namespace."""

    name: DnsName = Field(..., description="Secret name.")
    key: str = Field("token", min_length=1, max_length=253, description="Key in the Secret holding the value.")


class EnvVar(ConfigModel):
    """A plain environment variable for a container."""

    name: str = Field(..., min_length=1, max_length=256, pattern=ENV_NAME, description="Variable name.")
    value: str = Field("", max_length=32768, description="Variable value.")


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


class TargetSpec(TargetConfig):
    """The target model whose hidden states train the draft (model, revision and dtype are the job config's).
    Immutable after creation: the draft is trained for exactly this model."""

    model_claim_name: DnsName | None = Field(
        None,
        description="PersistentVolumeClaim with model weights, mounted read-only at /models in every pod.",
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token, exposed as HF_TOKEN to inference and trainer pods."
    )

    @field_validator("model")
    @classmethod
    def _model_named(cls, value: str) -> str:
        return check_named(value, "target.model", "Qwen/Qwen3-8B or /models/qwen3-8b")


class RegenerateSpec(RegenerateSettings):
    """Regenerate every assistant turn of the dataset with the target itself before training (the published DSpark
    recipe: temperature 0.7, top_p 0.8, top_k 20, thinking disabled). The operator runs `dspark data regenerate` as a
    batch/v1 Job against the job's own inference Service once the servers are ready; the trainer starts when the Job
    succeeds and reads the regenerated dataset (output.mountPath/outputDir) instead of dataset.path. Immutable."""

    output_dir: str = Field(
        "regenerated",
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*$",
        description=(
            "Directory under trainer.output.mountPath (the output volume, shared by the Job and the trainer) for "
            "the regenerated dataset; the trainer's dataset.path. A rerun resumes it; a finished one is reused."
        ),
    )
    image: ImageRef | None = Field(
        None,
        description="Image with dspark and Ray for the Job. Default: trainer.image, else the operator's trainer image.",
    )
    concurrency_per_replica: int = Field(
        32,
        ge=1,
        le=4096,
        description=(
            "Requests in flight per inference replica; the Job sends up to inference.replicas x this through the "
            "inference Service (dspark data regenerate --concurrency-per-endpoint)."
        ),
    )
    wait_endpoints_seconds: float = Field(
        1800.0, gt=0, le=86400, description="How long the Job waits for the inference Service's /v1/models at start."
    )
    ray_address: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description=(
            "Join this Ray cluster (e.g. a KubeRay head: ray://<head-svc>:10001) instead of starting a local Ray in "
            "the Job pod. Its workers must see dataset.path at the same path and reach the inference Service; the "
            "Job pod (the driver) writes the output."
        ),
    )
    backoff_limit: int = Field(
        3, ge=0, le=100, description="Failed Job pods before the regeneration (and the job) fails; each retry resumes."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Seconds the regeneration Job may run before it fails (reason DeadlineExceeded)."
    )
    node_selector: dict[str, str] | None = Field(
        None,
        description=(
            "Node labels the regeneration Job's pod requires. Default: scheduling.nodeSelector. The pod needs no "
            "GPU, so {} lets it run off the GPU nodes when scheduling.nodeSelector names a GPU product."
        ),
    )
    tolerations: list[Toleration] | None = Field(
        None, max_length=64, description="Tolerations of the regeneration Job's pod. Default: scheduling.tolerations."
    )
    cpus: int = Field(4, ge=1, le=256, description="CPUs the Job pod requests (and local Ray uses: --num-cpus).")
    memory: Quantity = Field("8Gi", description="Memory of the Job pod (request and limit).")
    shm_size: Quantity = Field("2Gi", description="Memory-backed /dev/shm of the Job pod (local Ray's object store).")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Extra requests/limits of the Job pod, merged over cpus and memory (no GPUs are needed).",
    )


class DatasetSpec(DatasetConfig):
    """Training conversations (OpenAI-style `messages` jsonl), read by the trainer pods."""

    path: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description=(
            "A jsonl file, a directory of *.jsonl, or a glob, as seen inside the trainer pods "
            "(e.g. /data/train.jsonl when claimName mounts a volume at /data). Immutable."
        ),
    )
    chat_template: str | None = Field(
        None,
        max_length=MAX_CHAT_TEMPLATE,
        description=(
            "Jinja chat template (inline, at most 256 KiB, or a file path in the pods). Default: the tokenizer's."
        ),
    )
    claim_name: DnsName | None = Field(
        None,
        description=(
            "PersistentVolumeClaim holding the dataset, mounted read-only at /data in the trainer pods. Immutable."
        ),
    )
    regenerate: RegenerateSpec | None = Field(
        None,
        description=(
            "Regenerate the assistant turns with the target before training (a batch Job; phase Regenerating). "
            "Needs trainer.output.claimName. Immutable."
        ),
    )

    @field_validator("path")
    @classmethod
    def _path_named(cls, value: str) -> str:
        return check_named(value, "dataset.path", "/data/train.jsonl")


class InferenceSpec(InferenceConfig):
    """The capture servers that run the target and capture its hidden states into Mooncake (SGLang with the
    dspark plugin, or the reference server); engine, port and serving options are the job config's."""

    image: ImageRef | None = Field(
        None,
        description=(
            "Image of the capture servers (SGLang with dspark for engine sglang; the trainer image serves the "
            "reference engine). Default: the operator's serving image (sglang) or trainer image (reference)."
        ),
    )
    replicas: int = Field(1, ge=1, le=1024, description="Number of capture servers (each one serves the whole target).")
    gpus: int | None = Field(
        None,
        ge=0,
        le=64,
        description=(
            "GPUs per server. Default: tensorParallelSize for sglang, 0 for reference. 0 (CPU) or >= "
            "tensorParallelSize."
        ),
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="CPU/memory for each server; GPUs come from `gpus`."
    )
    shm_size: Quantity = Field("16Gi", description="Size limit of the memory-backed /dev/shm volume.")
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra environment variables.")
    pod_template: PodTemplateOverride | None = Field(
        None,
        description=(
            "Partial pod template merged over the capture server pods (labels, annotations, imagePullSecrets, "
            "affinity, serviceAccountName, volumes, the capture container's envFrom and volumeMounts, "
            "securityContext). See docs/operator.md."
        ),
    )


class CaptureSpec(CaptureSettings):
    """How trainer ranks ask the inference servers for hidden states."""


class CheckpointSpec(CheckpointSettings):
    """How often the trainer checkpoints (the directory is output.mountPath/output.checkpointDir)."""


class ExportSpec(ExportSettings):
    """How the trainer writes the final draft, and where it publishes it (destination and its credentials)."""

    credentials_secret: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            "Secret in the job's namespace with the publish credentials, mounted read-only into the trainer pods: "
            "keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN) for an s3:// "
            "destination, HF_TOKEN for hf:// (default there: target.hfTokenSecretRef's token)."
        ),
    )


class OutputSpec(ConfigModel):
    """Where checkpoints and the exported draft are written: directories inside the output volume. Every field is
    immutable (changing one would leave the checkpoints of the running job behind)."""

    claim_name: DnsName | None = Field(
        None,
        description=(
            "PersistentVolumeClaim mounted at mountPath in the trainer pods (ReadWriteMany for more than one node). "
            "Required unless ephemeral is true."
        ),
    )
    ephemeral: bool = Field(
        False,
        description=(
            "true: no claimName, write checkpoints and the draft to an emptyDir that is lost with the trainer pods "
            "(a gang restart starts from scratch; for tests and demos). The job reports condition "
            "OutputPersistent=False and a Warning event."
        ),
    )
    mount_path: str = Field(
        "/output",
        min_length=2,
        max_length=1024,
        description=(
            "Mount path of the output volume in the trainer pods: absolute, not over a path the operator mounts "
            "(/etc/dspark, /dev/shm, /data, /models, the ServiceAccount token) or a system directory."
        ),
    )
    draft_dir: str = Field(
        "draft",
        min_length=1,
        max_length=1024,
        description="Directory inside the output volume (relative to mountPath, no '..') for the exported draft.",
    )
    checkpoint_dir: str = Field(
        "checkpoints",
        min_length=1,
        max_length=1024,
        description="Directory inside the output volume (relative to mountPath, no '..') for checkpoints.",
    )

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        problem = mount_path_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("draft_dir", "checkpoint_dir")
    @classmethod
    def _inside_the_volume(cls, value: str, info: Any) -> str:
        field = "trainer.output.draftDir" if info.field_name == "draft_dir" else "trainer.output.checkpointDir"
        problem = relative_dir_problem(field, value, "draft" if info.field_name == "draft_dir" else "checkpoints")
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _apart(self) -> OutputSpec:
        if overlaps(self.draft_dir, self.checkpoint_dir):
            raise ValueError(
                f"trainer.output.draftDir: {self.draft_dir!r} must not be, contain or lie inside "
                f"trainer.output.checkpointDir ({self.checkpoint_dir!r}): old checkpoints are pruned from there"
            )
        return self


class TrainerSpec(ConfigModel):
    """The torchrun FSDP2 trainer: a StatefulSet with one pod per node."""

    image: ImageRef | None = Field(
        None,
        description="Trainer image. Default: the operator's configured trainer image.",
    )
    nodes: int = Field(1, ge=1, le=1024, description="Trainer pods (torchrun --nnodes).")
    gpus_per_node: int = Field(
        8, ge=0, le=16, description="GPUs per trainer pod (torchrun --nproc-per-node); 0 runs one CPU process per pod."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="CPU/memory for each trainer pod; GPUs come from gpusPerNode."
    )
    optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="AdamW learning rate, warm-up and cosine schedule."
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="Batch sizes, run length (maxSteps or numEpochs) and seed."
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Checkpoint interval and retention (the directory: see output)."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Periodic evaluation on the held-out split.")
    capture: CaptureSpec = Field(default_factory=CaptureSpec, description="Hidden-state requests to inference.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Output volume for checkpoints and the draft.")
    export: ExportSpec = Field(
        default_factory=ExportSpec,
        description=(
            "Dtype of the exported draft, whether it includes the target's embedding and LM head, and where it is "
            "published after training (S3 or the Hugging Face Hub)."
        ),
    )
    termination_grace_period_seconds: int = Field(
        300, ge=0, le=86400, description="Seconds a trainer pod gets after SIGTERM to write a checkpoint."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra environment variables.")
    pod_template: PodTemplateOverride | None = Field(
        None,
        description=(
            "Partial pod template merged over the trainer pods (labels, annotations, imagePullSecrets, affinity, "
            "volumes, the trainer container's envFrom and volumeMounts, securityContext; no serviceAccountName). "
            "See docs/operator.md."
        ),
    )


class TransportSpec(TransportSettings):
    """The Mooncake transport between inference and trainer pods (the master's addresses are the operator's)."""

    rdma_resource_name: str = Field(
        "rdma/hca",
        min_length=1,
        max_length=253,
        pattern=RESOURCE_NAME,
        description="Extended resource that grants RDMA devices to a pod (e.g. rdma/hca, rdma/ib); protocol rdma.",
    )
    rdma_resource_count: int = Field(1, ge=1, le=64, description="How many of rdmaResourceName each pod requests.")
    master_image: ImageRef | None = Field(
        None,
        description="Image with mooncake_master for the master Deployment. Default: the trainer image.",
    )
    master_resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="CPU/memory for the Mooncake master."
    )
    master_pod_template: PodTemplateOverride | None = Field(
        None,
        description=(
            "Partial pod template merged over the Mooncake master pod (as inference.podTemplate; its container is "
            "mooncake-master). See docs/operator.md."
        ),
    )


class RunPolicySpec(ConfigModel):
    """Restarts, deadlines, clean-up and suspension, as for Kubernetes Jobs."""

    backoff_limit: int = Field(
        3, ge=0, le=1000, description="Gang restarts of the trainer allowed before the job is marked Failed."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Seconds the job may run (from start or last resume) before it is marked Failed."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job (and its children) this many seconds after it Succeeded or Failed."
    )
    suspend: bool = Field(
        False,
        description=(
            "true: ask the trainer to checkpoint, then scale every child to zero. false: scale back up; the trainer "
            "resumes from its latest checkpoint."
        ),
    )
    suspend_timeout_seconds: int = Field(
        600, ge=0, le=86400, description="Longest wait for the trainer's checkpoint before suspending anyway."
    )


class TolerationOperator(StrEnum):
    """Toleration operator."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Taint effect."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ConfigModel):
    """A pod toleration (same meaning as in a Pod spec)."""

    key: str | None = Field(None, max_length=316, description="Taint key; empty with operator Exists matches all.")
    operator: TolerationOperator = Field(TolerationOperator.EQUAL, description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value for operator Equal.")
    effect: TaintEffect | None = Field(None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )

    @model_validator(mode="after")
    def _as_kubernetes_accepts(self) -> Toleration:
        # The rules of a Pod's tolerations, said here with the field the user wrote.
        if self.operator == TolerationOperator.EXISTS and self.value:
            raise ValueError(f"value: must be empty with operator Exists (got {self.value!r}); drop it or use Equal")
        if not self.key and self.operator != TolerationOperator.EXISTS:
            raise ValueError("operator: must be Exists when key is empty (an empty key matches every taint)")
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            raise ValueError("tolerationSeconds: only applies with effect NoExecute; set effect: NoExecute or drop it")
        return self


class SchedulingSpec(ConfigModel):
    """Where and with which priority the job's pods run."""

    priority_class_name: DnsName | None = Field(None, description="PriorityClass of every pod.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels every pod requires (e.g. a GPU product label)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations of every pod (e.g. for tainted GPU nodes)."
    )
    scheduler_name: DnsName | None = Field(
        None,
        description="Scheduler for every pod (e.g. a gang scheduler).",
    )
    queue_name: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description=(
            "Kueue LocalQueue of the job's namespace. The job becomes one Kueue Workload (<job>-gang, labelled "
            "kueue.x-k8s.io/queue-name, so this must be a label value) holding every pod of the job: nothing starts "
            "until Kueue admits the whole gang (phase Queued until then); a preempted job checkpoints and queues "
            "again. The Workload's priority is priorityClassName's value."
        ),
    )

    @field_validator("queue_name")
    @classmethod
    def _queue_is_a_label_value(cls, value: str | None) -> str | None:
        if value is not None and not re.match(LABEL_VALUE, value):
            raise ValueError(
                f"{value!r} is not a label value (it becomes the Workload's kueue.x-k8s.io/queue-name label): at "
                "most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.', alphanumeric at both ends"
            )
        return value

    gpu_resource_name: str = Field(
        "nvidia.com/gpu", min_length=1, max_length=253, pattern=RESOURCE_NAME, description="Extended resource of GPUs."
    )


class MetricsSpec(ConfigModel):
    """Prometheus metrics of the trainer (rank 0), SGLang and the Mooncake master."""

    enabled: bool = Field(True, description="Serve metrics (trainer /metrics on port) and label pods for scraping.")
    port: int = Field(9400, ge=1, le=65535, description="Port of the trainer's metrics server.")
    pod_monitor: bool = Field(
        True,
        description="Create a PodMonitor (monitoring.coreos.com/v1) when the Prometheus Operator API exists.",
    )
    interval: str = Field(
        "30s", pattern=r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$", description="Scrape interval."
    )


class DSparkTrainingJobSpec(ConfigModel):
    """Desired state of a DSpark draft training job."""

    target: TargetSpec = Field(..., description="The target model (immutable).")
    draft: DraftOptions = Field(
        default_factory=DraftOptions,
        description="DSpark draft architecture and loss options; architecture fields are immutable.",
    )
    dataset: DatasetSpec = Field(..., description="Training data.")
    inference: InferenceSpec = Field(default_factory=InferenceSpec, description="SGLang capture servers.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="The torchrun trainer gang.")
    transport: TransportSpec = Field(default_factory=TransportSpec, description="Mooncake transport.")
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec, description="Restarts, deadline, TTL, suspend.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Placement and priority.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Prometheus metrics and PodMonitor.")
    evaluation: EvaluationConfig | None = Field(
        None,
        description=(
            "After training, the trainer measures the draft by real speculative decoding with the target (dspark "
            "eval on the export): tau, per-position acceptance and speedup go to status.progress.evaluation and "
            "to Prometheus (dspark_eval_spec_*). Absent: no evaluation."
        ),
    )
