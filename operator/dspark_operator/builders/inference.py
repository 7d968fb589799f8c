"""The capture servers (SGLang with the dspark plugin, or the reference engine): Deployment + Service.

Probes (``inference_probes``) follow each engine's health endpoints. SGLang 0.5.23: ``/health`` and
``/health_generate`` are one handler that answers 503 until the model is loaded and warmed up, then runs
a 1-token generation and waits up to ``SGLANG_HEALTH_CHECK_TIMEOUT`` (20 s) for the scheduler, marking
the server unhealthy when it does not answer; ``/ping`` only reports that state. So:

* startup: ``/health_generate`` until the first success, for as long as loading this target can take
  (``startup_budget_seconds``: a fixed start-up cost plus the weights' bytes at a download or volume read
  rate; the size comes from the parameter count in the model's name, e.g. ``Qwen3-8B``);
* readiness: ``/health_generate`` with a timeout above SGLang's own 20 s wait;
* liveness: ``/ping``, which turns 503 once a health generation failed (a hung scheduler), and stays
  cheap and fast while the scheduler is busy.

The reference server: ``/health`` (the process serves HTTP) for liveness, ``/health_generate`` (a 1-token
forward through its queue, up to 30 s, and a Mooncake ping) for start-up and readiness.
"""

from __future__ import annotations

import math
import re
from typing import Any

from dspark_trainer.config import InferenceEngine
from dspark_trainer.config.job import JOB_CONFIG_PATH

from dspark_operator.builders.common import (
    BuildContext,
    Manifest,
    config_volume,
    container_port,
    container_resources,
    hf_token_env,
    job_env,
    models_volume,
    pod_template,
    security_context,
    service,
    service_port,
    workload,
)
from dspark_operator.constants import COMPONENT_INFERENCE

CAPTURE_COMMAND = ["dspark", "capture-server"]

SGLANG_HEALTH_CHECK_TIMEOUT_SECONDS = 20
"""SGLang 0.5.23's default SGLANG_HEALTH_CHECK_TIMEOUT: how long /health_generate waits for the scheduler."""
REFERENCE_HEALTH_TIMEOUT_SECONDS = 30
"""The reference server's /health_generate forward timeout (ServerSettings.health_timeout_seconds)."""
STARTUP_PERIOD_SECONDS = 10
STARTUP_BASE_SECONDS = 600
"""Start-up without the weights: processes, CUDA context, kernels and CUDA graphs, warm-up."""
HUB_BYTES_PER_SECOND = 50e6
"""A pessimistic Hugging Face hub download rate (the weights are fetched before they are read)."""
VOLUME_BYTES_PER_SECOND = 200e6
"""A pessimistic read rate of weights on a volume or in the image."""
UNKNOWN_MODEL_BILLIONS = 70.0
"""Parameters assumed (billions) when the model's name gives no size."""
STARTUP_MAX_SECONDS = 6 * 3600
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_BILLIONS = re.compile(r"(?<![0-9.a-z])(\d+(?:\.\d+)?)b(?![a-z0-9])")


