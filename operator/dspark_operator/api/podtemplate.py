"""The per-role pod override: a partial pod template (`spec.inference.podTemplate`, `spec.trainer.podTemplate`,
`spec.transport.masterPodTemplate`) that the operator merges over the pods it builds.

It holds only what the operator does not decide itself: pod labels and annotations, image pull secrets, affinity,
a ServiceAccount (not for the trainer), extra volumes, envFrom and extra mounts of the role's container, and a few
pod security settings. What the spec already says elsewhere stays there, one way each: resources
(`<role>.resources`, `transport.masterResources`), plain env (`<role>.env`), node selector, tolerations, priority
class and scheduler (`spec.scheduling`, the same for every pod of a job). Naming one of those here is refused with
the field to use instead; :func:`dspark_operator.api.checks.check_pod_templates` refuses what would replace what the
operator owns (its volumes, mount paths, labels, container).
"""

from __future__ import annotations

from typing import Annotated, Any

from dspark_trainer.config import ConfigModel
from pydantic import Field, model_validator

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# DNS-1123 subdomain (Secret, ConfigMap and ServiceAccount names).
_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label or annotation key: an optional DNS prefix and a name of at most 63 characters.
QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
Key = Annotated[str, Field(pattern=QUALIFIED_KEY, max_length=317)]

# Pod spec fields the spec already has elsewhere: where to set them instead.
ELSEWHERE: dict[str, str] = {
    "nodeSelector": "spec.scheduling.nodeSelector (every pod of the job); for one role use podTemplate.spec.affinity",
    "tolerations": "spec.scheduling.tolerations (every pod of the job)",
    "priorityClassName": "spec.scheduling.priorityClassName (every pod of the job: one priority for the gang)",
    "schedulerName": "spec.scheduling.schedulerName (every pod of the job)",
    "resources": "the role's resources (spec.inference.resources, spec.trainer.resources, "
    "spec.transport.masterResources)",
    "env": "the role's env (spec.inference.env, spec.trainer.env) or envFrom of a Secret/ConfigMap",
    "image": "the role's image (spec.inference.image, spec.trainer.image, spec.transport.masterImage)",
    "command": "nothing: the operator runs the role's entry point",
    "args": "nothing: the operator runs the role's entry point",
    "ports": "nothing: the operator sets the ports the role uses",
}


def _refuse_elsewhere(data: Any, where: str) -> Any:
    if isinstance(data, dict):
        for key in data:
            if key in ELSEWHERE:
                raise ValueError(f"{key}: not part of {where}; set {ELSEWHERE[key]}")
    return data


class PodMetadataOverride(ConfigModel):
    """Extra labels and annotations of the role's pods (the operator's own labels cannot be replaced)."""

    labels: dict[Key, str] = Field(
        default_factory=dict, description="Extra pod labels (not app.kubernetes.io/*, dspark.io/* or Kueue's)."
    )
    annotations: dict[Key, str] = Field(
        default_factory=dict, description="Extra pod annotations (not dspark.io/*), e.g. for a service mesh."
    )


class LocalObjectReference(ConfigModel):
    """A reference to an object in the job's namespace."""

    name: str = Field(..., min_length=1, max_length=253, pattern=_SUBDOMAIN, description="Object name.")


class SourceReference(ConfigModel):
    """A Secret or ConfigMap of the job's namespace."""

    name: str = Field(..., min_length=1, max_length=253, pattern=_SUBDOMAIN, description="Object name.")
    optional: bool | None = Field(None, description="Start the pod even when the object is missing.")


