"""Operator settings from the command line and the environment (the Helm chart sets the environment)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from dspark_operator.constants import DEFAULT_INFERENCE_IMAGE, DEFAULT_TRAINER_IMAGE


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    return int(value) if value else default


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "").strip()
    return float(value) if value else default


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the operator needs to know besides the jobs themselves."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces (cluster scope)
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    inference_image: str = DEFAULT_INFERENCE_IMAGE
    resync_seconds: float = 60.0  # periodic check of every job, besides the event-driven ones
    max_concurrent_reconciles: int = 8
    min_reconcile_interval: float = 1.0  # seconds between two reconciliations of one job
    api_workers: int = 16  # threads for blocking REST calls
    metrics_port: int = 8000  # 0 disables the metrics server
    liveness_port: int = 8080  # 0 disables the liveness endpoint
    peering: str | None = None  # None: standalone (no peering objects needed)
    # Several replicas: only the holder of this Lease reconciles (dspark_operator.leader).
    leader_election: bool = False
    lease_name: str = "dspark-operator"
    lease_namespace: str = "default"
    lease_duration_seconds: int = 15
    watch_server_timeout: float = 300.0
    request_timeout: float = 30.0
    # A pending pod no scheduler looked at for this long: condition Schedulable=False (scheduling.schedulerName).
    scheduler_grace_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from DSPARK_OPERATOR_* / DSPARK_*_IMAGE environment variables."""
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get("DSPARK_OPERATOR_NAMESPACES", "").split(",") if n.strip())
        return cls(
            namespaces=namespaces,
            trainer_image=env.get("DSPARK_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            inference_image=env.get("DSPARK_INFERENCE_IMAGE") or DEFAULT_INFERENCE_IMAGE,
            resync_seconds=_env_float(env, "DSPARK_OPERATOR_RESYNC_SECONDS", 60.0),
            max_concurrent_reconciles=_env_int(env, "DSPARK_OPERATOR_MAX_CONCURRENT_RECONCILES", 8),
            min_reconcile_interval=_env_float(env, "DSPARK_OPERATOR_MIN_RECONCILE_INTERVAL", 1.0),
            api_workers=_env_int(env, "DSPARK_OPERATOR_API_WORKERS", 16),
            metrics_port=_env_int(env, "DSPARK_OPERATOR_METRICS_PORT", 8000),
            liveness_port=_env_int(env, "DSPARK_OPERATOR_LIVENESS_PORT", 8080),
            peering=env.get("DSPARK_OPERATOR_PEERING") or None,
            leader_election=env.get("DSPARK_OPERATOR_LEADER_ELECTION", "").lower() in ("1", "true", "yes"),
            lease_name=env.get("DSPARK_OPERATOR_LEASE_NAME") or "dspark-operator",
            lease_namespace=env.get("DSPARK_OPERATOR_LEASE_NAMESPACE") or env.get("POD_NAMESPACE") or "default",
            lease_duration_seconds=_env_int(env, "DSPARK_OPERATOR_LEASE_DURATION_SECONDS", 15),
            watch_server_timeout=_env_float(env, "DSPARK_OPERATOR_WATCH_TIMEOUT_SECONDS", 300.0),
            request_timeout=_env_float(env, "DSPARK_OPERATOR_REQUEST_TIMEOUT_SECONDS", 30.0),
            scheduler_grace_seconds=_env_float(env, "DSPARK_OPERATOR_SCHEDULER_GRACE_SECONDS", 60.0),
        )
