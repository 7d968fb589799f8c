"""The serving export: dtype and frozen-weight options, the DFLASH format of markovRank 0 drafts, loading
exports back into the trainer (with the frozen weights taken from the target), the runtime's job export
and `dspark export`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from dspark_trainer.cli import main as cli_main
from dspark_trainer.config import JobConfig
from dspark_trainer.config.draft import DraftOptions
from dspark_trainer.model import build_draft_model, export_checkpoint, export_draft, load_draft
from dspark_trainer.model.checkpoint import read_checkpoint_config
from dspark_trainer.model.serving import FROZEN_WEIGHTS
from dspark_trainer.model.target_weights import load_vocab_weights
from model_helpers import make_batch
from safetensors import safe_open

OPTS = {"block_size": 4, "num_draft_layers": 2, "num_anchors": 8, "markov_rank": 16}
DFLASH = {**OPTS, **DraftOptions.dflash().model_dump(
    include={"markov_rank", "enable_confidence_head", "confidence_head_with_markov", "ce_alpha", "l1_alpha",
             "confidence_alpha"})}


def stored(path: Path) -> dict[str, torch.dtype]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {n: f.get_tensor(n).dtype for n in f.keys()}  # noqa: SIM118


def test_serving_export_is_bf16_without_the_frozen_weights_and_loads_back_from_the_target(
    tiny_target: Path, tmp_path: Path
) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS), seed=4)
    out = export_draft(model, tmp_path / "serve", dtype=torch.bfloat16, include_frozen=False)
    dtypes = stored(out)
    assert not set(FROZEN_WEIGHTS) & set(dtypes)
    assert {n for n, d in dtypes.items() if d == torch.float32} == {"confidence_head.proj.weight",
                                                                    "confidence_head.proj.bias"}
    assert {d for n, d in dtypes.items() if not n.startswith("confidence_head.")} == {torch.bfloat16}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16"  # what SGLang's --dtype auto then runs
    with pytest.raises(ValueError, match="target_dir"):
        load_draft(out)
    back = load_draft(out, target_dir=tiny_target)
    embed, head = load_vocab_weights(tiny_target, dtype=torch.float32)
    original = model.state_dict()
    for name, t in back.state_dict().items():
        if name in FROZEN_WEIGHTS:
            want = (embed if name.startswith("embed") else head).to(torch.bfloat16)
        else:
            want = original[name].to(dtypes[name])
        assert t.dtype == want.dtype and torch.equal(t, want), name
    # the frozen weights it took from the target are the ones the training used
    assert torch.equal(original["embed_tokens.weight"], embed) and torch.equal(original["lm_head.weight"], head)


def test_include_frozen_writes_them_and_refuses_a_state_without_them(tiny_target: Path, tmp_path: Path) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS))
    with_frozen = export_draft(model, tmp_path / "with", dtype=torch.bfloat16, include_frozen=True)
    assert set(FROZEN_WEIGHTS) <= set(stored(with_frozen))
    state = {k: v for k, v in model.state_dict().items() if k not in FROZEN_WEIGHTS}
    with pytest.raises(ValueError, match="--target"):
        export_checkpoint(state, model.config, tmp_path / "x", include_frozen=True)
    state.pop("fc.weight")
    with pytest.raises(ValueError, match="missing"):
        export_checkpoint(state, model.config, tmp_path / "y", include_frozen=False)


def test_markov_rank_0_exports_in_the_dflash_format_and_reads_back(tiny_target: Path, tmp_path: Path) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**DFLASH), seed=2)
    out = export_draft(model, tmp_path / "dflash")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["DFlashDraftModel"]
    # SGLang's DFLASH block: the anchor row and K mask rows; vLLM's dflash drafts num_speculative_tokens = K
    assert cfg["block_size"] == cfg["dflash_config"]["block_size"] == OPTS["block_size"] + 1
    assert cfg["dflash_config"]["mask_token_id"] == 504 and cfg["dflash_config"]["target_layer_ids"] == [1, 2, 3, 4, 5]
    assert cfg["layer_types"] == ["full_attention"] * 2 and "is_causal" not in cfg  # non-causal blocks
    assert not any(n.startswith(("markov_head.", "confidence_head.")) for n in stored(out))
    back = load_draft(out)
    assert back.config.block_size == OPTS["block_size"]
    assert back.config.model_dump(exclude={"base_config"}) == model.config.model_dump(exclude={"base_config"})
    batch = make_batch(back.config)
    with torch.no_grad():
        a = model(*batch.args()[:5]).hidden
        b = back(*batch.args()[:5]).hidden
    assert torch.equal(a, b)


def test_a_pre_dflash_export_of_markov_rank_0_is_refused(tiny_target: Path, tmp_path: Path) -> None:
    out = export_draft(build_draft_model(tiny_target, DraftOptions(**DFLASH)), tmp_path / "d")
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(architectures=["Qwen3DSparkModel"], block_size=4,
               dflash_config={**cfg["dflash_config"], "block_size": 4})
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="DFLASH layout"):
        read_checkpoint_config(out)


def test_export_warns_about_the_engines_that_cannot_serve_the_draft(
    tiny_target: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dspark_trainer.model.checkpoint"):
        export_draft(build_draft_model(tiny_target, DraftOptions(**OPTS)), tmp_path / "vanilla")
        assert caplog.records == []
        export_draft(build_draft_model(tiny_target, DraftOptions(**OPTS, markov_head_type="gated")), tmp_path / "g")
    (record,) = caplog.records
    assert "vLLM" in record.getMessage() and "gated" in record.getMessage() and "SGLang" in record.getMessage()


def job_config(target: Path, out: Path, **export: object) -> JobConfig:
    return JobConfig.from_mapping({
        "target": {"model": str(target)}, "dataset": {"path": "/data/x.jsonl"},
        "draft": {k: v for k, v in OPTS.items()}, "outputDir": str(out), "export": export,
        "inference": {"engine": "reference"},
    })


def test_the_runtime_export_follows_the_job_config(tiny_target: Path, tmp_path: Path) -> None:
    from dspark_trainer.runtime.draft_dspark import DSparkDraftAPI

    for name, export, frozen, dtype in (("default", {}, False, torch.bfloat16),
                                        ("full", {"dtype": "float32", "includeFrozenWeights": True}, True,
                                         torch.float32)):
        config = job_config(tiny_target, tmp_path / name, **export)
        api = DSparkDraftAPI()
        model = api.build_model(config, str(tiny_target), [1, 2, 3, 4, 5], torch.device("cpu"))
        api.export(model.state_dict(), config, str(tiny_target), [1, 2, 3, 4, 5], tmp_path / name)
        dtypes = stored(tmp_path / name)
        assert (set(FROZEN_WEIGHTS) <= set(dtypes)) is frozen
        assert dtypes["fc.weight"] == dtype


def test_dspark_export_rewrites_a_draft_for_serving(tiny_target: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model = build_draft_model(tiny_target, DraftOptions(**OPTS))
    full = export_draft(model, tmp_path / "full")  # float32 with the frozen weights: the old export
    assert cli_main(["export", str(full), "--out", str(tmp_path / "serve")]) == 0
    assert "without the embedding / LM head" in capsys.readouterr().out
    small, big = (tmp_path / "serve" / "model.safetensors").stat().st_size, (full / "model.safetensors").stat().st_size
    assert small < big / 3
    # back to a self-contained directory: the frozen weights come from --target
    assert cli_main(["export", str(tmp_path / "serve"), "--out", str(tmp_path / "again"),
                     "--include-frozen-weights"]) == 2
    assert "--target" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "serve"), "--out", str(tmp_path / "again"), "--include-frozen-weights",
                     "--target", str(tiny_target), "--dtype", "float32"]) == 0
    again = load_draft(tmp_path / "again")
    for name in FROZEN_WEIGHTS:
        assert torch.equal(again.state_dict()[name], model.state_dict()[name]), name
