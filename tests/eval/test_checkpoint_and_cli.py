"""Drafts from training checkpoints, and the CLI's user errors (one line, exit 2, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from dspark_trainer.cli import main
from dspark_trainer.eval.checkpoints import load_eval_draft
from dspark_trainer.model.api import export_draft
from dspark_trainer.runtime.checkpoint import ModelOptimizerState
from eval_helpers import draft_for


def test_training_checkpoint_weights_replace_the_exported_ones(tiny_llama: Path, tmp_path: Path) -> None:
    exported = draft_for(tiny_llama, seed=0)
    export_draft(exported, tmp_path / "draft")
    trained = draft_for(tiny_llama, seed=5)  # other trainable weights, same frozen vocabulary weights
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad])
    dcp.save({"train": ModelOptimizerState(trained, opt)}, checkpoint_id=str(tmp_path / "step-00000010"),
             no_dist=True)
    got = load_eval_draft(tmp_path / "draft", checkpoint=tmp_path / "step-00000010")
    want = trained.state_dict()
    for name, tensor in got.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        load_eval_draft(tmp_path / "draft", checkpoint=tmp_path)


def test_cli_user_errors(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export_draft(draft_for(tiny_llama), tmp_path / "draft")
    base = ["eval", "--draft", str(tmp_path / "draft"), "--target", str(tiny_llama), "--device", "cpu",
            "--target-dtype", "float32", "--no-progress"]
    assert main([*base, "--prompt-set", "nope"]) == 2
    assert "neither a built-in set" in capsys.readouterr().err
    assert main([*base, "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"prompt": "a b c"}\n')
    out = tmp_path / "r.json"
    assert main([*base, "--prompts", str(prompts), "--max-new-tokens", "6", "--batch-size", "2",
                 "--output", str(out)]) == 0
    assert "tau" in capsys.readouterr().out and out.is_file()


def test_a_serving_export_without_the_frozen_tables_evaluates(tiny_llama: Path, tmp_path: Path) -> None:
    """The trainer's default export (bf16, no embedding / LM head) is evaluated with the target's tables."""
    from dspark_trainer.eval import EvalOptions, run_evaluation

    export_draft(draft_for(tiny_llama), tmp_path / "draft", dtype=torch.bfloat16, include_frozen=False)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"prompt": "a b c"}\n')
    report = run_evaluation(tmp_path / "draft", tiny_llama, str(prompts), 2, 0.0, device="cpu",
                            target_dtype="float32", options=EvalOptions(max_new_tokens=6, progress=False))
    assert report.num_prompts == 2 and report.tau >= 1.0 and report.greedy_match == 1.0
