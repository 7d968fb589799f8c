"""A parsed view of one DSparkTrainingJob object, and the checks the CRD schema cannot express."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from dspark_operator.api.checks import (
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    RESERVED_TRAINER_ENV_NAMES,
    RESERVED_TRAINER_PORTS,
    check_config_size,
    first_problem,
)
from dspark_operator.api.problems import InvalidSpec
from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_operator.api.status import DSparkTrainingJobStatus

__all__ = [
    "MAX_JOB_NAME_LENGTH",
    "RESERVED_ENV_NAMES",
    "RESERVED_ENV_PREFIXES",
    "RESERVED_TRAINER_ENV_NAMES",
    "RESERVED_TRAINER_PORTS",
    "InvalidSpec",
    "JobView",
    "check_semantics",
    "parse_accepted_spec",
    "parse_job",
    "parse_spec",
    "parse_status",
]

# Child names are `<job>-<suffix>`; StatefulSet pods add `-<ordinal>` and the controller-revision-hash
# label adds `-<hash>`, and Service names must be DNS-1035 labels (<= 63, start with a letter).
MAX_JOB_NAME_LENGTH = 40
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class JobView:
    """The parts of a job the operator works with. `spec` is None when `invalid` says why.

    As parsed, `spec` is the latest generation's; the reconciler replaces it with the spec it works from
    (:func:`dspark_operator.acceptance.effective_view`)."""

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
    raw_spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Set by the reconciler once it chose the spec to work from (see dspark_operator.acceptance):
    spec_generation: int | None = None  # the generation `spec` belongs to (older than `generation` on a fallback)
    rejected: InvalidSpec | None = None  # why the latest generation is not used while `spec` is an older one


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
    if sep and re.match(r"^[a-z][A-Za-z0-9]*$", head) and head != path.rsplit(".", 1)[-1].split("[")[0]:
        return InvalidSpec(f"{path}.{head}", rest)  # a model validator naming one of its own fields
    return InvalidSpec(path, prefix)


def check_semantics(name: str, spec: DSparkTrainingJobSpec) -> InvalidSpec | None:
    """Checks the CRD schema does not express (or that reach the operator without it). The first problem, or None."""
    if len(name) > MAX_JOB_NAME_LENGTH or not JOB_NAME_RE.match(name):
        return InvalidSpec(
            "metadata.name",
            f"{name!r} must be at most {MAX_JOB_NAME_LENGTH} characters of a-z, 0-9 and '-', start with a letter "
            "and end with a letter or digit (it prefixes the names of Services and pods)",
        )
    return first_problem(spec)


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
    from dspark_operator.builders.config import job_config_text, render_job_config

    try:
        ctx = BuildContext(name=name, namespace="default", uid="", spec=spec, trainer_image="", inference_image="")
        config = render_job_config(ctx)
    except ValidationError as err:
        inv = _validation_error_to_invalid(err)
        return None, InvalidSpec(inv.field.replace("spec.", "spec.trainer.", 1), inv.message)
    except ValueError as err:
        return None, InvalidSpec("spec", str(err))
    problem = check_config_size(spec, len(job_config_text(config).encode()))
    if problem is not None:
        return None, problem
    return spec, None


def parse_accepted_spec(raw_spec: Any) -> DSparkTrainingJobSpec | None:
    """The spec stored in status.acceptedSpec (it passed every check when it was accepted), or None when there is
    none or it no longer parses."""
    if not isinstance(raw_spec, Mapping):
        return None
    try:
        return DSparkTrainingJobSpec.model_validate(dict(raw_spec))
    except ValidationError:
        return None


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
        raw_spec=dict(body["spec"]) if isinstance(body.get("spec"), Mapping) else {},
    )