class EnvFromSource(ConfigModel):
    """All keys of a Secret or ConfigMap as environment variables (as in a Pod). Variables the operator sets
    keep the operator's values (Kubernetes lets `env` win over `envFrom`)."""

    prefix: str | None = Field(
        None, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Prefix of every variable name."
    )
    secret_ref: SourceReference | None = Field(None, description="The Secret whose keys become variables.")
    config_map_ref: SourceReference | None = Field(None, description="The ConfigMap whose keys become variables.")

    @model_validator(mode="after")
    def _one_source(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("secretRef: give exactly one of secretRef and configMapRef")
        return self


class VolumeMount(ConfigModel):
    """A mount of one of podTemplate.spec.volumes in the role's container."""

    name: str = Field(..., min_length=1, max_length=63, pattern=DNS1123_LABEL, description="Volume name.")
    mount_path: str = Field(..., min_length=2, max_length=1024, description="Absolute path in the container.")
    sub_path: str | None = Field(None, max_length=1024, description="Path inside the volume to mount instead.")
    read_only: bool | None = Field(None, description="Mount read-only.")


class ContainerOverride(ConfigModel):
    """Additions to the role's container (named as the operator names it: capture, trainer, mooncake-master)."""

    name: str = Field(..., min_length=1, max_length=63, description="The role's container name.")
    env_from: list[EnvFromSource] = Field(
        default_factory=list, max_length=32, description="Secrets/ConfigMaps whose keys become environment variables."
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=64, description="Mounts of podTemplate.spec.volumes."
    )

    @model_validator(mode="before")
    @classmethod
    def _not_here(cls, data: Any) -> Any:
        return _refuse_elsewhere(data, "podTemplate.spec.containers[]")


class SELinuxOptions(ConfigModel):
    """SELinux labels of the pod's containers."""

    user: str | None = Field(None, max_length=253, description="SELinux user label.")
    role: str | None = Field(None, max_length=253, description="SELinux role label.")
    type: str | None = Field(None, max_length=253, description="SELinux type label.")
    level: str | None = Field(None, max_length=253, description="SELinux level label.")


class PodSecurityOverride(ConfigModel):
    """Pod security settings merged over the operator's (non-root, RuntimeDefault seccomp, uid/gid 1000 of the
    images); the Pod Security Standard `restricted` stays."""

    run_as_user: int | None = Field(None, ge=1, le=2**31 - 1, description="Uid of the containers (not root).")
    run_as_group: int | None = Field(None, ge=1, le=2**31 - 1, description="Primary gid of the containers.")
    fs_group: int | None = Field(None, ge=1, le=2**31 - 1, description="Group owning the pod's volumes.")
    fs_group_change_policy: str | None = Field(
        None, pattern=r"^(Always|OnRootMismatch)$", description="When volume ownership is changed (Always, ...)."
    )
    supplemental_groups: list[int] = Field(
        default_factory=list, max_length=32, description="Extra gids of the containers (e.g. for an NFS share)."
    )
    se_linux_options: SELinuxOptions | None = Field(None, description="SELinux labels of the containers.")


class PodSpecOverride(ConfigModel):
    """The pod spec fields a platform may add to a role's pods."""

    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets for pulling the role's image, e.g. [{name: regcred}]."
    )
    service_account_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=_SUBDOMAIN,
        description=(
            "ServiceAccount of the pods (inference and Mooncake master only; its token stays unmounted). The "
            "trainer runs as <job>-trainer, the ServiceAccount the operator binds for status reports."
        ),
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="Pod affinity (nodeAffinity, podAffinity, podAntiAffinity) as in a Pod; checked by the API server.",
    )
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra volumes as in a Pod (each with a name the operator does not use); mount them in containers.",
    )
    containers: list[ContainerOverride] = Field(
        default_factory=list, max_length=1, description="Additions to the role's one container (by its name)."
    )
    security_context: PodSecurityOverride | None = Field(None, description="Pod security settings to merge.")

    @model_validator(mode="before")
    @classmethod
    def _not_here(cls, data: Any) -> Any:
        return _refuse_elsewhere(data, "podTemplate.spec")


class PodTemplateOverride(ConfigModel):
    """A partial pod template merged over the role's pods."""

    metadata: PodMetadataOverride = Field(default_factory=PodMetadataOverride, description="Pod labels/annotations.")
    spec: PodSpecOverride = Field(default_factory=PodSpecOverride, description="Pod spec additions.")
