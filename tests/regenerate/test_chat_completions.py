"""The reference server's OpenAI-compatible chat endpoint (in process, aiohttp's test client, tiny target)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from dspark_trainer.capture.chat_completions import (
    FaultInjector,
    add_chat_completion_routes,
    build_app,
    load_model,
    parse_request,
)

USER = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_target: Path) -> tuple[Any, Any]:
    import torch

    torch.set_num_threads(1)
    return load_model(str(tiny_target))


def call(make_app: Callable[[], web.Application], fn: Callable[[TestClient[Any, Any]], Awaitable[Any]]) -> Any:
    """Serve a fresh app (an app is bound to one event loop) and run ``fn`` against it."""

    async def main() -> Any:
        async with TestClient(TestServer(make_app())) as client:
            return await fn(client)

    return asyncio.run(main())


def post_many(make_app: Callable[[], web.Application], bodies: list[Any]) -> list[tuple[int, Any]]:
    async def fn(client: TestClient[Any, Any]) -> list[tuple[int, Any]]:
        out = []
        for body in bodies:
            kwargs = {"data": body} if isinstance(body, str) else {"json": body}
            resp = await client.post("/v1/chat/completions", **kwargs)
            out.append((resp.status, await resp.json()))
        return out

    result: list[tuple[int, Any]] = call(make_app, fn)
    return result


def test_completion_shape_usage_and_sampling(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    app = lambda: build_app(model, tok, "tiny")  # noqa: E731
    base = {"model": "tiny", "messages": USER, "max_tokens": 12, "ignore_eos": True}
    sampled = {**base, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "seed": 7}
    results = post_many(app, [
        sampled, sampled, {**sampled, "seed": 8}, {**base, "temperature": 0}, {**base, "temperature": 0},
        {**base, "temperature": 0, "chat_template_kwargs": {"enable_thinking": True}},
    ])
    assert all(status == 200 for status, _ in results), results
    body = results[0][1]
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    prompt_ids = tok(tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True, enable_thinking=False),
                     add_special_tokens=False)["input_ids"]
    assert body["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 12,
                             "total_tokens": len(prompt_ids) + 12}
    # a seed makes one request reproducible; greedy is deterministic
    assert results[0][1]["choices"][0]["message"] == results[1][1]["choices"][0]["message"]
    assert results[3][1]["choices"][0]["message"] == results[4][1]["choices"][0]["message"]
    # thinking is disabled by default: the generation prompt carries the empty reasoning block
    with_block = results[3][1]["usage"]["prompt_tokens"]
    without_block = results[5][1]["usage"]["prompt_tokens"]
    assert with_block > without_block


def test_stop_sequences_and_eos(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    app = lambda: build_app(model, tok, "tiny")  # noqa: E731
    greedy = {"messages": USER, "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    [(status, body)] = post_many(app, [greedy])
    full = body["choices"][0]["message"]["content"]
    stop = next(full[i : i + 2] for i in range(2, len(full) - 2) if full[i : i + 2].isascii() and full[i : i + 2])
    [(status, body)] = post_many(app, [{**greedy, "stop": [stop]}])
    assert status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert stop not in choice["message"]["content"] and full.startswith(choice["message"]["content"])
    assert body["usage"]["completion_tokens"] < 40


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("{not json", 400, None),
        ([1, 2], 400, None),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
         "messages[0].content"),
        ({"messages": USER, "temperature": 3}, 400, "temperature"),
        ({"messages": USER, "temperature": "hot"}, 400, "temperature"),
        ({"messages": USER, "top_p": 0}, 400, "top_p"),
        ({"messages": USER, "top_k": -5}, 400, "top_k"),
        ({"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": USER, "max_completion_tokens": 1.5}, 400, "max_completion_tokens"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": USER, "stop": 5}, 400, "stop"),
        ({"messages": USER, "seed": "x"}, 400, "seed"),
        ({"messages": USER, "n": 2}, 400, "n"),
        ({"messages": USER, "stream": True}, 400, "stream"),
        ({"messages": USER, "logprobs": True}, 400, "logprobs"),
        ({"messages": USER, "chat_template_kwargs": "x"}, 400, "chat_template_kwargs"),
        ({"messages": USER, "model": "other"}, 404, "model"),
    ],
)
def test_invalid_requests_get_clear_errors(
    model_and_tokenizer: tuple[Any, Any], body: Any, status: int, param: str | None
) -> None:
    model, tok = model_and_tokenizer
    [(got, answer)] = post_many(lambda: build_app(model, tok, "tiny"), [body])
    assert got == status, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["message"]


def test_context_limit_and_models(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    def app() -> web.Application:
        application = web.Application()
        add_chat_completion_routes(application, model, tok, model_name="tiny", max_context=64)
        return application

    long_prompt = [{"role": "user", "content": "word " * 200}]
    results = post_many(app, [{"messages": long_prompt}, {"messages": USER, "max_tokens": 1000, "ignore_eos": True}])
    (status, body), (status2, body2) = results
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert status2 == 200
    assert body2["usage"]["total_tokens"] == 64 and body2["choices"][0]["finish_reason"] == "length"

    async def models(client: TestClient[Any, Any]) -> Any:
        return await (await client.get("/v1/models")).json()

    listing = call(app, models)
    assert listing["data"][0]["id"] == "tiny" and listing["data"][0]["max_model_len"] == 64


def test_fault_injection(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    faults = FaultInjector(status=503, always_substring="POISON", flaky_substring="FLAKY", flaky_failures=2)
    app = lambda: build_app(model, tok, "tiny", faults=faults)  # noqa: E731
    flaky = {"messages": [{"role": "user", "content": "a FLAKY one"}], "max_tokens": 2}
    poison = {"messages": [{"role": "user", "content": "POISON"}], "max_tokens": 2}
    statuses = [s for s, _ in post_many(app, [flaky, flaky, flaky, poison, poison, {**flaky, "seed": 1}])]
    # the third try of the flaky conversation passes; a seed does not change the conversation's key
    assert statuses == [503, 503, 200, 503, 503, 200]
    assert faults.injected == 4


def test_parse_request_defaults() -> None:
    req = parse_request({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                                               "text": "b"}]}]})
    assert req.messages == [{"role": "user", "content": "ab"}]
    assert req.template_kwargs == {"enable_thinking": False}
    assert req.top_k == 0 and req.stop == () and req.max_tokens is None
    req = parse_request({"messages": USER, "chat_template_kwargs": {"enable_thinking": True}, "top_k": -1,
                         "stop": "x"})
    assert req.template_kwargs == {"enable_thinking": True} and req.top_k == 0 and req.stop == ("x",)


def test_generation_on_the_capture_engines_decoder(tiny_target: Path, model_and_tokenizer: tuple[Any, Any]) -> None:
    """On the capture server, chat generation uses the engine's decoder + the checkpoint's LM head (no second copy
    of the target): logits and greedy answers are identical to the full causal LM's."""
    from types import SimpleNamespace

    import torch
    from dspark_trainer.capture.chat_completions import attach_to_capture_server, causal_lm_from_decoder
    from dspark_trainer.capture.engine import CaptureEngine

    model, tok = model_and_tokenizer
    engine = CaptureEngine(tiny_target, [0, 1], dtype="float32")
    lm = causal_lm_from_decoder(engine.base, tiny_target)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        assert torch.equal(lm(ids).logits, model(input_ids=ids).logits)

    def app() -> web.Application:
        server = SimpleNamespace(engine=engine, app=web.Application())
        attach_to_capture_server(server, tiny_target, model_name="tiny")
        return server.app

    greedy = {"messages": USER, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    [(status, body)] = post_many(app, [greedy])
    [(_, reference)] = post_many(lambda: build_app(model, tok, "tiny"), [greedy])
    assert status == 200 and body["choices"] == reference["choices"] and body["usage"] == reference["usage"]
