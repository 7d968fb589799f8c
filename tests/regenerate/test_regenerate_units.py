"""Regeneration without Ray or servers: the shard plan, atomic commits and resume state, turn-by-turn logic,
retries, fail-over and rejects (a fake sender stands in for the endpoints)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from dspark_trainer.regenerate.conversation import EndpointBalancer, Regenerator, regenerate_lines
from dspark_trainer.regenerate.endpoints import ChatOutcome, normalize_endpoint
from dspark_trainer.regenerate.options import RetryPolicy, SamplingParams
from dspark_trainer.regenerate.output import OutputDir, OutputMismatchError, ShardResult
from dspark_trainer.regenerate.plan import InputLine, make_plan, read_shard

NO_WAIT = RetryPolicy(max_retries=3, backoff_base_s=0.0, backoff_max_s=0.0)


def conv(uid: str | None, *turns: tuple[str, str]) -> str:
    rec: dict[str, Any] = {"messages": [{"role": r, "content": c} for r, c in turns]}
    if uid is not None:
        rec["id"] = uid
    return json.dumps(rec)


def test_plan_is_deterministic_and_spans_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("\n".join([conv("a1", ("user", "x")), "", conv(None, ("user", "y")), "   "]) + "\n")
    (data / "b.jsonl").write_text("".join(conv(f"b{i}", ("user", str(i))) + "\n" for i in range(4)))
    (data / "notes.txt").write_text("ignored")
    plan = make_plan(str(data), shard_size=4)
    assert plan.num_samples == 6 and [s.count for s in plan.shards] == [4, 2]
    assert [s.first_index for s in plan.shards] == [0, 4]
    assert len(plan.shards[0].segments) == 2  # shard 0 spans both files
    lines = [line for spec in plan.shards for line in read_shard(spec)]
    assert [line.index for line in lines] == list(range(6))
    assert [(Path(line.path).name, line.line) for line in lines[:3]] == [("a.jsonl", 1), ("a.jsonl", 3), ("b.jsonl", 1)]
    assert lines[1].default_uid == "a.jsonl:3"  # the trainer's id convention (blank lines counted)
    again = make_plan(str(data / "*.jsonl"), shard_size=4)  # a glob of the same shards
    assert again == plan
    assert make_plan(str(data), shard_size=3).fingerprint() != plan.fingerprint()
    (data / "b.jsonl").write_text((data / "b.jsonl").read_text() + conv("b9", ("user", "z")) + "\n")
    assert make_plan(str(data), shard_size=4).fingerprint() != plan.fingerprint()


def test_read_shard_flags_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(conv("ok", ("user", "a")).encode() + b"\n\xff\xfe broken\n")
    [spec] = make_plan(str(path), shard_size=10).shards
    lines = list(read_shard(spec))
    assert lines[0].error is None and lines[1].error and "UTF-8" in lines[1].error


def result(shard: int, written: int, rejected: int) -> ShardResult:
    return ShardResult(shard=shard, data="".join(f'{{"id": "w{i}"}}\n' for i in range(written)),
                       rejects="".join(f'{{"id": "r{i}"}}\n' for i in range(rejected)), written=written,
                       rejected=rejected, retried=0, requests=written, samples=written + rejected)


def test_commit_resume_state_and_manifest(tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "out")
    out.lock()
    (out.root / ".part-00003.jsonl.abc.tmp").write_text("left by a killed run")
    with pytest.raises(OutputMismatchError, match="another run"):
        OutputDir(tmp_path / "out").lock()
    out.unlock()
    out.lock()  # a new run removes the temporary files
    assert not list(out.root.glob(".*.tmp"))
    out.check_manifest({"plan": {"shard_size": 2}, "sampling": {"t": 1}})
    out.check_manifest({"plan": {"shard_size": 2}, "sampling": {"t": 1}, "endpoints": ["other"]})
    with pytest.raises(OutputMismatchError, match="plan"):
        out.check_manifest({"plan": {"shard_size": 3}, "sampling": {"t": 1}})
    with pytest.raises(OutputMismatchError, match="sampling"):
        out.check_manifest({"plan": {"shard_size": 2}, "sampling": {"t": 2}})
    assert out.committed(0) is None
    state = out.commit(result(0, 1, 1))
    assert out.committed(0) == state and out.rejects_path(0).exists()
    # a redo with no rejects removes the old rejects file
    out.commit(result(0, 2, 0))
    assert not out.rejects_path(0).exists() and len(out.data_path(0).read_text().splitlines()) == 2
    # a data file that does not match its commit record is not a written shard
    out.data_path(0).write_text("torn")
    assert out.committed(0) is None
    assert not list(out.root.rglob("*.tmp"))
    assert sorted(p.name for p in out.root.glob("*.jsonl")) == ["part-00000.jsonl"]


def test_normalize_endpoint() -> None:
    assert normalize_endpoint("http://h:1/v1/") == normalize_endpoint("http://h:1") == "http://h:1"
    with pytest.raises(ValueError):
        normalize_endpoint("h:1")


class FakeEndpoints:
    """Answers ``gen<n>`` (n counts the assistant messages sent); ``fail`` maps (endpoint, call number) to errors."""

    def __init__(self, n: int = 2, fail: Any = None) -> None:
        self.names = [f"http://ep{i}" for i in range(n)]
        self.calls: list[tuple[int, dict[str, Any]]] = []
        self.fail = fail or (lambda ep, payload, k: None)

    async def send(self, ep: int, payload: dict[str, Any]) -> ChatOutcome:
        self.calls.append((ep, json.loads(json.dumps(payload))))
        err = self.fail(ep, payload, len(self.calls))
        if err == "raise":
            raise ConnectionError("actor lost")
        if err is not None:
            return ChatOutcome(False, self.names[ep], retryable=err[0], error=err[1])
        turn = sum(m["role"] == "assistant" for m in payload["messages"])
        return ChatOutcome(True, self.names[ep], content=f"gen{turn}", finish_reason="stop",
                           usage={"prompt_tokens": 5, "completion_tokens": 2}, model="m")

    def regenerator(self, **kw: Any) -> Regenerator:
        return Regenerator(self.send, self.names, "m", kw.pop("sampling", SamplingParams(max_tokens=16)),
                           kw.pop("retry", NO_WAIT), **kw)


def line(text: str, index: int = 0) -> InputLine:
    return InputLine(index=index, path="/d/in.jsonl", line=index + 1, text=text)


def test_turn_by_turn_uses_regenerated_history() -> None:
    fake = FakeEndpoints()
    regen = fake.regenerator()
    text = json.dumps({"id": "c1", "category": "math", "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"},
    ]})
    ok, rec = asyncio.run(regen.regenerate(line(text)))
    assert ok
    assert [m["content"] for m in rec["messages"]] == ["sys", "q1", "gen0", "q2", "gen1", "q3", "gen2"]
    assert rec["id"] == "c1" and rec["category"] == "math"
    sent = [[m["content"] for m in payload["messages"]] for _, payload in fake.calls]
    assert sent == [["sys", "q1"], ["sys", "q1", "gen0", "q2"], ["sys", "q1", "gen0", "q2", "gen1", "q3"]]
    payload = fake.calls[0][1]
    assert (payload["temperature"], payload["top_p"], payload["top_k"]) == (0.7, 0.8, 20)
    assert payload["chat_template_kwargs"] == {"enable_thinking": False} and payload["model"] == "m"
    assert "seed" not in payload
    # all turns of one sample go to one endpoint
    assert len({ep for ep, _ in fake.calls}) == 1
    meta = rec["regeneration"]
    assert meta["sampling"]["temperature"] == 0.7 and meta["model"] == "m" and meta["source"] == "/d/in.jsonl:1"
    assert [t["message"] for t in meta["turns"]] == [2, 4, 6] and meta["turns"][0]["endpoint"] in fake.names


def test_seeds_are_derived_per_sample_and_turn() -> None:
    fake = FakeEndpoints()
    regen = fake.regenerator(sampling=SamplingParams(seed=3))
    text = conv(None, ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a"))
    asyncio.run(regen.regenerate(line(text, index=5)))
    asyncio.run(regen.regenerate(line(text, index=5)))
    seeds = [payload["seed"] for _, payload in fake.calls]
    assert seeds[:2] == seeds[2:] and seeds[0] != seeds[1]


def test_retry_fails_over_then_succeeds() -> None:
    fake = FakeEndpoints(fail=lambda ep, payload, k: (True, "HTTP 503: busy") if k <= 2 else None)
    regen = fake.regenerator()
    ok, rec = asyncio.run(regen.regenerate(line(conv("x", ("user", "q")))))
    assert ok and rec["regeneration"]["turns"][0]["attempts"] == 3
    eps = [ep for ep, _ in fake.calls]
    assert eps[0] != eps[1] and eps[1] != eps[2]  # each retry goes to the other endpoint
    assert regen.counters.retried == 2 and regen.counters.requests == 3


def test_transport_exception_is_retryable() -> None:
    fake = FakeEndpoints(fail=lambda ep, payload, k: "raise" if k == 1 else None)
    ok, _ = asyncio.run(fake.regenerator().regenerate(line(conv("x", ("user", "q")))))
    assert ok


def test_permanent_error_rejects_without_retry() -> None:
    fake = FakeEndpoints(fail=lambda ep, payload, k: (False, "HTTP 400: prompt too long"))
    regen = fake.regenerator()
    ok, rec = asyncio.run(regen.regenerate(line(conv("x", ("user", "q"), ("assistant", "a")))))
    assert not ok and len(fake.calls) == 1
    assert "HTTP 400: prompt too long" in rec["reason"] and rec["attempts"] == 1 and rec["record"]["id"] == "x"


def test_retries_exhausted_rejects_with_reason() -> None:
    fake = FakeEndpoints(fail=lambda ep, payload, k: (True, "HTTP 500: boom") if k >= 2 else None)
    regen = fake.regenerator()
    text = conv("x", ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "b"))
    ok, rec = asyncio.run(regen.regenerate(line(text)))
    assert not ok
    assert "assistant turn 1 (messages[3])" in rec["reason"] and "gave up after 4 attempts" in rec["reason"]
    assert "HTTP 500: boom" in rec["reason"] and rec["attempts"] == 5
    assert regen.counters.retried == 3


def test_truncated_answers_can_be_rejected() -> None:
    class Truncating(FakeEndpoints):
        async def send(self, ep: int, payload: dict[str, Any]) -> ChatOutcome:
            return ChatOutcome(True, self.names[ep], content="...", finish_reason="length")

    fake = Truncating()
    ok, _ = asyncio.run(fake.regenerator().regenerate(line(conv("x", ("user", "q")))))
    assert ok
    ok, rec = asyncio.run(fake.regenerator(reject_truncated=True).regenerate(line(conv("x", ("user", "q")))))
    assert not ok and "max_tokens" in rec["reason"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{oops", "not valid JSON"),
        ("[1]", "JSON object"),
        (json.dumps({"messages": []}), "non-empty"),
        (conv("x", ("robot", "q")), "role"),
        (conv("x", ("system", "s")), "no user turn"),
        (conv("x", ("assistant", "a"), ("user", "q")), "before any user turn"),
        (json.dumps({"messages": [{"role": "user", "content": "q"},
                                  {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]}]}), "tool"),
    ],
)
def test_unusable_records_are_rejected(text: str, reason: str) -> None:
    fake = FakeEndpoints()
    ok, rec = asyncio.run(fake.regenerator().regenerate(line(text, index=4)))
    assert not ok and reason in rec["reason"] and rec["index"] == 4 and not fake.calls
    assert rec.get("raw") == text or "record" in rec


def test_regenerate_lines_keeps_order_and_accounts_for_every_line() -> None:
    fake = FakeEndpoints(fail=lambda ep, payload, k: (False, "HTTP 400: no") if "bad" in json.dumps(payload) else None)
    texts = [conv(f"s{i}", ("user", "bad" if i % 3 == 0 else "fine")) for i in range(10)] + ["nope"]
    lines = [line(t, index=i) for i, t in enumerate(texts)]
    seen: list[bool] = []
    res = asyncio.run(regenerate_lines(lines, fake.regenerator(), max_in_flight=3, on_sample=seen.append))
    data = [json.loads(r) for r in res.data]
    rejects = [json.loads(r) for r in res.rejects]
    assert [r["regeneration"]["index"] for r in data] == [1, 2, 4, 5, 7, 8]
    assert [r["index"] for r in rejects] == [0, 3, 6, 9, 10]
    assert len(seen) == 11 and seen.count(True) == 6


def test_balancer_prefers_least_busy_and_avoids_failed() -> None:
    bal = EndpointBalancer(3)
    bal.in_flight[:] = [2, 0, 1]
    assert bal.choose() == 1
    assert bal.choose(avoid=1) == 2
    assert bal.choose(preferred=0) == 0
    assert bal.choose(preferred=0, avoid=0) == 1
    single = EndpointBalancer(1)
    assert single.choose(avoid=0) == 0
