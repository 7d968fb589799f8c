"""Helpers of the contract tests: a job rendered by the real operator builders, and its pods' view of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from dspark_operator.builders import build_children
from module_loader import load_module

REPO = Path(__file__).resolve().parents[2]
operator_helpers = load_module("operator_helpers", REPO / "tests" / "operator" / "operator_helpers.py")


def write_target_config(directory: Path, num_layers: int = 36) -> Path:
    """A Qwen3-shaped target's config.json (all a config resolution reads; no weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
        "intermediate_size": 12288, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "num_hidden_layers": num_layers, "vocab_size": 151936, "max_position_embeddings": 40960,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
    }))
    return directory


def render(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every child the operator builds for the job `demo` in namespace `ns` with this spec."""
    return build_children(operator_helpers.make_ctx(spec))


def find(children: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    return dict(operator_helpers.find(children, kind, suffix) if suffix else operator_helpers.find(children, kind))


def containers(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The one container of each workload, by component (mooncake-master, inference, trainer)."""
    out = {}
    for m in children:
        if m["kind"] in ("Deployment", "StatefulSet"):
            (c,) = m["spec"]["template"]["spec"]["containers"]
            out[m["metadata"]["labels"]["app.kubernetes.io/component"]] = {
                **c, "volumes": m["spec"]["template"]["spec"].get("volumes", [])
            }
    return out


def mount_config_map(children: list[dict[str, Any]], container: dict[str, Any], root: Path) -> dict[str, str]:
    """What a kubelet does for the job's ConfigMap volume: its files under `root` + the mount path. Returns
    the container's plain environment with the mount path mapped under `root` (as a pod sees its files)."""
    cm = find(children, "ConfigMap")
    volume = next(v for v in container["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    target = root / mount["mountPath"].lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for key, text in cm["data"].items():
        (target / key).write_text(text)
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return {k: v.replace(mount["mountPath"], str(target), 1) if v.startswith(mount["mountPath"]) else v
            for k, v in env.items()}


def rendered_config(children: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(find(children, "ConfigMap")["data"]["job.yaml"])
    return data
