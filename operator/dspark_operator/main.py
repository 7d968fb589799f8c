"""`dspark-operator`: run the DSparkTrainingJob operator.

    dspark-operator                      # all namespaces (cluster scope)
    dspark-operator -n team-a -n team-b  # only these namespaces
    DSPARK_OPERATOR_NAMESPACES=team-a dspark-operator

Credentials come from the pod's service account, or from KUBECONFIG / ~/.kube/config.
Serves Prometheus metrics on --metrics-port (default 8000, /metrics) and a liveness endpoint on
--liveness-port (default 8080, /healthz). With --leader-election several replicas may run: the one
holding the Lease reconciles, the others stand by (dspark_operator.leader).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import kopf
from kubernetes import client as k8s_client

from dspark_operator import __version__
from dspark_operator.kube import load_configuration
from dspark_operator.leader import LeaderElector, StandbyHealth
from dspark_operator.metrics import OperatorMetrics
from dspark_operator.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags (each overrides its environment variable)."""
    p = argparse.ArgumentParser(prog="dspark-operator", description="Run the DSparkTrainingJob operator.")
    p.add_argument("--version", action="version", version=f"dspark-operator {__version__}")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable; env DSPARK_OPERATOR_NAMESPACES=a,b). Default: all namespaces",
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port, 0 disables (default 8000)")
    p.add_argument("--liveness-port", type=int, default=None, help="liveness port, 0 disables (default 8080)")
    p.add_argument("--resync-seconds", type=float, default=None, help="periodic check interval (default 60)")
    p.add_argument(
        "--scheduler-grace-seconds",
        type=float,
        default=None,
        help="seconds a pending pod may wait for any scheduler before Schedulable=False (default 60)",
    )
    p.add_argument("--peering", default=None, help="Kopf peering name (default: standalone)")
    p.add_argument(
        "--leader-election",
        action="store_true",
        default=None,
        help="only the holder of a Lease reconciles, for several replicas (env DSPARK_OPERATOR_LEADER_ELECTION)",
    )
    p.add_argument("--lease-name", default=None, help="the Lease's name (default dspark-operator)")
    p.add_argument("--lease-namespace", default=None, help="the Lease's namespace (default: the pod's namespace)")
    p.add_argument(
        "--lease-duration-seconds", type=int, default=None, help="how long a lease lasts unrenewed (default 15)"
    )
    p.add_argument("--trainer-image", default=None, help="default trainer image (env DSPARK_TRAINER_IMAGE)")
    p.add_argument("--inference-image", default=None, help="default SGLang image (env DSPARK_INFERENCE_IMAGE)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def settings_from_args(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    """Environment settings with the command-line overrides applied."""
    s = base or Settings.from_env()
    changes: dict[str, Any] = {}
    if args.all_namespaces:
        changes["namespaces"] = ()
    elif args.namespace:
        changes["namespaces"] = tuple(args.namespace)
    for flag, field in (
        ("metrics_port", "metrics_port"),
        ("liveness_port", "liveness_port"),
        ("resync_seconds", "resync_seconds"),
        ("scheduler_grace_seconds", "scheduler_grace_seconds"),
        ("peering", "peering"),
        ("leader_election", "leader_election"),
        ("lease_name", "lease_name"),
        ("lease_namespace", "lease_namespace"),
        ("lease_duration_seconds", "lease_duration_seconds"),
        ("trainer_image", "trainer_image"),
        ("inference_image", "inference_image"),
    ):
        value = getattr(args, flag)
        if value is not None:
            changes[field] = value
    return dataclasses.replace(s, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the operator until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    kopf.configure(verbose=args.verbose, quiet=args.quiet)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not args.verbose:
        # Kopf logs every handler call of every watch event at INFO; the operator logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from dspark_operator import handlers  # registers the handlers

    if handlers.batch_jobs_watchable(settings.namespaces):
        handlers.register_batch_job_watch()

    metrics = OperatorMetrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    elector: LeaderElector | None = None
    stop_renewing = threading.Event()
    lost = threading.Event()
    if settings.leader_election:
        elector = LeaderElector(
            k8s_client.ApiClient(load_configuration()),
            settings.lease_namespace,
            settings.lease_name,
            duration_seconds=settings.lease_duration_seconds,
        )
        metrics.leader.set(0)
        standby = StandbyHealth(settings.liveness_port) if settings.liveness_port else None
        try:
            elector.wait_until_leader()
        finally:
            if standby is not None:
                standby.close()
        metrics.leader.set(1)

        def on_lost() -> None:
            lost.set()
            # Kopf's own graceful stop. (A threading.Event as Kopf's stop_flag would leave a thread waiting on it
            # after a SIGTERM, and the event loop's shutdown would wait for that thread forever.)
            os.kill(os.getpid(), signal.SIGTERM)

        elector.keep_renewing(on_lost, stop=stop_renewing)

    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        standalone=settings.peering is None,
        peering_name=settings.peering,
        liveness_endpoint=liveness,
        memo=kopf.Memo(settings=settings, metrics=metrics, metrics_served=True),
    )
    stop_renewing.set()
    if lost.is_set():
        logging.getLogger(__name__).error("leader election: lost the lease; exiting so a standby takes over")
        return 1
    if elector is not None:
        elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
