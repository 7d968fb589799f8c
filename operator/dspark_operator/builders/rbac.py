"""ServiceAccount, Role and RoleBinding of the trainer: it may read its own job and patch its status only."""

from __future__ import annotations

from dspark_operator.builders.common import BuildContext, Manifest, metadata, with_hash
from dspark_operator.constants import COMPONENT_RBAC, GROUP, PLURAL


def build_service_account(ctx: BuildContext) -> Manifest:
    """ServiceAccount the trainer pods run as."""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(ctx, ctx.names.service_account, COMPONENT_RBAC),
            "automountServiceAccountToken": True,
        }
    )


def build_role(ctx: BuildContext) -> Manifest:
    """Role: get this job, get/patch this job's status subresource; nothing else."""
    return with_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(ctx, ctx.names.role, COMPONENT_RBAC),
            "rules": [
                {"apiGroups": [GROUP], "resources": [PLURAL], "resourceNames": [ctx.name], "verbs": ["get"]},
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{PLURAL}/status"],
                    "resourceNames": [ctx.name],
                    "verbs": ["get", "patch"],
                },
            ],
        }
    )


def build_role_binding(ctx: BuildContext) -> Manifest:
    """Binds the Role to the trainer's ServiceAccount."""
    return with_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(ctx, ctx.names.role_binding, COMPONENT_RBAC),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ctx.names.role},
            "subjects": [{"kind": "ServiceAccount", "name": ctx.names.service_account, "namespace": ctx.namespace}],
        }
    )
