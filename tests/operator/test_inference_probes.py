"""The capture servers' probes against what the engines do: SGLang 0.5.23's health endpoints (read from
the pinned source) and the reference server's, and a startup window sized from the target."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from dspark_operator.builders.inference import (
    HUB_BYTES_PER_SECOND,
    SGLANG_HEALTH_CHECK_TIMEOUT_SECONDS,
    STARTUP_BASE_SECONDS,
    STARTUP_MAX_SECONDS,
    build_inference_deployment,
    model_billions,
    startup_budget_seconds,
)
from dspark_trainer.capture import sglang_plugin
from dspark_trainer.capture.server import ServerSettings
from module_loader import load_module
from operator_helpers import make_ctx

REPO = Path(__file__).resolve().parents[2]
sglang_source = load_module("sglang_source", REPO / "tests" / "capture" / "sglang_source.py")


def probes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (c,) = build_inference_deployment(make_ctx(spec))["spec"]["template"]["spec"]["containers"]
    return {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}


def window(probe: dict[str, Any]) -> int:
    return int(probe["periodSeconds"] * probe["failureThreshold"])


@pytest.mark.parametrize(("model", "billions"), [
    ("Qwen/Qwen3-8B", 8.0), ("Qwen/Qwen3-235B-A22B", 235.0), ("/models/qwen3-0.6b", 0.6),
    ("meta-llama/Llama-3.1-70B-Instruct", 70.0), ("Qwen/Qwen3-8B-Base/", 8.0), ("/models/target", None),
    ("org/model-v2.5", None),
])
def test_the_parameter_count_is_read_from_the_model_name(model: str, billions: float | None) -> None:
    assert model_billions(model) == billions


def test_the_startup_window_grows_with_the_model_and_shrinks_for_a_volume() -> None:
    small = startup_budget_seconds(make_ctx({"target": {"model": "Qwen/Qwen3-8B"}}))
    assert small == STARTUP_BASE_SECONDS + 16e9 / HUB_BYTES_PER_SECOND  # 920 s: download and load 16 GB
    big = startup_budget_seconds(make_ctx({"target": {"model": "Qwen/Qwen3-32B"}}))
    local = startup_budget_seconds(make_ctx({"target": {"model": "/models/Qwen3-8B", "modelClaimName": "models"}}))
    fp32 = startup_budget_seconds(make_ctx({"target": {"model": "Qwen/Qwen3-32B", "dtype": "float32"}}))
    unknown = startup_budget_seconds(make_ctx({"target": {"model": "org/house-model"}}))
    huge = startup_budget_seconds(make_ctx({"target": {"model": "org/Model-4000B"}}))
    assert local < small < big < fp32 < unknown and huge == STARTUP_MAX_SECONDS
    assert window(probes({"target": {"model": "Qwen/Qwen3-32B"}})["startupProbe"]) >= big


def test_sglang_probes_fit_sglangs_health_endpoints() -> None:
    src = sglang_source.sglang_source(sglang_plugin.SGLANG_VERSION)
    http = (src / "sglang/srt/entrypoints/http_server.py").read_text()
    match = re.search(r'HEALTH_CHECK_TIMEOUT = int\(os\.getenv\("SGLANG_HEALTH_CHECK_TIMEOUT", (\d+)\)\)', http)
    assert match is not None and int(match.group(1)) == SGLANG_HEALTH_CHECK_TIMEOUT_SECONDS
    p = probes({})
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = p[name]["httpGet"]["path"]
        assert f'@app.get("{path}")' in http, (name, path)
    # a health generation waits up to SGLang's timeout: the probe must wait longer than SGLang does
    assert p["startupProbe"]["httpGet"]["path"] == p["readinessProbe"]["httpGet"]["path"] == "/health_generate"
    assert p["readinessProbe"]["timeoutSeconds"] > SGLANG_HEALTH_CHECK_TIMEOUT_SECONDS
    assert p["startupProbe"]["timeoutSeconds"] > SGLANG_HEALTH_CHECK_TIMEOUT_SECONDS
    # liveness is SGLang's flag check, which only turns 503 after a failed health generation or at shutdown
    assert p["livenessProbe"]["httpGet"]["path"] == "/ping"
    ping = http[http.index('@app.get("/ping")'):]
    assert "is_healthy()" in ping[: ping.index("\n\n\n")]
    # one failed readiness probe (a slow scheduler) never restarts the server: liveness outlasts its period
    assert window(p["livenessProbe"]) > p["readinessProbe"]["periodSeconds"]
    assert window(p["startupProbe"]) >= startup_budget_seconds(make_ctx({}))


def test_reference_probes_fit_the_reference_server() -> None:
    p = probes({"inference": {"engine": "reference"}})
    server = (REPO / "trainer/dspark_trainer/capture/server.py").read_text()
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert f'add_get("{p[name]["httpGet"]["path"]}"' in server, name
    assert p["livenessProbe"]["httpGet"]["path"] == "/health"
    assert p["readinessProbe"]["timeoutSeconds"] > ServerSettings().health_timeout_seconds
