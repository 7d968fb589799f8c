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
