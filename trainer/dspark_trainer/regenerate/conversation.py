"""Turn-by-turn regeneration of one conversation, with retries, back-off and endpoint fail-over (no Ray here).

For every assistant turn, the conversation up to that turn (with the previously REGENERATED assistant turns) is
sent to an endpoint and the turn is replaced by the answer. A conversation that ends with a user turn gets one
generated answer appended (a prompt-only dataset). All turns of a sample go to the same endpoint while it works
(SGLang can reuse the cached prefix); a failed request is retried after a back-off on another endpoint when
there is one. A sample whose request fails permanently (a non-retryable 4xx, or retries exhausted) is rejected
with the reason; nothing a sample does can lose it: every input line ends as exactly one written or rejected
record."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dspark_trainer.data.records import messages_problem, record_id
from dspark_trainer.regenerate.endpoints import ChatOutcome
from dspark_trainer.regenerate.options import RetryPolicy, SamplingParams
from dspark_trainer.regenerate.plan import InputLine

# send(endpoint_index, payload) -> outcome; never raises for request failures.
Sender = Callable[[int, dict[str, Any]], Awaitable[ChatOutcome]]


class SampleRejected(Exception):
    """The sample cannot be regenerated; ``reason`` goes to the rejects file."""

    def __init__(self, reason: str, attempts: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclass
class Counters:
    requests: int = 0
    retried: int = 0


class EndpointBalancer:
    """Local view of the requests in flight per endpoint; picks the least busy one (round robin on ties)."""

    def __init__(self, n: int) -> None:
        self.in_flight = [0] * n
        self._next = 0

    def choose(self, preferred: int | None = None, avoid: int | None = None) -> int:
        candidates = [i for i in range(len(self.in_flight)) if i != avoid] or list(range(len(self.in_flight)))
        if preferred is not None and preferred in candidates:
            return preferred
        lowest = min(self.in_flight[i] for i in candidates)
        ties = [i for i in candidates if self.in_flight[i] == lowest]
        pick = ties[self._next % len(ties)]
        self._next += 1
        return pick


def parse_conversation(line: InputLine) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """The record, its id and messages; raises ``SampleRejected`` for what cannot be regenerated."""
    if line.error:
        raise SampleRejected(line.error)
    try:
        obj = json.loads(line.text)
    except json.JSONDecodeError as exc:
        raise SampleRejected(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SampleRejected("a record must be a JSON object with a `messages` list")
    messages = obj.get("messages")
    problem = messages_problem(messages)
    if problem:
        raise SampleRejected(problem)
    assert isinstance(messages, list)
    seen_user = False
    for i, msg in enumerate(messages):
        if msg["role"] == "tool" or msg.get("tool_calls"):
            raise SampleRejected(f"messages[{i}]: tool calls are not supported by regeneration")
        if msg["role"] == "user":
            seen_user = True
        elif msg["role"] == "assistant" and not seen_user:
            raise SampleRejected(f"messages[{i}]: an assistant turn before any user turn")
    if not seen_user:
        raise SampleRejected("the conversation has no user turn")
    return obj, record_id(obj, line.default_uid), messages


def _prompt_message(msg: dict[str, Any]) -> dict[str, Any]:
    out = {"role": msg["role"], "content": msg.get("content") or ""}
    if msg.get("name"):
        out["name"] = msg["name"]
    return out


@dataclass
class Regenerator:
    """Regenerates conversations through ``send``; ``endpoints`` are the names recorded in the output."""

    send: Sender
    endpoints: list[str]
    model: str
    sampling: SamplingParams
    retry: RetryPolicy
    reject_truncated: bool = False
    counters: Counters = field(default_factory=Counters)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.balancer = EndpointBalancer(len(self.endpoints))
        self._sampling_record = self.sampling.to_record()

    async def _request(self, messages: list[dict[str, Any]], index: int, turn: int,
                       sticky: list[int | None]) -> tuple[ChatOutcome, int]:
        """One turn's request with retries; ``messages`` is the conversation before the turn."""
        payload: dict[str, Any] = {"model": self.model, "messages": messages, **self.sampling.request_fields()}
        seed = self.sampling.request_seed(index, turn)
        if seed is not None:
            payload["seed"] = seed
        avoid: int | None = None
        attempt = 0
        while True:
            ep = self.balancer.choose(preferred=sticky[0], avoid=avoid)
            attempt += 1
            self.counters.requests += 1
            self.balancer.in_flight[ep] += 1
            try:
                outcome = await self.send(ep, payload)
            except Exception as exc:  # a transport failure (e.g. a lost Ray actor) is retryable
                outcome = ChatOutcome(False, self.endpoints[ep], retryable=True, error=f"{type(exc).__name__}: {exc}")
            finally:
                self.balancer.in_flight[ep] -= 1
            if outcome.ok:
                sticky[0] = ep
                return outcome, attempt
            where = f"assistant turn {turn} (messages[{len(messages)}]) at {self.endpoints[ep]}"
            if not outcome.retryable:
                raise SampleRejected(f"{where}: {outcome.error}", attempt)
            if attempt > self.retry.max_retries:
                raise SampleRejected(f"{where}: gave up after {attempt} attempts; last error: {outcome.error}", attempt)
            self.counters.retried += 1
            sticky[0], avoid = None, ep
            await asyncio.sleep(self.retry.delay(attempt, self.rng))

    async def regenerate(self, line: InputLine) -> tuple[bool, dict[str, Any]]:
        """``(True, output record)`` or ``(False, reject record)``."""
        obj: dict[str, Any] | None = None
        uid = line.default_uid
        attempts = 0
        try:
            obj, uid, messages = parse_conversation(line)
            out: list[dict[str, Any]] = []
            turns: list[dict[str, Any]] = []
            sticky: list[int | None] = [None]
            targets: list[dict[str, Any] | None] = [*messages] + ([] if messages[-1]["role"] == "assistant" else [None])
            for msg in targets:
                if msg is not None and msg["role"] != "assistant":
                    out.append(_prompt_message(msg))
                    continue
                turn = len(turns)
                outcome, tries = await self._request(list(out), line.index, turn, sticky)
                attempts += tries
                if self.reject_truncated and outcome.finish_reason == "length":
                    raise SampleRejected(f"turn {turn}: the answer hit max_tokens ({self.sampling.max_tokens})",
                                         attempts)
                out.append({"role": "assistant", "content": outcome.content})
                usage = outcome.usage or {}
                turns.append({
                    "message": len(out) - 1, "endpoint": outcome.endpoint, "finish_reason": outcome.finish_reason,
                    "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
                    "attempts": tries,
                })
        except SampleRejected as rej:
            reject: dict[str, Any] = {
                "id": uid, "index": line.index, "source": line.source, "reason": rej.reason,
                "attempts": attempts + rej.attempts,
            }
            if obj is not None:
                reject["record"] = obj
            else:
                reject["raw"] = line.text
            return False, reject
        record = {key: value for key, value in obj.items() if key not in ("id", "messages", "regeneration")}
        record = {"id": uid, "messages": out, **record}
        record["regeneration"] = {
            "index": line.index, "source": line.source, "model": self.model, "sampling": self._sampling_record,
            "turns": turns,
        }
        return True, record


