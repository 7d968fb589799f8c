"""The pod contract: the one rendered job config that every role of a job reads.

The operator renders a :class:`JobConfig` from a DSparkTrainingJob into one ConfigMap file
(``/etc/dspark/job.yaml``) and names it in one environment variable (``DSPARK_JOB_CONFIG``). Every
role loads it with :func:`load_job_config` and takes what it needs:

- the trainer (``dspark train``): everything but ``inference``;
- the capture server (``dspark capture-server``): ``inference`` (engine, port, SGLang flags or the
  reference server's batching), ``target``, the layer ids (``draft``), ``dataset.maxLength``, ``transport``;
- the SGLang capture plugin (inside SGLang's scheduler processes): ``transport``;
- the Mooncake master (``dspark mooncake-master``): the ports in ``transport``.

The embedded one-machine pipeline (``dspark train --local``) writes the same file with loopback
addresses and starts the same roles from it. The CRD spec reuses these models (or their shared bases)
for the fields it exposes, so the defaults are one definition.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from dspark_trainer.config.base import ConfigModel
from dspark_trainer.config.draft import DraftOptions, sglang_layer_problem
from dspark_trainer.config.training import (
    CaptureClientConfig,
    CheckpointConfig,
    ConfigError,
    DatasetConfig,
    EvalConfig,
    EvaluationConfig,
    ExportConfig,
    MetricsConfig,
    OptimizerConfig,
    RuntimeConfig,
    ScheduleConfig,
    TargetConfig,
    format_validation_error,
    read_config_mapping,
)
from dspark_trainer.config.transport import TransportConfig

JOB_CONFIG_ENV = "DSPARK_JOB_CONFIG"
"""The environment variable naming the job config file in every pod of a job."""
JOB_CONFIG_DIR = "/etc/dspark"
"""Where the job's ConfigMap is mounted in its pods."""
JOB_CONFIG_FILE = "job.yaml"
"""The ConfigMap key (and file name) of the rendered job config."""
JOB_CONFIG_PATH = f"{JOB_CONFIG_DIR}/{JOB_CONFIG_FILE}"

POD_IP_ENV = "DSPARK_POD_IP"
"""The pod's IP (downward API): the address Mooncake clients advertise to their peers."""
POD_NAME_ENV = "DSPARK_POD_NAME"
"""A trainer pod's name (downward API): its node rank is the ordinal suffix when POD_INDEX_ENV is empty."""
POD_INDEX_ENV = "DSPARK_POD_INDEX"
"""A trainer pod's ordinal (the StatefulSet pod-index label, downward API): torchrun's --node-rank."""


# The DSparkTrainingJob API (the operator's CRD), named once for the operator and the trainer.
GROUP = "dspark.io"
VERSION = "v1alpha1"
KIND = "DSparkTrainingJob"
PLURAL = "dsparktrainingjobs"


class JobIdentity(ConfigModel):
    """The DSparkTrainingJob this config was rendered for (absent outside Kubernetes): the trainer
    patches this job's status.progress."""

    name: str = Field(..., min_length=1, max_length=253, description="Name of the DSparkTrainingJob.")
    namespace: str = Field(..., min_length=1, max_length=63, description="Namespace of the job.")
    uid: str = Field("", max_length=64, description="UID of the job (for logs; the name is the key).")

    @property
    def path(self) -> str:
        """REST path of the job (``+ "/status"``: its status subresource)."""
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}"


class InferenceEngine(StrEnum):
    """What serves the target and captures its hidden states."""

    SGLANG = "sglang"
    REFERENCE = "reference"


class ReferenceServerConfig(ConfigModel):
    """The reference capture server (engine `reference`: Hugging Face transformers on the target)."""

    max_queue: int = Field(64, ge=1, le=65536, description="Requests accepted and not answered yet; more get 429.")
    max_batch_size: int = Field(8, ge=1, le=1024, description="Requests per forward batch.")
    max_batch_tokens: int = Field(32768, ge=1, description="Tokens per forward batch.")
    batch_window_ms: float = Field(5.0, ge=0, le=10_000, description="How long a batch waits to fill (ms).")
    batch_mode: Literal["auto", "equal_length", "per_sample"] = Field(
        "auto",
        description=(
            "equal_length: stack same-length requests into one forward; per_sample: one forward each (exact by "
            "construction); auto: per_sample on CUDA, equal_length on CPU."
        ),
    )
    device: str = Field(
        "auto",
        min_length=1,
        max_length=32,
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="torch device of the target: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N.",
    )


