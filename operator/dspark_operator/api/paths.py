"""Path rules for the directories a job writes: everything lands on the job's output volume.

`trainer.output.mountPath` is where the output volume is mounted in the trainer pods; `draftDir`,
`checkpointDir` (and `dataset.regenerate.outputDir`) are directories *inside* it. A directory that is
absolute or climbs out with `..` would be written to the pod's own filesystem, which is lost with the
pod, so these rules reject it. The same rules exist as CEL (the API server says it at `kubectl apply`)
and as pydantic validators (the operator's own check, and every other reader of a spec).
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dspark_operator.api.spec import DSparkTrainingJobSpec

# A relative directory: segments of [A-Za-z0-9_.-] that do not start with '.' or '-' (so no '.', '..',
# hidden or option-like segments), no empty segments, no leading or trailing '/'.
RELATIVE_DIR = r"^[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*$"
# An absolute mount path made of such segments (no '/', '//', '/./', '/../', trailing '/').
ABSOLUTE_DIR = r"^(/[A-Za-z0-9_][-A-Za-z0-9_.]*)+$"
_RELATIVE_RE = re.compile(RELATIVE_DIR)
_ABSOLUTE_RE = re.compile(ABSOLUTE_DIR)

# What the operator itself mounts in the job's pods (an output volume there would hide it or be hidden).
OPERATOR_MOUNTS: dict[str, str] = {
    "/etc/dspark": "the job config",
    "/dev/shm": "the shared-memory volume",
    "/data": "the dataset volume",
    "/models": "the model volume",
    "/var/run/secrets/kubernetes.io/serviceaccount": "the trainer's ServiceAccount token",
}
# System directories of the image that a volume must not replace.
SYSTEM_DIRS = ("/bin", "/lib", "/proc", "/sbin", "/sys", "/usr")


def overlaps(a: str, b: str) -> bool:
    """Whether two normalised paths are the same, or one lies inside the other."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def relative_dir_problem(field: str, value: str, example: str) -> str | None:
    """Why `value` is not a directory inside the output volume (None when it is)."""
    if _RELATIVE_RE.match(value):
        return None
    if value.startswith("/"):
        why = "is absolute"
    elif any(seg in (".", "..") for seg in value.split("/")):
        why = "has '.' or '..' segments"
    else:
        why = "is not a plain relative path (segments of letters, digits, '_', '-', '.', not starting with '.' or '-')"
    return (
        f"{value!r} {why}: {field} is a directory inside the output volume (trainer.output.mountPath); anything "
        f"outside it is written to the pod's ephemeral filesystem and lost with the pod. Use e.g. {example!r}"
    )


def mount_path_problem(value: str) -> str | None:
    """Why `value` cannot be the output volume's mount path (None when it can)."""
    if not _ABSOLUTE_RE.match(value):
        return (
            f"{value!r} must be an absolute path of plain segments (no '/', '.', '..', empty segments or trailing "
            "'/'), e.g. '/output'"
        )
    for path, what in OPERATOR_MOUNTS.items():
        if overlaps(value, path):
            return (
                f"{value!r} clashes with {path}, where the operator mounts {what} (the output volume may not be, "
                "contain or lie inside it); use e.g. '/output'"
            )
    for path in SYSTEM_DIRS:
        if overlaps(value, path):
            return f"{value!r} would hide the image's {path}; use e.g. '/output'"
    return None


def cel_mount_path_rule() -> str:
    """The CEL rule of `trainer.output.mountPath` (on the string itself) that mirrors mount_path_problem."""
    clauses = [
        f"!(self == '{p}' || self.startsWith('{p}/') || '{p}'.startsWith(self + '/'))" for p in OPERATOR_MOUNTS
    ] + [f"!(self == '{p}' || self.startsWith('{p}/'))" for p in SYSTEM_DIRS]
    return " && ".join(clauses)


def output_path(spec: DSparkTrainingJobSpec, directory: str) -> str:
    """A directory inside the output volume as the pods see it (under trainer.output.mountPath)."""
    return posixpath.join(spec.trainer.output.mount_path, directory)


def draft_output_path(spec: DSparkTrainingJobSpec) -> str:
    """Where the trainer writes the exported draft (the job config's outputDir; status.draftPath by default)."""
    return output_path(spec, spec.trainer.output.draft_dir)


def checkpoint_output_path(spec: DSparkTrainingJobSpec) -> str:
    """Where the trainer writes its checkpoints (the job config's checkpoint.dir)."""
    return output_path(spec, spec.trainer.output.checkpoint_dir)


def dataset_path_for_training(spec: DSparkTrainingJobSpec) -> str:
    """The dataset the trainer reads: the regenerated output when ``dataset.regenerate`` is set (where the
    regeneration Job writes it), else dataset.path."""
    regen = spec.dataset.regenerate
    return spec.dataset.path if regen is None else output_path(spec, regen.output_dir)
