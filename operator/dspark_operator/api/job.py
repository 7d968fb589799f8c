"""A parsed view of one DSparkTrainingJob object, and the checks the CRD schema cannot express."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from dspark_trainer.capture.sglang_args import owned_flag
from dspark_trainer.config import InferenceEngine
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_operator.api.status import DSparkTrainingJobStatus

# Child names are `<job>-<suffix>`; StatefulSet pods add `-<ordinal>` and the controller-revision-hash
# label adds `-<hash>`, and Service names must be DNS-1035 labels (<= 63, start with a letter).
MAX_JOB_NAME_LENGTH = 40
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

RESERVED_ENV_PREFIXES = ("DSPARK_", "MOONCAKE_")
RESERVED_ENV_NAMES = frozenset({"SGLANG_PLUGINS", "HF_TOKEN", "NODE_RANK"})


@dataclasses.dataclass(frozen=True)
class InvalidSpec:
    """A spec problem: the field path (e.g. spec.trainer.nodes) and what is wrong with it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclasses.dataclass(frozen=True)
class JobView:
    """The parts of a job the operator works with. `spec` is None when `invalid` says why."""

    name: str
    namespace: str
    uid: str
    generation: int
    resource_version: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    creation_timestamp: str | None
    deletion_timestamp: str | None
    spec: DSparkTrainingJobSpec | None
    invalid: InvalidSpec | None
    status: DSparkTrainingJobStatus
    raw_status: Mapping[str, Any]


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = ["spec"]
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            # pydantic reports field names (snake_case) or aliases depending on the input key.
            parts.append(to_camel(item) if "_" in item else item)
    return ".".join(parts)


def _validation_error_to_invalid(err: ValidationError) -> InvalidSpec:
    first = err.errors()[0]
    path = _loc_to_path(tuple(x for x in first["loc"] if x != "__root__"))
    msg = str(first["msg"])
    # Model validators raise "field: message"; prefer their own field name when they give one.
    prefix = msg.removeprefix("Value error, ")
    head, sep, rest = prefix.partition(": ")
    if sep and re.match(r"^[A-Za-z][A-Za-z0-9.\[\]]*$", head) and "." in head:
        section = path.split(".")[1] if path.count(".") >= 1 else ""
        if section and head.startswith(section):
            return InvalidSpec(f"spec.{head}", rest)
        if head.split(".")[0] in {"draft", "dataset", "target", "optimizer"}:
            return InvalidSpec(f"{path}.{head.split('.', 1)[1]}" if path != "spec" else f"spec.{head}", rest)
    return InvalidSpec(path, prefix)


def check_semantics(name: str, spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """Checks the CRD schema does not express. Returns the first problem, or None."""
    if len(name) > MAX_JOB_NAME_LENGTH or not JOB_NAME_RE.match(name):
        return InvalidSpec(
            "metadata.name",
            f"{name!r} must be at most {MAX_JOB_NAME_LENGTH} characters of a-z, 0-9 and '-', start with a letter "
            "and end with a letter or digit (it prefixes the names of Services and pods)",
        )
    tr = spec.trainer
    ranks = tr.nodes * max(tr.gpus_per_node, 1)
    per_step = ranks * tr.schedule.micro_batch_size
    if tr.schedule.global_batch_size % per_step:
        return InvalidSpec(
            "spec.trainer.schedule.globalBatchSize",
            f"{tr.schedule.global_batch_size} is not a multiple of nodes x max(gpusPerNode, 1) x microBatchSize "
            f"= {tr.nodes} x {max(tr.gpus_per_node, 1)} x {tr.schedule.micro_batch_size} = {per_step}",
        )
    inf = spec.inference
    if inf.gpus is not None and 0 < inf.gpus < inf.tensor_parallel_size:
        return InvalidSpec(
            "spec.inference.gpus", f"{inf.gpus} is less than tensorParallelSize={inf.tensor_parallel_size}"
        )
    if spec.inference.extra_args and spec.inference.engine != InferenceEngine.SGLANG:
        return InvalidSpec("spec.inference.extraArgs", "are SGLang flags: only for inference.engine sglang")
    for i, arg in enumerate(spec.inference.extra_args):
        flag = owned_flag(arg)
        if flag is not None:
            return InvalidSpec(
                f"spec.inference.extraArgs[{i}]", f"{flag} is set by the operator from the spec and may not be given"
            )
    for section, env in (("inference", spec.inference.env), ("trainer", spec.trainer.env)):
        for i, var in enumerate(env):
            if var.name in RESERVED_ENV_NAMES or var.name.startswith(RESERVED_ENV_PREFIXES):
                return InvalidSpec(f"spec.{section}.env[{i}].name", f"{var.name} is reserved for the operator")
    if spec.trainer.output.draft_dir.strip("/") == spec.trainer.output.checkpoint_dir.strip("/"):
        return InvalidSpec("spec.trainer.output.draftDir", "must differ from checkpointDir")
    if spec.dataset.regenerate is not None:
        return _check_regenerate(spec)
    return None


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s not in ("", "."))


def _check_regenerate(spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    regen = spec.dataset.regenerate
    assert regen is not None
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


def parse_spec(name: str, raw_spec: Any) -> tuple[DSparkTrainingJobSpec | None, InvalidSpec | None]:
    """Validate a raw spec; returns (spec, None) or (None, problem)."""
    if not isinstance(raw_spec, Mapping):
        return None, InvalidSpec("spec", "is missing or not an object")
    try:
        spec = DSparkTrainingJobSpec.model_validate(dict(raw_spec))
    except ValidationError as err:
        return None, _validation_error_to_invalid(err)
    problem = check_semantics(name, spec)
    if problem is not None:
        return None, problem
    # The job config rendered from the spec must itself be valid.
    from dspark_operator.builders.common import BuildContext  # local imports: builders import api
    from dspark_operator.builders.config import render_job_config

    try:
        ctx = BuildContext(name=name, namespace="default", uid="", spec=spec, trainer_image="", inference_image="")
        render_job_config(ctx)
    except ValidationError as err:
        inv = _validation_error_to_invalid(err)
        return None, InvalidSpec(inv.field.replace("spec.", "spec.trainer.", 1), inv.message)
    except ValueError as err:
        return None, InvalidSpec("spec", str(err))
    return spec, None


def parse_status(raw: Any) -> DSparkTrainingJobStatus:
    """Parse a status leniently: anything unreadable is dropped rather than failing the operator."""
    if not isinstance(raw, Mapping):
        return DSparkTrainingJobStatus()
    try:
        return DSparkTrainingJobStatus.model_validate(dict(raw))
    except ValidationError:
        data: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                DSparkTrainingJobStatus.model_validate({key: value})
            except ValidationError:
                continue
            data[key] = value
        return DSparkTrainingJobStatus.model_validate(data)


def parse_job(body: Mapping[str, Any]) -> JobView:
    """Parse a job object as returned by the API server."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    spec, invalid = parse_spec(name, body.get("spec"))
    raw_status = body.get("status") or {}
    return JobView(
        name=name,
        namespace=str(meta.get("namespace", "default")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        resource_version=str(meta.get("resourceVersion", "")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        creation_timestamp=meta.get("creationTimestamp"),
        deletion_timestamp=meta.get("deletionTimestamp"),
        spec=spec,
        invalid=invalid,
        status=parse_status(raw_status),
        raw_status=raw_status if isinstance(raw_status, Mapping) else {},
    )
