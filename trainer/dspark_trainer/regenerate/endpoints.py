"""OpenAI-compatible chat endpoints: URL handling, the HTTP client, error classes and the readiness wait.

Errors are classified once, here: connection failures, timeouts, HTTP 408/409/425/429 and 5xx are
``retryable``; other 4xx (a prompt longer than the context, a bad parameter) are ``permanent`` (the sample is
rejected without retrying). A 200 whose body is not a chat completion counts as retryable."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


def normalize_endpoint(url: str) -> str:
    """``http://host:port``, ``http://host:port/`` and ``http://host:port/v1`` all name the same server."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint {url!r} must start with http:// or https://")
    return url


@dataclass(frozen=True)
class ChatOutcome:
    """One request's result as plain data (it crosses Ray's object store): ``ok`` with the answer, or the error."""

    ok: bool
    endpoint: str
    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    retryable: bool = False
    error: str = ""
    seconds: float = 0.0


def _error_message(status: int, text: str) -> str:
    try:
        obj = json.loads(text)
        err = obj.get("error") if isinstance(obj, dict) else None
        message = err.get("message") if isinstance(err, dict) else (obj.get("message") or obj.get("detail"))
        if message:
            return f"HTTP {status}: {message}"
    except (json.JSONDecodeError, AttributeError):
        pass
    return f"HTTP {status}: {text[:300]}"


def parse_completion(endpoint: str, body: Any, seconds: float) -> ChatOutcome:
    """Pull the answer out of a chat completion body."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise TypeError("content is not a string")
        return ChatOutcome(
            ok=True, endpoint=endpoint, content=content, finish_reason=choice.get("finish_reason"),
            usage=body.get("usage"), model=body.get("model"), seconds=seconds,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        return ChatOutcome(ok=False, endpoint=endpoint, retryable=True, error=f"malformed response: {exc!r}",
                           seconds=seconds)


class ChatClient:
    """An aiohttp client of one endpoint; at most ``concurrency`` requests in flight (the rest wait here)."""

    def __init__(self, endpoint: str, concurrency: int, timeout_s: float) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self.url = f"{self.endpoint}/v1/chat/completions"
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._sem: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.busy_seconds = 0.0

    async def _open(self) -> tuple[asyncio.Semaphore, aiohttp.ClientSession]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._sem, self._session

    async def chat(self, payload: dict[str, Any]) -> ChatOutcome:
        """Send one request; never raises for request failures (they come back as a not-ok outcome)."""
        sem, session = await self._open()
        async with sem:
            self.in_flight += 1
            self.requests += 1
            start = time.monotonic()
            try:
                async with session.post(self.url, json=payload) as resp:
                    text = await resp.text()
                    seconds = time.monotonic() - start
                    if resp.status == 200:
                        try:
                            body = json.loads(text)
                        except json.JSONDecodeError:
                            outcome = ChatOutcome(False, self.endpoint, retryable=True,
                                                  error="response is not JSON", seconds=seconds)
                        else:
                            outcome = parse_completion(self.endpoint, body, seconds)
                    else:
                        retryable = resp.status in RETRYABLE_STATUS or resp.status >= 500
                        outcome = ChatOutcome(False, self.endpoint, retryable=retryable,
                                              error=_error_message(resp.status, text), seconds=seconds)
            except TimeoutError:
                outcome = ChatOutcome(False, self.endpoint, retryable=True, error="request timed out",
                                      seconds=time.monotonic() - start)
            except aiohttp.ClientError as exc:
                outcome = ChatOutcome(False, self.endpoint, retryable=True,
                                      error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - start)
            finally:
                self.in_flight -= 1
                self.busy_seconds += time.monotonic() - start
        if not outcome.ok:
            self.errors += 1
        return outcome

    def stats(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "requests": self.requests, "errors": self.errors,
                "busy_seconds": round(self.busy_seconds, 3)}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def list_models(endpoint: str, timeout_s: float = 5.0) -> list[str]:
    """The model ids of ``GET /v1/models``."""
    with urllib.request.urlopen(f"{normalize_endpoint(endpoint)}/v1/models", timeout=timeout_s) as resp:
        body = json.loads(resp.read())
    return [str(m["id"]) for m in body.get("data", []) if isinstance(m, dict) and "id" in m]


def wait_for_endpoints(endpoints: list[str], timeout_s: float, poll_s: float = 2.0) -> dict[str, list[str]]:
    """Wait until every endpoint answers ``/v1/models`` (e.g. SGLang still loading); returns their model ids."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, list[str]] = {}
    last_error: dict[str, str] = {}
    while True:
        for ep in endpoints:
            if ep in found:
                continue
            try:
                found[ep] = list_models(ep)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                last_error[ep] = f"{type(exc).__name__}: {exc}"
        if len(found) == len(endpoints):
            return found
        if time.monotonic() >= deadline:
            missing = {ep: last_error.get(ep, "?") for ep in endpoints if ep not in found}
            raise TimeoutError(f"endpoints not ready after {timeout_s:.0f}s: {missing}")
        time.sleep(poll_s)