@dataclass
class LinesResult:
    data: list[str]
    rejects: list[str]


async def regenerate_lines(
    lines: list[InputLine],
    regenerator: Regenerator,
    max_in_flight: int,
    on_sample: Callable[[bool], None] | None = None,
) -> LinesResult:
    """Regenerate ``lines`` with at most ``max_in_flight`` samples at a time; outputs keep the input order."""
    sem = asyncio.Semaphore(max_in_flight)
    outcomes: dict[int, tuple[bool, dict[str, Any]]] = {}

    async def one(line: InputLine) -> None:
        async with sem:
            try:
                outcomes[line.index] = await regenerator.regenerate(line)
            except Exception as exc:  # a bug must not lose the sample: it becomes a reject
                outcomes[line.index] = (False, {"id": line.default_uid, "index": line.index, "source": line.source,
                                                "reason": f"internal error: {type(exc).__name__}: {exc}",
                                                "raw": line.text})
        if on_sample is not None:
            on_sample(outcomes[line.index][0])

    await asyncio.gather(*(one(line) for line in lines))
    data: list[str] = []
    rejects: list[str] = []
    for line in lines:
        ok, rec = outcomes[line.index]
        (data if ok else rejects).append(json.dumps(rec, ensure_ascii=False))
    return LinesResult(data, rejects)
