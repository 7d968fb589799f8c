"""The regeneration pipeline end to end: local Ray on 2 CPUs (and the asyncio engine) against two reference servers
serving a tiny target. Every input sample ends exactly once in the output or the rejects; a run killed after some
shards are written resumes without duplicates; failing requests are retried and, past the limit, rejected."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.data.records import load_dataset
from dspark_trainer.regenerate.options import RetryPolicy, RunOptions, SamplingParams
from regen_helpers import child_env, kill_session, read_jsonl, session_pids

MULTI_TURN = [("system", "Answer briefly."), ("user", "q1"), ("assistant", "old answer 1"), ("user", "q2"),
              ("assistant", "old answer 2")]


def write_input(path: Path, n: int, flaky: set[int] = frozenset(), poison: set[int] = frozenset(),  # type: ignore[assignment]
                garbage: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """``n`` conversations (ids ``c<i>``; every 5th without an id, every 4th prompt-only); returns the ids."""
    ids, lines = [], []
    for i in range(n):
        if i in garbage:
            lines.append("{this is not json")
            ids.append(f"{path.name}:{len(lines)}")
            continue
        tag = " FLAKY" if i in flaky else " POISON" if i in poison else ""
        turns = [(r, c.replace("q1", f"question {i}{tag}")) for r, c in MULTI_TURN]
        if i % 4 == 3:
            turns = turns[:2]
        rec: dict[str, Any] = {"messages": [{"role": r, "content": c} for r, c in turns], "topic": f"t{i % 3}"}
        if i % 5 != 2:
            rec["id"] = f"c{i}"
        lines.append(json.dumps(rec))
        ids.append(rec.get("id", f"{path.name}:{len(lines)}"))
    path.write_text("\n".join(lines) + "\n")
    return ids


def collect(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data = [r for p in sorted(out.glob("part-*.jsonl")) for r in read_jsonl(p)]
    rejects = [r for p in sorted((out / "rejects").glob("part-*.jsonl")) for r in read_jsonl(p)]
    return data, rejects


def assert_exactly_once(out: Path, ids: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data, rejects = collect(out)
    indexes = [r["regeneration"]["index"] for r in data] + [r["index"] for r in rejects]
    assert sorted(indexes) == list(range(len(ids))), "every input sample exactly once in output or rejects"
    assert sorted([r["id"] for r in data] + [r["id"] for r in rejects]) == sorted(ids)
    return data, rejects


def options(inp: Path, out: Path, servers: list[str], **kw: Any) -> RunOptions:
    base: dict[str, Any] = {
        "input": str(inp), "output": out, "endpoints": tuple(servers), "shard_size": 4, "workers": 2,
        "concurrency_per_endpoint": 4, "num_cpus": 2, "object_store_memory": 200 * 2**20, "progress": False,
        "sampling": SamplingParams(max_tokens=6), "retry": RetryPolicy(max_retries=2, backoff_base_s=0.05),
        "wait_endpoints_s": 60,
    }
    base.update(kw)
    return RunOptions(**base)


@pytest.mark.slow
def test_ray_pipeline_exactly_once_with_retries_and_rejects(servers: list[str], tmp_path: Path) -> None:
    from dspark_trainer.regenerate.pipeline import run_ray

    inp, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    flaky, poison, garbage = {1, 6, 13}, {4, 17}, {9}
    ids = write_input(inp, 22, flaky=flaky, poison=poison, garbage=garbage)
    logs: list[str] = []
    summary = run_ray(options(inp, out, servers), logs.append)

    data, rejects = assert_exactly_once(out, ids)
    assert sorted(r["index"] for r in rejects) == sorted(poison | garbage)
    for rej in rejects:
        if rej["index"] in poison:
            assert "injected fault" in rej["reason"] and "gave up after 3 attempts" in rej["reason"]
            assert rej["id"] == ids[rej["index"]] and "messages" in rej["record"]
        else:
            assert "not valid JSON" in rej["reason"] and rej["raw"] == "{this is not json"
    by_index = {r["regeneration"]["index"]: r for r in data}
    for i in flaky:  # failed once on each server it tried, then written
        assert by_index[i]["regeneration"]["turns"][0]["attempts"] >= 2
    for rec in data:
        msgs, meta = rec["messages"], rec["regeneration"]
        assert msgs[-1]["role"] == "assistant" and "old answer" not in json.dumps(msgs)
        assert meta["model"] == "tiny" and meta["sampling"]["top_k"] == 20 and meta["sampling"]["max_tokens"] == 6
        assert meta["sampling"]["chat_template_kwargs"] == {"enable_thinking": False}
        assert rec["topic"] == f"t{meta['index'] % 3}"
        assert len(meta["turns"]) == (1 if meta["index"] % 4 == 3 else 2)
    used = {t["endpoint"] for rec in data for t in rec["regeneration"]["turns"]}
    assert used == set(servers)

    run, total = summary["run"], summary["total"]
    assert (run["read"], run["written"], run["rejected"]) == (22, len(data), len(rejects))
    assert run["retried"] >= len(flaky) + 2 * len(poison) and total["complete"] and run["shards_written"] == 6
    assert json.loads((out / "summary.json").read_text())["run"] == run
    assert any('"read": 22' in line for line in logs)
    # the output directory is a trainer dataset: only the regenerated shards, unique ids
    assert len(load_dataset(str(out))) == len(data)

    # a rerun finds every shard written and touches nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.jsonl")}
    again = run_ray(options(inp, out, servers), logs.append)
    assert again["run"]["shards_skipped"] == 6 and again["run"]["read"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.jsonl")} == stamps


def test_asyncio_engine_same_contract(servers: list[str], tmp_path: Path) -> None:
    from dspark_trainer.regenerate.local import run_asyncio

    inp, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    ids = write_input(inp, 9, flaky={2}, poison={5})
    summary = run_asyncio(options(inp, out, servers, sampling=SamplingParams(max_tokens=4, seed=11)), lambda m: None)
    _, rejects = assert_exactly_once(out, ids)
    assert [r["index"] for r in rejects] == [5] and summary["run"]["retried"] >= 1 + 2
    assert summary["run"]["engine"] == "asyncio" and summary["total"]["complete"]


def cli(inp: Path, out: Path, servers: list[str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dspark_trainer.cli", "data", "regenerate", "--input", str(inp), "--output", str(out),
           "--shard-size", "4", "--workers", "1", "--concurrency-per-endpoint", "1", "--max-tokens", "24",
           "--extra-body", '{"ignore_eos": true}', "--num-cpus", "2", "--object-store-memory", str(200 * 2**20),
           "--backoff", "0.05", "--wait-endpoints", "60"]
    for url in servers:
        cmd += ["--endpoint", url]
    cmd += extra
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=child_env(),
                            start_new_session=True)


@pytest.mark.slow
def test_cli_killed_halfway_resumes_without_duplicates(servers: list[str], tmp_path: Path) -> None:
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    ids = write_input(inp, 48)
    n_shards = 12
    proc = cli(inp, out, servers, tmp_path / "run1.log")
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "_state").glob("part-*.json"))) < 2:  # poll until some shards are committed
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.02)
    finally:
        kill_session(proc)  # SIGKILL: the driver, raylet, workers and Ray's agents
    assert not session_pids(proc.pid)
    committed = {p.name: p.read_text() for p in (out / "_state").glob("part-*.json")}
    assert 2 <= len(committed) < n_shards, "the run must be killed halfway"
    before = {name: (out / json.loads(text)["data_file"]).read_bytes() for name, text in committed.items()}

    proc = cli(inp, out, servers, tmp_path / "run2.log", "--summary-to", str(tmp_path / "counts.json"))
    try:
        assert proc.wait(timeout=300) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["shards_skipped"] == len(committed)
    assert summary["run"]["shards_written"] == n_shards - len(committed)
    assert summary["total"]["complete"] and summary["total"]["written"] == 48
    data, rejects = assert_exactly_once(out, ids)
    assert not rejects and len(data) == 48
    for name, body in before.items():  # shards written before the kill were not rewritten
        assert (out / json.loads(committed[name])["data_file"]).read_bytes() == body
    assert not list(out.rglob(".*.tmp"))
    assert '"read": ' in (tmp_path / "run2.log").read_text()
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts["complete"] and counts["total_written"] == 48 and counts["read"] == 48 - 4 * len(committed)
