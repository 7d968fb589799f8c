"""``status.progress`` of a DSparkTrainingJob: the part of the job's status the trainer owns (pydantic only).

The one model of it: the operator's status model (``dspark_operator.api.status``) and the CRD schema embed
:class:`Progress`, the operator reads the trainer's reports through it, and the trainer writes it only through
:func:`progress_patch` (called by ``dspark_trainer.status_reporter.StatusReporter``).

Status models ignore unknown keys when reading, so a status written by a newer or older version never fails
a reader; the CRD schema still rejects unknown keys on writes.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

log = logging.getLogger(__name__)


class StatusModel(BaseModel):
    """camelCase on the wire, lenient on read."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", use_enum_values=True)

    def to_wire(self) -> dict[str, object]:
        """The camelCase JSON-compatible dict, without unset (None) fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class TrainerState(StrEnum):
    """What the trainer reports about itself in status.progress.state."""

    STARTING = "Starting"
    RUNNING = "Running"
    CHECKPOINTED = "Checkpointed"
    COMPLETED = "Completed"
    FAILED = "Failed"


URGENT_STATES = frozenset({TrainerState.CHECKPOINTED.value, TrainerState.COMPLETED.value, TrainerState.FAILED.value})
"""States the trainer reports at once (not throttled)."""


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
    draft_uri: str | None = Field(
        None, max_length=1024, description="Where the draft was published (trainer.export.destination), when it was."
    )
    message: str | None = Field(None, max_length=4096, description="Free-form note from the trainer.")
    evaluation: EvaluationResult | None = Field(
        None, description="Real speculative decoding of the export (spec.evaluation), once training is done."
    )
    updated_time: str | None = Field(
        None, description="When the trainer last reported (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


REPORTED_FIELDS: tuple[str, ...] = tuple(name for name in Progress.model_fields if name != "updated_time")
"""The snake_case progress fields the trainer reports (updatedTime is stamped when a patch is sent)."""


def progress_patch(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's status.progress merge patch from progress fields: camelCase keys, values the schema
    accepts. Keys may be snake_case or camelCase; unknown keys and updatedTime are dropped; non-finite numbers
    become null (in lists: 0); counts are whole and not negative; texts and lists are cut to the schema's
    limits; a value the schema still refuses (e.g. an unknown state) is dropped with a warning. None stays
    None (a merge patch's null clears the key)."""
    return _patch(Progress, fields, keep_none=True, allowed=frozenset(REPORTED_FIELDS))


def _patch(
    model: type[StatusModel], fields: Mapping[str, Any], *, keep_none: bool, allowed: frozenset[str] | None = None
) -> dict[str, Any]:
    by_key = {**{name: name for name in model.model_fields}, **{_alias(model, n): n for n in model.model_fields}}
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        name = by_key.get(str(key))
        if name is None or (allowed is not None and name not in allowed):
            continue
        coerced = None if value is None else _coerce(model.model_fields[name], value)
        if coerced is not None or keep_none:
            clean[name] = coerced
    while True:
        try:
            parsed = model.model_validate(clean)
            break
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            log.warning("status.progress: dropped %s (%s)", ", ".join(sorted(bad)), exc.errors()[0]["msg"])
            if not bad & clean.keys():
                return {}
            clean = {k: v for k, v in clean.items() if k not in bad}
    wire: dict[str, Any] = {}
    for name in clean:
        value = getattr(parsed, name)
        if isinstance(value, StatusModel):
            wire[_alias(model, name)] = value.to_wire()
        elif value is not None or keep_none:
            wire[_alias(model, name)] = parsed.model_dump(mode="json", include={name})[name]
    return wire


def _alias(model: type[StatusModel], name: str) -> str:
    return model.model_fields[name].alias or name


def _coerce(info: FieldInfo, value: Any) -> Any:
    kind = _base(info.annotation)
    limit = next((m.max_length for m in info.metadata if getattr(m, "max_length", None) is not None), None)
    if kind is int:
        number = _finite(value)
        return None if number is None else max(0, int(number))
    if kind is float:
        return _finite(value)
    if kind is list:
        items = [_finite(v) for v in list(value)[:limit]]
        return [0.0 if v is None else v for v in items]
    if isinstance(kind, type) and issubclass(kind, StatusModel):
        return _patch(kind, value, keep_none=False) if isinstance(value, Mapping) else None
    text = str(value)
    return text[:limit] if limit is not None else text


def _base(annotation: Any) -> Any:
    """The type of an optional field (``X | None`` -> X; ``list[float]`` -> list)."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return get_origin(annotation) or annotation


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
