"""From the API server's refusal of a child to the spec field the user wrote (pure).

The dry run of the whole child set answers with the child's own field paths (e.g.
`spec.template.spec.containers[0].resources.requests`); a user knows `spec.trainer.resources`. The
mapping below follows what each builder puts where.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dspark_operator.api.problems import InvalidSpec
from dspark_operator.constants import (
    COMPONENT_CONFIG,
    COMPONENT_INFERENCE,
    COMPONENT_MOONCAKE,
    COMPONENT_REGENERATE,
    COMPONENT_TRAINER,
    LABEL_COMPONENT,
    LABEL_KUEUE_QUEUE,
)

# Per component: the spec section behind a container's resources, env and image.
_SECTION = {
    COMPONENT_TRAINER: ("spec.trainer.resources", "spec.trainer.env", "spec.trainer.image"),
    COMPONENT_INFERENCE: ("spec.inference.resources", "spec.inference.env", "spec.inference.image"),
    COMPONENT_MOONCAKE: ("spec.transport.masterResources", "spec.transport", "spec.transport.masterImage"),
    COMPONENT_REGENERATE: (
        "spec.dataset.regenerate.resources",
        "spec.dataset.regenerate",
        "spec.dataset.regenerate.image",
    ),
}
# Per component: the partial pod template behind what the operator merges from it.
_OVERRIDE = {
    COMPONENT_TRAINER: "spec.trainer.podTemplate",
    COMPONENT_INFERENCE: "spec.inference.podTemplate",
    COMPONENT_MOONCAKE: "spec.transport.masterPodTemplate",
    COMPONENT_REGENERATE: "spec.trainer.podTemplate",
}
_OVERRIDE_FIELDS = (
    "affinity",
    "imagePullSecrets",
    "serviceAccountName",
    "envFrom",
    "supplementalGroups",
    "seLinuxOptions",
    "fsGroupChangePolicy",
)
_OPERATOR_VOLUMES = frozenset({"config", "dshm", "output", "data", "models"})
_POD_FIELDS = (
    ("nodeSelector", "spec.scheduling.nodeSelector"),
    ("tolerations", "spec.scheduling.tolerations"),
    ("priorityClassName", "spec.scheduling.priorityClassName"),
    ("schedulerName", "spec.scheduling.schedulerName"),
)


def spec_field_for(manifest: Mapping[str, Any], child_field: str, message: str = "") -> str:
    """The spec field behind `child_field` of `manifest` (a path as the API server reports it)."""
    kind = str(manifest.get("kind", ""))
    component = str(((manifest.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT, ""))
    regen = component == COMPONENT_REGENERATE
    if kind == "ConfigMap" or component == COMPONENT_CONFIG:
        return "spec.dataset.chatTemplate" if "Too long" in message or "too long" in message else "spec"
    if "labels" in child_field and (LABEL_KUEUE_QUEUE in message or LABEL_KUEUE_QUEUE in child_field):
        return "spec.scheduling.queueName"
    override = _override_field(manifest, component, child_field)
    if override:
        return override
    for name, field in _POD_FIELDS:
        if f".{name}" in child_field or child_field.startswith(name):
            if regen and name in ("nodeSelector", "tolerations"):
                return f"spec.dataset.regenerate.{name}"
            return field
    if kind == "Service" and ".ports" in f".{child_field}":
        return "spec.metrics.port" if component == COMPONENT_TRAINER else "spec.inference.port"
    resources, env, image = _SECTION.get(component, ("spec", "spec", "spec"))
    if re.search(r"containers\[\d+\]\.resources", child_field):
        return resources
    if re.search(r"containers\[\d+\]\.env", child_field):
        return env
    if re.search(r"containers\[\d+\]\.image", child_field):
        return image
    if re.search(r"containers\[\d+\]\.ports", child_field):
        return "spec.metrics.port" if component == COMPONENT_TRAINER else "spec.inference.port"
    if "volumeMounts" in child_field:
        return "spec.trainer.output.mountPath"
    if "sizeLimit" in child_field:
        return "spec.inference.shmSize" if component == COMPONENT_INFERENCE else "spec.dataset.regenerate.shmSize"
    return "spec"


def _override_field(manifest: Mapping[str, Any], component: str, child_field: str) -> str | None:
    """The role's podTemplate field behind `child_field`, when the operator took it from there."""
    base = _OVERRIDE.get(component)
    if base is None:
        return None
    for name in _OVERRIDE_FIELDS:
        if f".{name}" in f".{child_field}":
            return f"{base}.spec.{name}" if name in ("affinity", "imagePullSecrets", "serviceAccountName") else base
    if re.search(r"template\.metadata\.(annotations|labels)", child_field):
        return f"{base}.metadata"
    pod = ((manifest.get("spec") or {}).get("template") or {}).get("spec") or {}
    volume = re.search(r"spec\.volumes\[(\d+)\]", child_field)
    if volume and _name_at(pod.get("volumes"), int(volume.group(1))) not in (None, *_OPERATOR_VOLUMES):
        return f"{base}.spec.volumes"
    mount = re.search(r"containers\[(\d+)\]\.volumeMounts\[(\d+)\]", child_field)
    if mount:
        containers = pod.get("containers") or []
        index = int(mount.group(1))
        mounts = containers[index].get("volumeMounts") if index < len(containers) else None
        if _name_at(mounts, int(mount.group(2))) not in (None, *_OPERATOR_VOLUMES):
            return f"{base}.spec.containers"
    return None


def _name_at(items: Any, index: int) -> str | None:
    """The name of `items[index]` (a list of named objects), or None."""
    if isinstance(items, list) and index < len(items) and isinstance(items[index], Mapping):
        name = items[index].get("name")
        return str(name) if name is not None else None
    return None


def invalid_from_rejection(manifest: Mapping[str, Any], body: Mapping[str, Any], message: str) -> InvalidSpec:
    """The InvalidSpec for the API server's refusal (`body`: its Status object) of a child built from the spec."""
    kind = manifest.get("kind", "?")
    name = (manifest.get("metadata") or {}).get("name", "?")
    causes = [c for c in ((body.get("details") or {}).get("causes") or []) if isinstance(c, Mapping)]
    fields = [spec_field_for(manifest, str(c.get("field") or ""), str(c.get("message") or "")) for c in causes]
    specific = [f for f in fields if f != "spec"]
    field = specific[0] if specific else spec_field_for(manifest, "", message)
    detail = "; ".join(f"{c.get('field')}: {c.get('message')}" for c in causes if c.get("field")) or message
    return InvalidSpec(field, f"the API server rejects the {kind} {name} built from the spec ({detail})")
