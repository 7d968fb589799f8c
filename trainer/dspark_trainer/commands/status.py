"""`dspark status JOB [-n NAMESPACE]`: a job's phase, progress, loss and acceptance, from the cluster.

Reads the DSparkTrainingJob with the current kubeconfig context (or the pod's service account);
`-o json` prints its status as JSON. Problems (no kubeconfig, an unreachable API server, no such
job, no permission) are one line with the fix, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from dspark_trainer.config.job import GROUP, PLURAL, VERSION
from dspark_trainer.config.progress import Progress


class StatusError(RuntimeError):
    """A problem reading the job, already phrased for the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB", help="name of the DSparkTrainingJob")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format")


def fetch_job(name: str, namespace: str | None, kubeconfig: str | None) -> dict[str, Any]:
    """The job object from the cluster; StatusError with the fix for every way this can fail."""
    import os

    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not (kubeconfig or os.environ.get("KUBECONFIG")):
            config.load_incluster_config(client_configuration=cfg)
            ns = namespace or "default"
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            ns = namespace or (active.get("context") or {}).get("namespace") or "default"
    except (ConfigException, OSError, TypeError) as exc:
        raise StatusError(f"no usable kubeconfig ({exc}); set KUBECONFIG or pass --kubeconfig") from None
    cfg.retries = 0
    api = client.CustomObjectsApi(client.ApiClient(cfg))
    try:
        job: Any = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, _request_timeout=10)
        return dict(job)
    except client.ApiException as exc:
        if exc.status == 404:
            raise StatusError(f"no DSparkTrainingJob {name!r} in namespace {ns!r} (kubectl get dsj -n {ns}); if the "
                              "resource type itself is unknown, install the CRD (helm install the operator)") from None
        if exc.status in (401, 403):
            raise StatusError(f"not allowed to read DSparkTrainingJob {ns}/{name} ({exc.reason}); ask for get on "
                              "dsparktrainingjobs.dspark.io") from None
        raise StatusError(f"the API server answered {exc.status} {exc.reason}") from None
    except Exception as exc:  # urllib3 connection errors and timeouts
        raise StatusError(f"cannot reach the Kubernetes API at {cfg.host}: {type(exc).__name__}; check the "
                          "cluster is up and the kubeconfig's server address") from None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def read_progress(status: Mapping[str, Any]) -> Progress:
    """status.progress as the trainer's model; empty when absent or unreadable."""
    try:
        return Progress.model_validate(status.get("progress") or {})
    except ValidationError:
        return Progress()


def summary(job: Mapping[str, Any]) -> str:
    """The readable status of one job (pure)."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    progress = read_progress(status)
    lines = [
        f"job        {meta.get('namespace')}/{meta.get('name')}",
        f"phase      {status.get('phase') or 'Pending (not reconciled yet)'}",
        f"step       {_fmt(progress.step)}/{_fmt(progress.total)}"
        f"  samples {_fmt(progress.samples)}  epoch {_fmt(progress.epoch, 3)}",
        f"loss       {_fmt(progress.loss)}   tau {_fmt(progress.tau)}",
    ]
    if progress.accept_rate:
        lines.append("acceptance " + "  ".join(f"@{i}: {r:.3f}" for i, r in enumerate(progress.accept_rate)))
    if progress.throughput is not None:
        lines.append(f"throughput {progress.throughput:.2f} samples/s")
    lines.append(f"restarts   {status.get('restarts', 0)}")
    if status.get("transportProtocol"):
        lines.append(f"transport  {status['transportProtocol']}")
    if progress.last_checkpoint:
        lines.append(f"checkpoint {progress.last_checkpoint}")
    if status.get("draftPath"):
        lines.append(f"draft      {status['draftPath']}")
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" or cond.get("type") in ("Failed", "SpecRejected", "Schedulable"):
            text = f"{cond.get('type')}={cond.get('status')} {cond.get('reason', '')}"
            if cond.get("message"):
                text += f": {cond['message']}"
            lines.append(f"condition  {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        job = fetch_job(args.job, args.namespace, args.kubeconfig)
    except StatusError as exc:
        print(f"dspark status: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(job.get("status") or {}, indent=2, sort_keys=True))
    else:
        print(summary(job))
    return 0
