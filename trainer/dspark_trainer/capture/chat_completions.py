"""An OpenAI-compatible ``/v1/chat/completions`` (and ``/v1/models``) endpoint on a Hugging Face causal LM.

This is the generation side of the reference capture server: with it, ``dspark data regenerate`` runs
against the reference server exactly as it runs against SGLang, so the whole data path works without SGLang.

What it implements (non-streaming only):
- request validation with OpenAI-style 4xx errors (``{"error": {"message", "type", "param", "code"}}``);
- the chat template with ``enable_thinking=False`` by default (a template that does not use the variable
  ignores it); a request's ``chat_template_kwargs`` (SGLang's extension) overrides the default;
- sampling with ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (SGLang/vLLM extension; -1 or 0 = off),
  ``max_tokens`` / ``max_completion_tokens``, ``stop`` (a string or up to 4), ``seed`` (a per-request
  generator, so one request is reproducible whatever runs beside it) and ``ignore_eos`` (SGLang extension);
- ``usage`` counts (prompt, completion, total tokens).

A prompt that alone fills the model's context is a 400; otherwise ``max_tokens`` is clamped to the room left
(``finish_reason: "length"`` when it runs out). Generation runs one request at a time in a single worker
thread (pass the capture server's executor/lock to share the model safely with capture requests).

Use ``add_chat_completion_routes(app, model, tokenizer, ...)`` on an existing aiohttp app, or run this module
as a small standalone server (``python -m dspark_trainer.capture.chat_completions --model DIR``), which also
has a fault-injection option for tests of clients (``FaultInjector``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
DEFAULT_TEMPLATE_KWARGS: dict[str, Any] = {"enable_thinking": False}
STATE_KEY = web.AppKey("dspark_chat_completions", object)
MAX_STOP_SEQUENCES = 4


class RequestError(Exception):
    """A client error, answered with ``status`` and an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    """An OpenAI-style error body."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 404:
        kind = "not_found_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


@dataclass(frozen=True)
class SamplingRequest:
    """A validated chat completion request."""

    messages: list[dict[str, Any]]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"`{name}` must be a number", name)
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise RequestError(f"`{name}` must be in {bracket}{lo}, {hi}], got {value}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"`{name}` must be an integer", name)
    return value


def _message_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                msg = f"{where}.content[{j}]: only text parts ({{'type': 'text', 'text': ...}}) are supported"
                raise RequestError(msg, f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def parse_request(body: Any) -> SamplingRequest:
    """Validate a request body; raises ``RequestError`` naming the offending parameter."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list", "messages")
    clean: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(f"{where} must be an object", where)
        role = msg.get("role")
        if role not in CHAT_ROLES:
            raise RequestError(f"{where}.role must be one of {sorted(CHAT_ROLES)}, got {role!r}", f"{where}.role")
        if msg.get("tool_calls"):
            raise RequestError(f"{where}: tool calls are not supported by the reference server", f"{where}.tool_calls")
        clean.append({"role": role, "content": _message_text(msg.get("content"), where)})
    if body.get("stream"):
        raise RequestError("streaming is not supported by the reference server; send `stream: false`", "stream")
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise RequestError("only `n: 1` is supported", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise RequestError("`logprobs` is not supported by the reference server", "logprobs")
    if body.get("tools"):
        raise RequestError("`tools` is not supported by the reference server", "tools")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
        raise RequestError("only `response_format: {type: text}` is supported", "response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise RequestError(f"`{name}` is not supported by the reference server (use 0)", name)
    if _number(body, "repetition_penalty", 1.0, 0.0, 10.0) != 1.0:
        msg = "`repetition_penalty` is not supported by the reference server (use 1)"
        raise RequestError(msg, "repetition_penalty")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = _integer(body, "top_k")
    if top_k is None or top_k in (-1, 0):
        top_k = 0
    elif top_k < 1:
        raise RequestError(f"`top_k` must be -1 (off) or a positive integer, got {top_k}", "top_k")
    max_tokens = _integer(body, "max_completion_tokens")
    max_name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_name = _integer(body, "max_tokens"), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(f"`{max_name}` must be at least 1, got {max_tokens}", max_name)
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_raw, str):
        stop = (stop_raw,) if stop_raw else ()
    elif isinstance(stop_raw, list) and all(isinstance(s, str) and s for s in stop_raw):
        if len(stop_raw) > MAX_STOP_SEQUENCES:
            raise RequestError(f"`stop` holds at most {MAX_STOP_SEQUENCES} sequences", "stop")
        stop = tuple(stop_raw)
    else:
        raise RequestError("`stop` must be a string or a list of non-empty strings", "stop")
    seed = _integer(body, "seed")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError("`ignore_eos` must be a boolean", "ignore_eos")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise RequestError("`chat_template_kwargs` must be an object", "chat_template_kwargs")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("`model` must be a string", "model")
    return SamplingRequest(
        messages=clean, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, stop=stop,
        seed=seed, ignore_eos=ignore_eos, template_kwargs={**DEFAULT_TEMPLATE_KWARGS, **(kwargs or {})}, model=model,
    )


@dataclass(frozen=True)
class Generation:
    """What one request produced."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _filter_logits(logits: Any, top_k: int, top_p: float) -> Any:
    import torch

    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already cover top_p (the first token always stays)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class ChatGenerator:
    """Template application and the sampling loop (KV cache, one sequence) for one model and tokenizer."""

    def __init__(
        self, model: Any, tokenizer: Any, max_context: int | None = None, default_max_tokens: int = 512
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        cfg = getattr(model, "config", None)
        self.max_context = int(max_context or getattr(cfg, "max_position_embeddings", 0) or 4096)
        self.default_max_tokens = default_max_tokens
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        sources = [getattr(self.tokenizer, "eos_token_id", None)]
        gen_cfg = getattr(self.model, "generation_config", None)
        sources.append(getattr(gen_cfg, "eos_token_id", None))
        sources.append(getattr(getattr(self.model, "config", None), "eos_token_id", None))
        for src in sources:
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, list | tuple):
                ids.update(int(x) for x in src)
        return frozenset(ids)

    def prompt_ids(self, req: SamplingRequest) -> list[int]:
        """Apply the chat template (with the generation prompt) and tokenize."""
        try:
            text = self.tokenizer.apply_chat_template(
                req.messages, tokenize=False, add_generation_prompt=True, **req.template_kwargs
            )
        except Exception as exc:  # a template may raise on a conversation it does not accept
            raise RequestError(f"the chat template rejected the conversation: {exc}", "messages") from None
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.max_context:
            raise RequestError(
                f"the prompt has {len(ids)} tokens; the model's context is {self.max_context} tokens",
                "messages", code="context_length_exceeded",
            )
        return ids

    def generate(self, req: SamplingRequest, prompt: list[int]) -> Generation:
        """Sample up to ``max_tokens`` tokens (blocking; run it in a worker thread)."""
        import torch

        device = next(self.model.parameters()).device
        budget = min(req.max_tokens or self.default_max_tokens, self.max_context - len(prompt))
        gen = None
        if req.seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed(req.seed)
        out_ids: list[int] = []
        finish = "length"
        text = ""
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
            while len(out_ids) < budget:
                logits = out.logits[0, -1].float()
                if req.temperature == 0.0:
                    nxt = int(torch.argmax(logits))
                else:
                    logits = _filter_logits(logits / req.temperature, req.top_k, req.top_p)
                    probs = torch.softmax(logits, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=gen))
                if nxt in self.eos_ids and not req.ignore_eos:
                    finish = "stop"
                    break
                out_ids.append(nxt)
                if req.stop:
                    text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                    cut = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                        break
                if len(out_ids) >= budget:
                    break
                out = self.model(
                    input_ids=torch.tensor([[nxt]], device=device), past_key_values=out.past_key_values, use_cache=True
                )
        if finish != "stop" or not req.stop:
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
        return Generation(text=text, finish_reason=finish, prompt_tokens=len(prompt), completion_tokens=len(out_ids))


@dataclass
class FaultInjector:
    """Make some chat requests fail with ``status`` (tests of clients' retries and rejects).

    - ``rate``: fail that fraction of requests at random;
    - ``always_substring``: fail every request whose last user message contains it;
    - ``flaky_substring``: fail the first ``flaky_failures`` requests (counted per conversation, on this server)
      whose last user message contains it, then answer normally;
    - ``latency_ms``: wait that long before answering any request (a slow server without burning CPU).
    """

    rate: float = 0.0
    status: int = 500
    always_substring: str | None = None
    flaky_substring: str | None = None
    flaky_failures: int = 1
    latency_ms: float = 0.0
    seed: int = 0
    injected: int = 0
    _seen: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    def check(self, body: Any) -> str | None:
        """The reason to fail this request, or None."""
        messages = body.get("messages") if isinstance(body, dict) else None
        last_user = ""
        if isinstance(messages, list):
            for msg in messages:
                if isinstance(msg, dict) and msg.get("role") == "user" and isinstance(msg.get("content"), str):
                    last_user = msg["content"]
        if self.always_substring and self.always_substring in last_user:
            return f"injected fault: request matches {self.always_substring!r}"
        if self.flaky_substring and self.flaky_substring in last_user:
            key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
            if seen < self.flaky_failures:
                return f"injected fault: flaky failure {seen + 1} of {self.flaky_failures}"
        if self.rate > 0 and self._rng.random() < self.rate:
            return "injected fault: random"
        return None


class ChatCompletionService:
    """The aiohttp handlers; generation runs on ``executor`` under ``lock``."""

    def __init__(
        self,
        generator: ChatGenerator,
        model_name: str,
        executor: Executor | None = None,
        lock: threading.Lock | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        self.generator = generator
        self.model_name = model_name
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-generate")
        self.lock = lock or threading.Lock()
        self.faults = faults
        self.created = int(time.time())
        self.requests = 0
        self.failures = 0

    def _run_locked(self, req: SamplingRequest, prompt: list[int]) -> Generation:
        with self.lock:
            return self.generator.generate(req, prompt)

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "dspark",
            "root": self.model_name, "max_model_len": self.generator.max_context,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def chat_completions(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "the request body is not valid JSON")
        if self.faults is not None:
            if self.faults.latency_ms > 0:
                await asyncio.sleep(self.faults.latency_ms / 1000.0)
            reason = self.faults.check(body)
            if reason is not None:
                self.faults.injected += 1
                self.failures += 1
                return error_response(self.faults.status, reason, code="injected_fault")
        try:
            req = parse_request(body)
            if req.model not in (None, "", "default", self.model_name):
                raise RequestError(f"model {req.model!r} is not served here (this server serves {self.model_name!r})",
                                   "model", status=404, code="model_not_found")
            prompt = self.generator.prompt_ids(req)
        except RequestError as err:
            return error_response(err.status, err.message, err.param, err.code)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.executor, self._run_locked, req, prompt)
        except Exception as exc:  # a generation failure is the server's fault
            self.failures += 1
            return error_response(500, f"generation failed: {type(exc).__name__}: {exc}")
        usage = {
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        choice = {
            "index": 0, "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason, "logprobs": None,
        }
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name, "choices": [choice], "usage": usage,
        })


def add_chat_completion_routes(
    app: web.Application,
    model: Any,
    tokenizer: Any,
    *,
    model_name: str,
    executor: Executor | None = None,
    lock: threading.Lock | None = None,
    max_context: int | None = None,
    default_max_tokens: int = 512,
    faults: FaultInjector | None = None,
) -> ChatCompletionService:
    """Add ``POST /v1/chat/completions`` and ``GET /v1/models`` to ``app``; returns the service (its counters)."""
    service = ChatCompletionService(
        ChatGenerator(model, tokenizer, max_context=max_context, default_max_tokens=default_max_tokens),
        model_name=model_name, executor=executor, lock=lock, faults=faults,
    )
    app[STATE_KEY] = service
    app.router.add_post("/v1/chat/completions", service.chat_completions)
    app.router.add_get("/v1/models", service.models)
    return service


# ---------------------------------------------------------------------------------------------------------------
# On the capture server: generate with the capture engine's own decoder (no second copy of the target).


def _lm_head_weight(model_dir: str | Path, base: Any) -> Any:
    """The LM head of a checkpoint: the embedding when tied, else ``lm_head.weight`` from its safetensors."""
    import torch
    from safetensors import safe_open

    config = base.config
    if getattr(config, "tie_word_embeddings", False):
        return base.get_input_embeddings().weight
    root = Path(model_dir)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        files = [root / json.loads(index.read_text())["weight_map"]["lm_head.weight"]]
    else:
        files = sorted(root.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            if "lm_head.weight" in fh.keys():  # noqa: SIM118 (safe_open has keys(), no __contains__)
                weight = fh.get_tensor("lm_head.weight")
                embed = base.get_input_embeddings().weight
                return torch.nn.Parameter(weight.to(dtype=embed.dtype, device=embed.device), requires_grad=False)
    raise FileNotFoundError(f"no lm_head.weight in {root} (and tie_word_embeddings is false)")


def causal_lm_from_decoder(base: Any, model_dir: str | Path) -> Any:
    """A causal LM view of a decoder (e.g. ``CaptureEngine.base``): the decoder's forward plus the LM head, so
    chat generation shares the capture server's weights. It has what ``ChatGenerator`` uses: ``config``,
    ``parameters()``, and a forward returning ``logits`` and ``past_key_values``."""
    import torch
    from transformers import GenerationConfig

    head = _lm_head_weight(model_dir, base)

    class DecoderWithHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = base
            self.head_weight = head
            self.config = base.config
            try:
                self.generation_config: Any = GenerationConfig.from_pretrained(str(model_dir))
            except OSError:
                self.generation_config = None

        def forward(self, input_ids: Any, past_key_values: Any = None, use_cache: bool = True) -> Any:
            out = self.decoder(input_ids=input_ids, past_key_values=past_key_values, use_cache=use_cache)
            logits = torch.nn.functional.linear(out.last_hidden_state, self.head_weight)
            return _LMOutput(logits=logits, past_key_values=out.past_key_values)

    return DecoderWithHead().eval()


@dataclass
class _LMOutput:
    logits: Any
    past_key_values: Any


def attach_to_capture_server(
    server: Any, model_dir: str | Path, model_name: str | None = None, default_max_tokens: int = 512
) -> ChatCompletionService:
    """Add the chat routes to a ``CaptureServer`` (before it starts): generation uses the capture engine's decoder
    and the checkpoint's LM head, under the engine's lock (the capture hooks stay consistent: no capture runs while
    a generation runs, and each capture resets what the hooks saw)."""
    from transformers import AutoTokenizer

    engine = server.engine
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = causal_lm_from_decoder(engine.base, model_dir)
    return add_chat_completion_routes(
        server.app, model, tokenizer, model_name=model_name or str(model_dir), lock=engine._lock,
        max_context=getattr(engine, "max_seq_len", None), default_max_tokens=default_max_tokens,
    )


# ---------------------------------------------------------------------------------------------------------------
# A small standalone server (tests, benchmarks, and a stand-in until the capture server serves these routes).


def load_model(path: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model = model.to(device)
    model.eval()
    return model, tokenizer


def build_app(
    model: Any, tokenizer: Any, model_name: str, faults: FaultInjector | None = None, default_max_tokens: int = 512
) -> web.Application:
    """An aiohttp app with the chat routes and ``/health``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/health", health)
    add_chat_completion_routes(
        app, model, tokenizer, model_name=model_name, faults=faults, default_max_tokens=default_max_tokens
    )
    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve /v1/chat/completions from a Hugging Face model (reference server).")
    p.add_argument("--model", required=True, help="model directory or hub id")
    p.add_argument("--served-model-name", default=None, help="the name in /v1/models (default: the --model value)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (see --port-file)")
    p.add_argument("--port-file", default=None, help="write the bound port here once serving")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--default-max-tokens", type=int, default=512)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-status", type=int, default=500)
    p.add_argument("--fault-always", default=None, help="fail every request whose last user message contains this")
    p.add_argument("--fault-flaky", default=None, help="fail the first --fault-flaky-count tries of matching requests")
    p.add_argument("--fault-flaky-count", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=0.0, help="wait this long before answering each request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m dspark_trainer.capture.chat_completions --model DIR``."""
    args = _parse_args(argv)
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    faults = None
    if args.fault_rate or args.fault_always or args.fault_flaky or args.latency_ms:
        faults = FaultInjector(
            rate=args.fault_rate, status=args.fault_status, always_substring=args.fault_always,
            flaky_substring=args.fault_flaky, flaky_failures=args.fault_flaky_count, latency_ms=args.latency_ms,
        )
    app = build_app(model, tokenizer, args.served_model_name or args.model, faults, args.default_max_tokens)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else args.port
        if args.port_file:
            tmp = Path(args.port_file + ".tmp")
            tmp.write_text(str(port))
            tmp.replace(args.port_file)
        print(f"serving /v1/chat/completions on http://{args.host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
