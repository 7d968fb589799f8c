"""The SGLang command a job's capture server runs, parsed by SGLang's own argument parser at the pinned
version (``sglang==0.5.23``, unpacked beside this environment with the few packages its parser imports):
an unknown flag, a bad value or a missing capture flag fails here, not in a user's pod."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from contract_helpers import REPO, render, rendered_config, write_target_config
from dspark_trainer.capture import sglang_plugin
from dspark_trainer.capture.sglang_args import CAPTURE_REQUIREMENTS, sglang_server_args
from dspark_trainer.commands.capture_server import sglang_command
from dspark_trainer.config import JobConfig
from module_loader import load_module

sglang_source = load_module("sglang_source", REPO / "tests" / "capture" / "sglang_source.py")
PARSE_SCRIPT = REPO / "tests" / "capture" / "sglang_parse_argv.py"


@pytest.fixture(scope="module")
def sglang_path() -> list[Path]:
    try:
        return list(sglang_source.sglang_parser_path(sglang_plugin.SGLANG_VERSION))
    except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:  # no package index
        if os.environ.get("CI"):
            pytest.fail(f"cannot install sglang=={sglang_plugin.SGLANG_VERSION}'s parser: {exc}")
        pytest.skip(f"cannot install sglang=={sglang_plugin.SGLANG_VERSION}'s parser: {exc}")


def sglang_parse(argv: list[str], path: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in path)}
    return subprocess.run([sys.executable, str(PARSE_SCRIPT), json.dumps(argv)], env=env, capture_output=True,
                          text=True, timeout=300)


def rendered_job(tmp_path: Path, **inference: Any) -> JobConfig:
    target = write_target_config(tmp_path / "target", num_layers=36)
    spec = {
        "target": {"model": str(target), "dtype": "bfloat16", "revision": "main"},
        "dataset": {"path": "/data/train.jsonl", "maxLength": 4096,
                    "chatTemplate": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
        "inference": {"tensorParallelSize": 2, "memFractionStatic": 0.85, **inference},
    }
    return JobConfig.from_mapping(rendered_config(render(spec)))


def test_rendered_sglang_command_parses_with_the_pinned_sglang(tmp_path: Path, sglang_path: list[Path]) -> None:
    config = rendered_job(tmp_path, extraArgs=["--max-running-requests", "48", "--log-level", "warning"])
    command = sglang_command(config)
    assert command[1:3] == ["-m", "sglang.launch_server"]
    done = sglang_parse(command[3:], sglang_path)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    for name, want in CAPTURE_REQUIREMENTS.items():
        assert parsed[name] == want, (name, parsed[name])
    # Everything else derived from the spec, as SGLang reads it.
    assert parsed["return_aux_hidden_state_layer_ids"] == [1, 9, 17, 25, 33]
    assert parsed["model_path"] == config.target.model and parsed["revision"] == "main"
    assert (parsed["dtype"], parsed["tp_size"], parsed["mem_fraction_static"]) == ("bfloat16", 2, 0.85)
    assert (parsed["host"], parsed["port"]) == ("0.0.0.0", 30000)
    assert parsed["context_length"] == 4096 + 1
    assert Path(parsed["chat_template"]).read_text() == config.dataset.chat_template
    assert parsed["speculative_draft_model_path"] is None


def test_the_check_fails_on_an_unknown_flag(tmp_path: Path, sglang_path: list[Path]) -> None:
    config = rendered_job(tmp_path, extraArgs=["--no-such-sglang-flag"])
    done = sglang_parse(sglang_command(config)[3:], sglang_path)
    assert done.returncode == 2 and "--no-such-sglang-flag" in done.stderr


def test_the_check_fails_without_a_capture_flag(tmp_path: Path, sglang_path: list[Path]) -> None:
    """SGLang itself refuses aux capture without the layer ids (DSPARK needs them) or its convention."""
    argv = sglang_server_args(rendered_job(tmp_path), [1, 9, 17])
    i = argv.index("--return-aux-hidden-state-layer-ids")
    without_ids = argv[:i] + argv[i + 4:]
    done = sglang_parse(without_ids, sglang_path)
    assert done.returncode == 3 and "--return-aux-hidden-state-layer-ids" in done.stderr
    j = argv.index("--speculative-algorithm")
    without_convention = argv[:j] + argv[j + 2:]
    done = sglang_parse(without_convention, sglang_path)
    assert done.returncode == 3 and "--speculative-algorithm" in done.stderr
    # Without --enable-return-aux-hidden-states SGLang would refuse the layer ids too.
    k = argv.index("--enable-return-aux-hidden-states")
    done = sglang_parse(argv[:k] + argv[k + 1:], sglang_path)
    assert done.returncode != 0


def test_extra_args_cannot_override_a_derived_flag(tmp_path: Path) -> None:
    from contract_helpers import operator_helpers

    operator_helpers.assert_invalid(
        {"inference": {"extraArgs": ["--context-length=8"]}}, "spec.inference.extraArgs[0]", "--context-length"
    )
    operator_helpers.assert_invalid(
        {"inference": {"engine": "reference", "extraArgs": ["--foo"]}}, "spec.inference.extraArgs", "sglang"
    )
