"""The few source files of the pinned vLLM wheel that the serving checks read (never installed): downloaded
once with `pip download --no-deps`, the needed files extracted into ~/.cache/dspark-k8s/vllm-<version>/src,
and the wheel deleted again (it is large)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

FILES = (
    "vllm/model_executor/models/qwen3_dspark.py",
    "vllm/model_executor/models/qwen3_dflash.py",
    "vllm/model_executor/models/qwen3.py",
    "vllm/model_executor/models/qwen2.py",
    "vllm/model_executor/models/registry.py",
    "vllm/model_executor/models/utils.py",
    "vllm/model_executor/models/interfaces.py",
    "vllm/config/speculative.py",
    "vllm/engine/arg_utils.py",
    "vllm/v1/worker/gpu/spec_decode/speculator_config.py",
    "vllm/v1/worker/gpu/spec_decode/dspark/config.py",
    "vllm/v1/worker/gpu/spec_decode/dspark/utils.py",
    "vllm/v1/worker/gpu/spec_decode/dflash/config.py",
    "vllm/v1/worker/gpu/spec_decode/eagle/eagle3_utils.py",
    "vllm/v1/worker/gpu/spec_decode/eagle/utils.py",
)


def cache_dir() -> Path:
    return Path(os.environ.get("DSPARK_CACHE_DIR", Path.home() / ".cache" / "dspark-k8s"))


def vllm_source(version: str) -> Path:
    """A directory holding ``FILES`` of the ``vllm==version`` wheel (and its METADATA)."""
    root = cache_dir() / f"vllm-{version}"
    src = root / "src"
    marker = src / ".complete"
    if marker.is_file() and marker.read_text() == "\n".join(FILES):
        return src
    wheels = root / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"vllm-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(wheels),
             f"vllm=={version}"],
            check=True, timeout=1800,
        )
        found = sorted(wheels.glob(f"vllm-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download left no vllm-{version} wheel in {wheels}")
    tmp = root / "src.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(found[0]) as zf:
        zf.extractall(tmp, members=[*FILES, f"vllm-{version}.dist-info/METADATA"])
    shutil.rmtree(src, ignore_errors=True)
    tmp.rename(src)
    (src / ".complete").write_text("\n".join(FILES))
    shutil.rmtree(wheels, ignore_errors=True)
    return src
