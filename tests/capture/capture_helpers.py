"""Helpers of the capture tests: the direct transformers forward the captures must equal, HTTP calls."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, Self

import torch
from aiohttp import web
from dspark_trainer.util.net import free_port

TINY_VOCAB = 320
TINY_LAYERS = 8


@lru_cache(maxsize=2)
def reference_model(path: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()


def reference_states(path: Path, ids: list[int], layer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(aux [T, L*H], last [T, H]) from a plain transformers forward with output_hidden_states=True.

    transformers' hidden_states: index 0 is the embedding output, index i+1 the output of layer i, and the
    last entry is replaced by the output of the final norm. The last hidden state is checked against the LM
    head too: lm_head(last) must give the model's logits, so it is the state AFTER the final norm.
    """
    model = reference_model(str(path))
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    assert len(hs) == model.config.num_hidden_layers + 1
    last = hs[-1][0]
    with torch.inference_mode():
        assert torch.equal(model.lm_head(last), out.logits[0])
    return torch.cat([hs[i + 1][0] for i in layer_ids], dim=-1), last


def http(url: str, body: Any = None, method: str | None = None) -> tuple[int, dict[str, str], Any]:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
            status, headers = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status, headers = exc.code, dict(exc.headers)
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one series in Prometheus text format (0 if absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


class BackgroundWebApp(ABC):
    """An aiohttp application on a free 127.0.0.1 port, served by an event loop in a daemon thread for the
    duration of a `with` block. Subclasses call `super().__init__()` and add their handlers in `add_routes`."""

    client_max_size = 1024**2  # aiohttp's default

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Register the subclass's handlers on `app`."""

    def __enter__(self) -> Self:
        app = web.Application(client_max_size=self.client_max_size)
        self.add_routes(app)
        self.runner = web.AppRunner(app)
        self.thread.start()

        async def start() -> None:
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