class InferenceConfig(ConfigModel):
    """The capture servers: which engine, its port and its serving options."""

    engine: InferenceEngine = Field(
        InferenceEngine.SGLANG,
        description=(
            "sglang: SGLang with the dspark capture plugin (production). reference: the reference capture server "
            "on Hugging Face transformers (CPU, small clusters, tests); same HTTP contract and Mooncake records."
        ),
    )
    port: int = Field(30000, ge=1, le=65535, description="HTTP port of the servers.")
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="Tensor-parallel size of each SGLang server (--tp-size); 1 for reference."
    )
    mem_fraction_static: float | None = Field(
        None, gt=0, lt=1, description="SGLang --mem-fraction-static (fraction of GPU memory for weights and KV cache)."
    )
    context_length: int | None = Field(
        None,
        ge=16,
        le=1_048_576,
        description=(
            "Longest sequence a server accepts (SGLang --context-length). Default: dataset.maxLength + 1 (a capture "
            "generates one token), or dataset.maxLength + regenerate.maxTokens when the dataset is regenerated."
        ),
    )
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=128,
        description="Extra command-line arguments for sglang.launch_server (not for the reference engine).",
    )
    reference: ReferenceServerConfig = Field(
        default_factory=ReferenceServerConfig, description="Options of the reference engine."
    )


class JobConfig(ConfigModel):
    """Everything the pods of one job (or one local run) need: the single rendered contract."""

    job: JobIdentity | None = Field(None, description="The DSparkTrainingJob (set by the operator).")
    target: TargetConfig
    draft: DraftOptions = Field(default_factory=DraftOptions)
    dataset: DatasetConfig
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    evaluation: EvaluationConfig | None = Field(
        None, description="Speculative-decoding evaluation of the export after training (none: skipped)."
    )
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    capture: CaptureClientConfig = Field(default_factory=CaptureClientConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    output_dir: str = Field("/output/draft", description="Where the exported draft checkpoint is written.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Dtype and contents of the exported draft.")

    @model_validator(mode="after")
    def _check_run(self) -> JobConfig:
        sched = self.schedule
        if sched.global_batch_size % sched.micro_batch_size:
            raise ValueError(
                f"schedule.globalBatchSize ({sched.global_batch_size}) must be a multiple of "
                f"schedule.microBatchSize ({sched.micro_batch_size})"
            )
        problem = sglang_layer_problem(self.draft.target_layer_ids)
        if self.inference.engine == InferenceEngine.SGLANG and problem:
            raise ValueError(f"draft.targetLayerIds {problem}")
        return self

    @property
    def capture_server_api(self) -> Literal["dspark", "sglang"]:
        """The HTTP contract of the capture endpoints: `/capture` (reference) or `/generate` (SGLang)."""
        return "sglang" if self.inference.engine == InferenceEngine.SGLANG else "dspark"

    @property
    def context_length(self) -> int | None:
        """The servers' longest sequence: explicit, else maxLength + 1 (one generated token per capture)."""
        return self.inference.context_length or self.dataset.max_length + 1

    @classmethod
    def from_file(cls, path: str | Path) -> JobConfig:
        """Read a YAML or JSON config file; raises ConfigError naming the offending field."""
        return cls.from_mapping(read_config_mapping(path), source=str(path))

    @classmethod
    def from_mapping(cls, data: object, source: str = "config") -> JobConfig:
        """Validate a parsed config; raises ConfigError naming the offending field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None


def job_config_path(path: str | Path | None = None) -> Path:
    """The config file to read: `path`, else $DSPARK_JOB_CONFIG; ConfigError when neither is given."""
    if path:
        return Path(path)
    env = os.environ.get(JOB_CONFIG_ENV, "").strip()
    if env:
        return Path(env)
    raise ConfigError(f"no job config: give --config FILE or set {JOB_CONFIG_ENV}")


def load_job_config(path: str | Path | None = None) -> JobConfig:
    """The job config every role starts from (`path`, else $DSPARK_JOB_CONFIG); raises ConfigError."""
    return JobConfig.from_file(job_config_path(path))
