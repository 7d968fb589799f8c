"""The `status` of a DSparkTrainingJob: the single source of the CRD's status schema.

The operator owns everything except `progress`, whose model (:class:`Progress`) is the trainer's,
``dspark_trainer.config.progress``: the trainer's rank 0 patches it through
:class:`dspark_trainer.status_reporter.StatusReporter` (the trainer's Role allows patching the
status subresource of its own job only, and the chart's ValidatingAdmissionPolicy refuses a patch by
the trainer's ServiceAccount that touches any other field: :data:`OPERATOR_STATUS_FIELDS`). The
operator writes its keys only through ``dspark_operator.reconcile.status_patch``.

Status models (:class:`StatusModel`) ignore unknown keys when reading, so an operator never fails on
a status written by a newer or older version; the CRD schema still rejects unknown keys on writes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from dspark_trainer.config.progress import Progress, StatusModel
from pydantic import Field


class Phase(StrEnum):
    """Summary of where the job is in its life."""

    PENDING = "Pending"
    QUEUED = "Queued"  # waiting for Kueue to admit the whole gang (spec.scheduling.queueName)
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
    ADMITTED = "Admitted"  # Kueue reserved quota for the whole gang (spec.scheduling.queueName; False: why not)
    READY = "Ready"  # every child is ready and the trainer runs on the latest spec (False: the reason why not)


class ConditionStatus(StrEnum):
    """Condition status."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


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
        None, description="Pending, Queued, Starting, Regenerating, Running, Suspended, Succeeded or Failed."
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
    draft_uri: str | None = Field(
        None, max_length=1024, description="Where the draft was published (spec.trainer.export.destination)."
    )
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
    cluster_queue: str | None = Field(
        None,
        max_length=253,
        description=(
            "The Kueue ClusterQueue of the job (spec.scheduling.queueName): the one that admitted it, or while Queued "
            "the one its LocalQueue points to."
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

