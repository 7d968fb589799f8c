"""The `status` of a DSparkTrainingJob: the single source of the CRD's status schema.

The operator owns everything except `progress`, which the trainer's rank 0 patches through
:class:`dspark_trainer.status_reporter.StatusReporter` (the trainer's Role allows patching the
status subresource of its own job only, and the chart's ValidatingAdmissionPolicy refuses a patch by
the trainer's ServiceAccount that touches any other field: :data:`OPERATOR_STATUS_FIELDS`).

Status models ignore unknown keys when reading, so an operator never fails on a status written
by a newer or older version; the CRD schema still rejects unknown keys on writes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class StatusModel(BaseModel):
    """camelCase on the wire, lenient on read."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", use_enum_values=True)

    def to_wire(self) -> dict[str, object]:
        """The camelCase JSON-compatible dict, without unset (None) fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Phase(StrEnum):
    """Summary of where the job is in its life."""

    PENDING = "Pending"
    STARTING = "Starting"
    REGENERATING = "Regenerating"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})


class ConditionType(StrEnum):
    """Condition types of a job (metav1.Condition style)."""

    CREATED = "Created"
    INFERENCE_READY = "InferenceReady"
    TRANSPORT_READY = "TransportReady"
    REGENERATING = "Regenerating"
    TRAINER_READY = "TrainerReady"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SPEC_REJECTED = "SpecRejected"  # the latest generation is not used (the job runs on status.acceptedSpec)
    SCHEDULABLE = "Schedulable"  # every pod of the job can be placed (False: why not)
    TARGET_LAYERS_CHECKED = "TargetLayersChecked"  # draft.targetLayerIds checked against the target's depth
    OUTPUT_PERSISTENT = "OutputPersistent"  # checkpoints and the draft go to a PersistentVolumeClaim
    READY = "Ready"  # every child is ready and the trainer runs on the latest spec (False: the reason why not)


class ConditionStatus(StrEnum):
    """Condition status."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class TrainerState(StrEnum):
    """What the trainer reports about itself in status.progress.state."""

    STARTING = "Starting"
    RUNNING = "Running"
    CHECKPOINTED = "Checkpointed"
    COMPLETED = "Completed"
    FAILED = "Failed"


