"""Exported config.json files read by SGLang 0.5.23's own draft-config parsers (run from its source) and
checked against vLLM 0.34.0's: the block size, the draft length, the anchor row, the mask token and the
target layers each engine takes from them are what the draft was trained with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model import build_draft_model, export_draft
from sglang_parsers import sglang_parsers

K = 4
BASE = {"block_size": K, "num_draft_layers": 2, "num_anchors": 8}
DFLASH = DraftOptions.dflash().model_dump(include={"markov_rank", "enable_confidence_head",
                                                   "confidence_head_with_markov", "ce_alpha", "l1_alpha",
                                                   "confidence_alpha"})


def exported_config(tiny_target: Path, tmp_path: Path, **opts: Any) -> dict[str, Any]:
    out = export_draft(build_draft_model(tiny_target, DraftOptions(**BASE, **opts)), tmp_path / "draft",
                       include_frozen=False)
    data: dict[str, Any] = json.loads((out / "config.json").read_text())
    return data


def test_sglang_dspark_reads_gamma_k_from_the_anchor_row(tiny_target: Path, tmp_path: Path, sglang_src: Path,
                                                         sglang_site: Path) -> None:
    sg = sglang_parsers(sglang_src, sglang_site)
    cfg = exported_config(tiny_target, tmp_path, markov_rank=16, markov_head_type="gated")
    parsed = sg.parse_dspark_draft_config(draft_hf_config=cfg)
    assert (parsed.gamma, parsed.markov_rank, parsed.markov_head_type) == (K, 16, "gated")
    assert parsed.mask_token_id == 504 and parsed.target_layer_ids == [1, 2, 3, 4, 5]
    assert sg.sample_from_anchor(cfg) is True  # K query rows from the anchor, as trained
    runtime = sg.resolve_runtime_config(draft_hf_config=cfg, speculative_num_draft_tokens=None, target_vocab_size=512)
    assert (runtime.gamma, runtime.verify_num_draft_tokens, runtime.mask_token_id) == (K, K + 1, 504)


def test_sglang_dflash_reads_k_plus_one_rows(tiny_target: Path, tmp_path: Path, sglang_src: Path,
                                             sglang_site: Path) -> None:
    sg = sglang_parsers(sglang_src, sglang_site)
    cfg = exported_config(tiny_target, tmp_path, **DFLASH)
    parsed = sg.parse_dflash_draft_config(draft_hf_config=cfg)
    # --speculative-num-draft-tokens defaults to this block size: the anchor row and K mask rows, K drafts
    assert parsed.resolve_block_size(default=16) == K + 1
    assert parsed.mask_token_id == 504 and parsed.num_hidden_layers == 2 and parsed.num_target_layers == 8
    assert parsed.resolve_target_layer_ids(target_num_layers=8) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="markov_rank > 0"):  # DSPARK refuses it: it must be served as DFLASH
        sg.resolve_runtime_config(draft_hf_config=cfg, speculative_num_draft_tokens=None, target_vocab_size=512)


def test_sglang_refuses_target_layer_minus_one(tiny_target: Path, tmp_path: Path, sglang_src: Path,
                                               sglang_site: Path) -> None:
    sg = sglang_parsers(sglang_src, sglang_site)
    cfg = exported_config(tiny_target, tmp_path, markov_rank=16, target_layer_ids=[-1, 3])
    with pytest.raises(ValueError, match="out-of-range layer id"):
        sg.parse_dflash_draft_config(draft_hf_config=cfg).resolve_target_layer_ids(target_num_layers=8)


def test_vllm_reads_the_same_draft_length(tiny_target: Path, tmp_path: Path, vllm_src: Path) -> None:
    dspark_cfg = (vllm_src / "vllm/v1/worker/gpu/spec_decode/dspark/config.py").read_text()
    # dspark: num_speculative_tokens defaults to block_size, and an anchor-sampling draft runs that many queries
    assert 'block_size = getattr(hf_config, "block_size", None)' in dspark_cfg
    assert 'if getattr(hf_config, "sample_from_anchor", True):' in dspark_cfg
    assert exported_config(tiny_target, tmp_path, markov_rank=16)["block_size"] == K
    assert "sample_from_anchor" not in exported_config(tiny_target, tmp_path / "x", markov_rank=16)
    # dflash: a bonus (anchor) query plus one query per draft token, the layout the DFlash export trained in
    dflash_cfg = (vllm_src / "vllm/v1/worker/gpu/spec_decode/dflash/config.py").read_text()
    assert "return self.num_speculative_tokens + 1" in dflash_cfg
    # the aux layers vLLM captures are target_layer_ids + 1 ("after layer i"), read from dflash_config
    eagle3 = (vllm_src / "vllm/v1/worker/gpu/spec_decode/eagle/eagle3_utils.py").read_text()
    assert 'layer_ids = [i + 1 for i in (dflash_config.get("target_layer_ids") or [])]' in eagle3
    registry = (vllm_src / "vllm/model_executor/models/registry.py").read_text()
    assert '"Qwen3DSparkModel": ("qwen3_dspark", "Qwen3DSparkForCausalLM")' in registry
    assert '"DFlashDraftModel": ("qwen3_dflash", "DFlashQwen3ForCausalLM")' in registry
