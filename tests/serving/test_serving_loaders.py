"""Exports against the draft loaders of the pinned SGLang and vLLM (their key handling replayed from the
source, see engine_loaders.py): every trainable variant either loads completely in an engine, or that
engine's refusal is what the export warns about."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dspark_trainer.capture import sglang_plugin
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model import build_draft_model, export_draft
from dspark_trainer.model.serving import (
    FROZEN_WEIGHTS,
    SGLANG_VERSION,
    VLLM_VERSION,
    ServingFormat,
    serving_format,
    serving_warnings,
)
from engine_loaders import VLLM_SHARED_OR_PLACEHOLDER, sglang_load, vllm_load
from safetensors import safe_open

BASE = {"block_size": 4, "num_draft_layers": 2, "num_anchors": 8}
VARIANTS = {
    "vanilla": {"markov_rank": 16},
    "vanilla-no-confidence": {"markov_rank": 16, "enable_confidence_head": False, "confidence_head_with_markov": False,
                              "confidence_alpha": 0.0},
    "confidence-without-markov-input": {"markov_rank": 16, "confidence_head_with_markov": False},
    "gated": {"markov_rank": 16, "markov_head_type": "gated"},
    "rnn": {"markov_rank": 16, "markov_head_type": "rnn"},
    "dflash": DraftOptions.dflash().model_dump(include={"markov_rank", "enable_confidence_head",
                                                        "confidence_head_with_markov", "ce_alpha", "l1_alpha",
                                                        "confidence_alpha"}),
}


def exported(tiny_target: Path, tmp_path: Path, variant: str, include_frozen: bool) -> tuple[list[str], dict]:
    model = build_draft_model(tiny_target, DraftOptions(**BASE, **VARIANTS[variant]))
    out = export_draft(model, tmp_path / variant, dtype=torch.bfloat16, include_frozen=include_frozen)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    return names, json.loads((out / "config.json").read_text())


def test_the_checked_versions_are_the_pinned_ones(sglang_src: Path, vllm_src: Path) -> None:
    assert SGLANG_VERSION == sglang_plugin.SGLANG_VERSION
    meta = (vllm_src / f"vllm-{VLLM_VERSION}.dist-info" / "METADATA").read_text()
    assert f"\nVersion: {VLLM_VERSION}\n" in meta


@pytest.mark.parametrize("include_frozen", [False, True], ids=["without-frozen", "with-frozen"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sglang_loads_every_variant_completely(
    tiny_target: Path, tmp_path: Path, sglang_src: Path, variant: str, include_frozen: bool
) -> None:
    names, config = exported(tiny_target, tmp_path, variant, include_frozen)
    model_cfg = build_draft_model(tiny_target, DraftOptions(**BASE, **VARIANTS[variant])).config
    algorithm = "DFLASH" if serving_format(model_cfg) == ServingFormat.DFLASH else "DSPARK"
    assert config["architectures"] == (["DFlashDraftModel"] if algorithm == "DFLASH" else ["Qwen3DSparkModel"])
    res = sglang_load(sglang_src, names, model_cfg, algorithm)
    assert res.refused == [] and res.unloaded == set(), (res.refused, res.unloaded)
    assert res.ignored == (set(FROZEN_WEIGHTS) if include_frozen else set())  # taken from the target


@pytest.mark.parametrize("include_frozen", [False, True], ids=["without-frozen", "with-frozen"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_vllm_loads_what_it_serves_and_the_export_warns_about_the_rest(
    tiny_target: Path, tmp_path: Path, vllm_src: Path, variant: str, include_frozen: bool
) -> None:
    names, _config = exported(tiny_target, tmp_path, variant, include_frozen)
    model_cfg = build_draft_model(tiny_target, DraftOptions(**BASE, **VARIANTS[variant])).config
    method = "dflash" if serving_format(model_cfg) == ServingFormat.DFLASH else "dspark"
    res = vllm_load(vllm_src, names, model_cfg, method)
    warnings = [w for w in serving_warnings(model_cfg) if w.startswith("vLLM")]
    if variant in ("gated", "rnn"):
        proj = "gate_proj" if variant == "gated" else "joint_proj"
        assert sorted(res.refused) == [f"markov_head.{proj}.bias", f"markov_head.{proj}.weight"]
        assert len(warnings) == 1 and variant in warnings[0]
        return
    assert res.refused == [] and warnings == []
    assert res.unloaded <= VLLM_SHARED_OR_PLACEHOLDER, res.unloaded
    shipped_frozen = {"model.embed_tokens.weight", "lm_head.weight"} & res.loaded
    assert shipped_frozen == ({"model.embed_tokens.weight", "lm_head.weight"} if include_frozen else set())


def test_target_layer_minus_one_warns_that_sglang_cannot_serve_it(tiny_target: Path, sglang_src: Path) -> None:
    cfg = build_draft_model(tiny_target, DraftOptions(**BASE, markov_rank=16, target_layer_ids=[-1, 2, 5])).config
    (warning,) = serving_warnings(cfg)
    assert warning.startswith("SGLang") and "serve it with vLLM" in warning
    # SGLang's DFLASH/DSPARK config parser refuses it (the check the warning names)
    utils = (sglang_src / "sglang/srt/speculative/dflash_utils.py").read_text()
    assert "if val < 0 or val >= target_num_layers:" in utils


def test_the_replay_notices_a_renamed_module(tiny_target: Path, tmp_path: Path, sglang_src: Path) -> None:
    """A copy of SGLang's source whose Markov head names its table differently makes the check fail."""
    copy = tmp_path / "sglang-src"
    for rel in ("sglang/srt/models/dflash.py", "sglang/srt/models/dspark.py"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sglang_src / rel, copy / rel)
    dspark = copy / "sglang/srt/models/dspark.py"
    dspark.write_text(dspark.read_text().replace("self.markov_w2 = nn.Linear(", "self.markov_out = nn.Linear("))
    names, _ = exported(tiny_target, tmp_path, "vanilla", False)
    cfg = build_draft_model(tiny_target, DraftOptions(**BASE, **VARIANTS["vanilla"])).config
    with pytest.raises(AssertionError, match="markov_w2"):
        sglang_load(copy, names, cfg, "DSPARK")