class Condition(StatusModel):
    """One aspect of the job's state (same shape as metav1.Condition)."""

    type: str = Field(..., min_length=1, max_length=316, description="Condition type, e.g. Running or Failed.")
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str = Field(
        ..., min_length=1, max_length=1024, description="CamelCase machine-readable reason of the last transition."
    )
    message: str = Field("", max_length=32768, description="Human-readable details of the last transition.")
    last_transition_time: str = Field(
        ..., description="When the condition last changed status (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


class EvaluationResult(StatusModel):
    """The draft measured by real speculative decoding with its target after training (spec.evaluation)."""

    prompt_set: str | None = Field(None, max_length=4096, description="The prompts decoded.")
    num_prompts: int | None = Field(None, ge=0, description="How many prompts were decoded.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature (0: greedy).")
    tau: float | None = Field(None, ge=0, description="Mean tokens per verification round (accepted drafts + 1).")
    accept_rate: list[float] | None = Field(
        None, max_length=64, description="Per draft position: rounds accepting more than k / rounds proposing more."
    )
    speedup: float | None = Field(None, ge=0, description="Speculative tokens/s over target-only tokens/s.")
    tokens_per_second: float | None = Field(None, ge=0, description="Speculative decoding tokens/s.")
    baseline_tokens_per_second: float | None = Field(None, ge=0, description="Target-only decoding tokens/s.")
    confidence_ece: float | None = Field(None, ge=0, description="Expected calibration error of the confidence head.")
    message: str | None = Field(None, max_length=4096, description="Why the evaluation failed, if it did.")


class Progress(StatusModel):
    """Training progress, reported by the trainer's rank 0 (throttled)."""

    state: TrainerState | None = Field(
        None, description="Trainer state: Starting, Running, Checkpointed, Completed or Failed."
    )
    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total: int | None = Field(None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(None, ge=0, description="Passes over the training split done (fractional).")
    samples: int | None = Field(None, ge=0, description="Training samples consumed.")
    loss: float | None = Field(None, description="Latest training loss (total).")
    tau: float | None = Field(None, ge=0, description="Latest expected accepted tokens per block (tau).")
    accept_rate: list[float] | None = Field(
        None, max_length=64, description="Latest acceptance rate per draft position (index 0 is the first slot)."
    )
    throughput: float | None = Field(None, ge=0, description="Training samples per second (recent average).")
    tokens_per_second: float | None = Field(None, ge=0, description="Training tokens per second (recent average).")
    last_checkpoint: str | None = Field(None, max_length=4096, description="Path of the latest complete checkpoint.")
    last_checkpoint_step: int | None = Field(None, ge=0, description="Step of the latest complete checkpoint.")
    checkpoint_ack: str | None = Field(
        None, max_length=128, description="Id of the operator's checkpoint request this checkpoint answers."
    )
    draft_path: str | None = Field(None, max_length=4096, description="Where the exported draft was written.")
    message: str | None = Field(None, max_length=4096, description="Free-form note from the trainer.")
    evaluation: EvaluationResult | None = Field(
        None, description="Real speculative decoding of the export (spec.evaluation), once training is done."
    )
    updated_time: str | None = Field(
        None, description="When the trainer last reported (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class CheckpointRequest(StatusModel):
    """The operator asks the trainer to write a checkpoint now (e.g. before suspending)."""

    id: str = Field(
        ..., min_length=1, max_length=128, description="Request id; the trainer echoes it in checkpointAck."
    )
    reason: str = Field(..., min_length=1, max_length=128, description="Why, e.g. Suspend.")
    requested_time: str = Field(
        ..., description="When the request was made (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class GangMember(StatusModel):
    """A trainer pod as last seen healthy."""

    name: str = Field(..., max_length=253, description="Pod name.")
    uid: str = Field(..., max_length=64, description="Pod uid.")
    restart_count: int = Field(0, ge=0, description="Sum of container restart counts.")


class GangStatus(StatusModel):
    """Operator bookkeeping for gang restarts of the trainer pods."""

    members: list[GangMember] = Field(
        default_factory=list,
        max_length=1024,
        description="The running gang (empty until every trainer pod runs); a change means a failure.",
    )
    terminating: list[str] = Field(
        default_factory=list, max_length=2048, description="Uids of trainer pods the operator is deleting."
    )
    revision: str | None = Field(None, max_length=253, description="StatefulSet revision of the running gang.")


class DSparkTrainingJobStatus(StatusModel):
    """Observed state of a DSpark draft training job."""

    phase: Phase | None = Field(
        None, description="Pending, Starting, Regenerating, Running, Suspended, Succeeded or Failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list, max_length=32, description="Conditions (metav1.Condition style), one per type."
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last reconciled.")
    start_time: str | None = Field(
        None, description="When the job started (reset on resume).", json_schema_extra={"format": "date-time"}
    )
    completion_time: str | None = Field(
        None, description="When the job Succeeded or Failed.", json_schema_extra={"format": "date-time"}
    )
    restarts: int = Field(0, ge=0, description="Gang restarts of the trainer so far (compared with backoffLimit).")
    progress: Progress | None = Field(None, description="Training progress reported by the trainer.")
    draft_path: str | None = Field(None, max_length=4096, description="Where the trained draft is (when Succeeded).")
    checkpoint_request: CheckpointRequest | None = Field(
        None, description="Pending request for the trainer to checkpoint (suspend handshake)."
    )
    gang: GangStatus | None = Field(None, description="Operator bookkeeping for gang restarts.")
    transport_protocol: str | None = Field(
        None,
        max_length=16,
        description=(
            "The Mooncake protocol the job's pods use (rdma or tcp): spec.transport.protocol, with auto decided once "
            "when the job's children are first created (rdma when a node advertises transport.rdmaResourceName)."
        ),
    )
    accepted_generation: int | None = Field(
        None,
        ge=0,
        description=(
            "metadata.generation of the spec the children are built from: the latest one that passed every check. "
            "A later generation the operator rejects (condition SpecRejected) leaves it, and the job, unchanged."
        ),
    )
    accepted_spec: dict[str, Any] | None = Field(
        None, description="The spec of acceptedGeneration (the last good spec), as the API server stored it."
    )

    def condition(self, ctype: str) -> Condition | None:
        """The condition of the given type, if present."""
        for cond in self.conditions:
            if cond.type == ctype:
                return cond
        return None

    def is_true(self, ctype: str) -> bool:
        """Whether the condition of the given type is present and True."""
        cond = self.condition(ctype)
        return cond is not None and cond.status == ConditionStatus.TRUE


OPERATOR_STATUS_FIELDS: tuple[str, ...] = tuple(
    (info.alias or name) for name, info in DSparkTrainingJobStatus.model_fields.items() if name != "progress"
)
"""The status keys (camelCase) only the operator writes; `progress` is the trainer's."""
