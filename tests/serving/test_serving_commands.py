"""The serving command lines of docs/deploy.md: SGLang's parsed by SGLang 0.5.23's own argument parser, vLLM's
speculative config checked against vLLM 0.34.0's SpeculativeConfig, and each pointing at the format the
export writes for it."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PARSE_SCRIPT = REPO / "tests" / "capture" / "sglang_parse_argv.py"


def deploy_commands(prefix: str) -> list[list[str]]:
    """The bash code blocks' commands of docs/deploy.md that start with ``prefix``, split like a shell."""
    text = (REPO / "docs" / "deploy.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(prefix):
                out.append(shlex.split(line))
    return out


def sglang_parse(argv: list[str], src: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(src), str(site)))}
    return subprocess.run([sys.executable, str(PARSE_SCRIPT), json.dumps(argv)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_sglang_commands_parse_with_the_pinned_sglang(sglang_src: Path, sglang_site: Path) -> None:
    commands = deploy_commands("python3 -m sglang.launch_server")
    algorithms = []
    for argv in commands:
        done = sglang_parse(argv[3:], sglang_src, sglang_site)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
        parsed = json.loads(done.stdout.strip().splitlines()[-1])
        assert parsed["speculative_draft_model_path"].startswith("/drafts/")
        assert parsed["dtype"] == "bfloat16" and parsed["model_path"] == "Qwen/Qwen3-8B"
        algorithms.append(parsed["speculative_algorithm"])
    assert algorithms == ["DSPARK", "DFLASH"]
    # argparse takes any algorithm name; SGLang resolves it against its enum later
    spec_info = ast.parse((sglang_src / "sglang/srt/speculative/spec_info.py").read_text())
    enum = next(n for n in spec_info.body if isinstance(n, ast.ClassDef) and n.name == "SpeculativeAlgorithm")
    members = {t.id for n in enum.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert set(algorithms) <= members
    # the check fails on a misspelt flag
    bad = [a.replace("--speculative-draft-model-path", "--speculative-draft-path") for a in commands[1][3:]]
    done = sglang_parse(bad, sglang_src, sglang_site)
    assert done.returncode == 2 and "--speculative-draft-path" in done.stderr


def _speculative_fields(vllm_src: Path) -> tuple[set[str], dict[str, list[str]]]:
    tree = ast.parse((vllm_src / "vllm/config/speculative.py").read_text())
    literals: dict[str, list[str]] = {}
    fields: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript) \
                and ast.unparse(node.value.value) == "Literal" and isinstance(node.value.slice, ast.Constant):
            literals[node.targets[0].id] = [node.value.slice.value]  # type: ignore[attr-defined]
        if isinstance(node, ast.ClassDef) and node.name == "SpeculativeConfig":
            fields = {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return fields, literals


def test_the_vllm_commands_fit_vllms_speculative_config(vllm_src: Path) -> None:
    fields, literals = _speculative_fields(vllm_src)
    assert "speculative_config" in (vllm_src / "vllm/engine/arg_utils.py").read_text()
    methods = []
    for argv in deploy_commands("vllm serve"):
        assert argv[:3] == ["vllm", "serve", "Qwen/Qwen3-8B"]
        spec: dict[str, Any] = json.loads(argv[argv.index("--speculative-config") + 1])
        assert set(spec) <= fields, set(spec) - fields
        assert spec["num_speculative_tokens"] == 7 and spec["model"].startswith("/drafts/")
        methods.append(spec["method"])
    assert methods == ["dspark", "dflash"]
    assert literals["DSparkModelTypes"] == ["dspark"] and literals["DFlashModelTypes"] == ["dflash"]


def test_the_docs_name_the_formats_the_export_writes() -> None:
    from dspark_trainer.model.serving import DFLASH_ARCHITECTURE

    text = (REPO / "docs" / "deploy.md").read_text()
    assert f"`{DFLASH_ARCHITECTURE}`, `block_size` K + 1" in text and "`Qwen3DSparkModel`, `block_size` K" in text


@pytest.mark.parametrize("prefix", ["python3 -m sglang.launch_server", "vllm serve"])
def test_each_engine_has_a_command_per_format(prefix: str) -> None:
    assert len(deploy_commands(prefix)) == 2
