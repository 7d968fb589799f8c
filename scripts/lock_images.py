#!/usr/bin/env python3
"""Write locks/<image>.txt: the exact versions of every Python package each image of the Dockerfile installs.

    .venv/bin/python scripts/lock_images.py            # all images
    .venv/bin/python scripts/lock_images.py trainer    # one

Each lock is pip's own resolution (`pip install --dry-run --report`, Python 3.11 on Linux like the images) of what
the image's `pip install` asks for, written as `name==version` lines; the Dockerfile passes it as `--constraint`.
The trainer and serving images get torch and what only torch needs (CUDA libraries, triton) from their base image
(pinned by digest), so those are left out; torch itself is in the lock. tests/deploy/test_deploy_dockerfile.py
checks that the locks agree with pyproject.toml and the Dockerfile.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "locks"
PROJECT = "dspark-k8s"
BASE_PROVIDED = "torch"  # the trainer and serving base images' own package


def _pin(extra: str, package: str) -> str:
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == package:
            return str(req)
    raise SystemExit(f"{package} is not in the {extra} extra of pyproject.toml")


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"(?m)^ARG {name}=(\S+)$", (REPO / "Dockerfile").read_text())
    if not match:
        raise SystemExit(f"Dockerfile has no ARG {name}")
    return match.group(1)


def image_requests() -> dict[str, list[str]]:
    """What each image's `pip install` line asks for (the project with its extras and the explicit pins)."""
    mooncake = _pin("mooncake-cuda", "mooncake-transfer-engine")
    return {
        "operator": [f"{REPO}[operator]"],
        "trainer": [f"{REPO}[trainer,mooncake-cuda]", _pin("trainer", "torch"), mooncake],
        "serving": [
            f"{REPO}[serving,mooncake-cuda]",
            _pin("serving", "sglang"),
            f"torch=={_dockerfile_arg('SGLANG_TORCH_VERSION')}",
            mooncake,
        ],
    }


def resolve(requests: Iterable[str]) -> list[dict[str, object]]:
    """pip's report of what it would install for `requests` into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
               str(report), *requests]
        subprocess.run(cmd, check=True)
        return list(json.loads(report.read_text())["install"])


def _graph(items: list[dict[str, object]]) -> dict[str, set[str]]:
    """name -> names of the installed packages it requires (any marker: extras and platforms included)."""
    names = {canonicalize_name(str(i["metadata"]["name"])) for i in items}  # type: ignore[index]
    graph: dict[str, set[str]] = {}
    for item in items:
        meta = item["metadata"]
        deps = {canonicalize_name(Requirement(r).name) for r in meta.get("requires_dist") or []}  # type: ignore[union-attr]
        graph[canonicalize_name(str(meta["name"]))] = deps & names  # type: ignore[index]
    return graph


def _reach(graph: dict[str, set[str]], start: Iterable[str], skip: str | None = None) -> set[str]:
    seen: set[str] = set()
    todo = [s for s in start if s != skip]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [d for d in graph.get(name, ()) if d != skip]
    return seen


def lock_lines(items: list[dict[str, object]], *, base_torch: bool) -> list[str]:
    """`name==version` of every resolved package but the project (and, with a torch base image, what only torch
    needs), sorted."""
    graph = _graph(items)
    versions = {canonicalize_name(str(i["metadata"]["name"])): str(i["metadata"]["version"])  # type: ignore[index]
                for i in items}
    project = canonicalize_name(PROJECT)
    leave_out = {project}
    if base_torch and BASE_PROVIDED in graph:
        # Reachable from torch, but not from the project (or what else the image asks for) without torch.
        others = _reach(graph, graph[project] | {n for n in graph if n not in _reach(graph, [project])}, BASE_PROVIDED)
        leave_out |= _reach(graph, [BASE_PROVIDED]) - others - {BASE_PROVIDED}
    return [f"{name}=={versions[name]}" for name in sorted(versions) if name not in leave_out]


def write(image: str, requests: list[str]) -> Path:
    lines = lock_lines(resolve(requests), base_torch=image != "operator")
    shown = [r.replace(str(REPO), ".") for r in requests]
    header = [
        f"# The {image} image's Python packages, exactly (pip --constraint in the Dockerfile).",
        f"# Generated by scripts/lock_images.py from: pip install {' '.join(shown)}",
    ]
    if image != "operator":
        header.append("# torch's own dependencies (CUDA libraries, triton) come with the base image.")
    path = LOCKS / f"{image}.txt"
    path.write_text("\n".join([*header, *lines]) + "\n")
    return path


def main(argv: list[str]) -> int:
    requests = image_requests()
    LOCKS.mkdir(exist_ok=True)
    for image in argv or list(requests):
        print(write(image, requests[image]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