def model_billions(model: str) -> float | None:
    """The parameter count (billions) in a model id or path: the largest ``<n>B`` of its last part
    (``Qwen/Qwen3-8B`` 8, ``Qwen3-235B-A22B`` 235, ``/models/qwen3-0.6b`` 0.6); None when there is none."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    sizes = [float(m) for m in _BILLIONS.findall(name)]
    return max(sizes) if sizes else None


def startup_budget_seconds(ctx: BuildContext) -> int:
    """How long the capture server may take to load the target before the startup probe gives up."""
    target = ctx.spec.target
    billions = model_billions(target.model) or UNKNOWN_MODEL_BILLIONS
    weight_bytes = billions * 1e9 * _DTYPE_BYTES.get(target.dtype, 2)
    local = target.model.startswith("/") or target.model_claim_name is not None
    rate = VOLUME_BYTES_PER_SECOND if local else HUB_BYTES_PER_SECOND
    seconds = STARTUP_BASE_SECONDS + weight_bytes / rate
    return int(min(STARTUP_MAX_SECONDS, math.ceil(seconds / STARTUP_PERIOD_SECONDS) * STARTUP_PERIOD_SECONDS))


def _http_probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def inference_probes(ctx: BuildContext) -> dict[str, dict[str, Any]]:
    """startupProbe, readinessProbe and livenessProbe of the capture container (see the module docstring)."""
    sglang = ctx.spec.inference.engine == InferenceEngine.SGLANG
    generate_wait = SGLANG_HEALTH_CHECK_TIMEOUT_SECONDS if sglang else REFERENCE_HEALTH_TIMEOUT_SECONDS
    generate_timeout = generate_wait + 10
    startup_failures = math.ceil(startup_budget_seconds(ctx) / STARTUP_PERIOD_SECONDS)
    return {
        "startupProbe": _http_probe("/health_generate", STARTUP_PERIOD_SECONDS, generate_timeout, startup_failures),
        "readinessProbe": _http_probe("/health_generate", 30, generate_timeout, 2),
        "livenessProbe": _http_probe("/ping" if sglang else "/health", 20, 10, 3),
    }


def inference_gpus(ctx: BuildContext) -> int:
    """GPUs per capture server: the spec's, else tensorParallelSize for SGLang and none for the reference engine."""
    inf = ctx.spec.inference
    if inf.gpus is not None:
        return inf.gpus
    return inf.tensor_parallel_size if inf.engine == InferenceEngine.SGLANG else 0


def inference_image(ctx: BuildContext) -> str:
    """The capture servers' image: the spec's, else the operator's serving (SGLang) or trainer (reference) image."""
    inf = ctx.spec.inference
    if inf.image is not None:
        return inf.image
    return ctx.inference_image if inf.engine == InferenceEngine.SGLANG else ctx.trainer_image


def build_inference_deployment(ctx: BuildContext, *, replicas: int | None = None) -> Manifest:
    """The SGLang Deployment (replicas from the spec, or 0 when the job is scaled down)."""
    inf = ctx.spec.inference
    gpus = inference_gpus(ctx)
    env: list[dict[str, Any]] = [
        *job_env(ctx),
        *hf_token_env(ctx),
        *[{"name": e.name, "value": e.value} for e in inf.env],
    ]
    config_vol, config_mount = config_volume(ctx)
    volume_mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}, config_mount]
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": inf.shm_size}},
        config_vol,
    ]
    for volume, mount in models_volume(ctx):
        volumes.append(volume)
        volume_mounts.append(mount)
    container: dict[str, Any] = {
        "name": "capture",
        "image": inference_image(ctx),
        # The capture-server role reads the job config and starts inference.engine (SGLang or reference).
        "command": [*CAPTURE_COMMAND, "--config", JOB_CONFIG_PATH],
        "env": env,
        "ports": [container_port("http", inf.port)],
        "resources": container_resources(ctx, inf.resources, gpus=gpus, rdma=ctx.rdma),
        "securityContext": security_context(rdma=ctx.rdma),
        "volumeMounts": volume_mounts,
        **inference_probes(ctx),
    }
    return workload(
        ctx,
        "Deployment",
        ctx.names.inference,
        COMPONENT_INFERENCE,
        replicas=inf.replicas if replicas is None else replicas,
        template=pod_template(
            ctx, COMPONENT_INFERENCE, containers=[container], volumes=volumes, override=inf.pod_template
        ),
    )


def build_inference_service(ctx: BuildContext) -> Manifest:
    """ClusterIP Service the trainer ranks send capture requests to."""
    ports = [service_port("http", ctx.spec.inference.port)]
    return service(ctx, ctx.names.inference, COMPONENT_INFERENCE, ports, type="ClusterIP")
