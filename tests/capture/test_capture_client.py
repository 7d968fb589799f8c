"""The trainer-rank capture client against real capture servers and a real Mooncake master."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from aiohttp import web
from capture_helpers import TINY_VOCAB, BackgroundWebApp, http, metric_value, reference_states
from dspark_trainer.capture.engine import CaptureEngine
from dspark_trainer.capture.server import ServerHandle, ServerSettings, start_capture_server
from dspark_trainer.config.training import CaptureClientConfig
from dspark_trainer.data.capture_client import CaptureClient, CaptureError
from dspark_trainer.transport import MooncakeTransport
from harness.mooncake import MooncakeMaster, free_port

pytestmark = pytest.mark.mooncake

LAYER_IDS = [-1, 2, 6]


def _samples(n: int, seed: int = 0, max_len: int = 48) -> list[tuple[str, list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = int(torch.randint(2, max_len, (1,), generator=g))
        ids = torch.randint(0, TINY_VOCAB, (t,), generator=g).tolist()
        mask = [0] * (t // 2) + [1] * (t - t // 2)
        out.append((f"data.jsonl:{i + 1}", ids, mask))
    return out


def _server(target: Path, master: MooncakeMaster, **settings: Any) -> ServerHandle:
    engine = CaptureEngine(target, LAYER_IDS, max_seq_len=256)
    transport = MooncakeTransport(master.transport_config(unavailable_timeout_seconds=1.0), name="capture-server")
    return start_capture_server(engine, transport, ServerSettings(**settings))


def _client(master: MooncakeMaster, endpoints: list[str], **overrides: Any) -> CaptureClient:
    values: dict[str, Any] = {"endpoints": endpoints, "window": 4, "retry_initial_seconds": 0.05,
                              "retry_max_seconds": 0.5, "request_timeout_seconds": 30}
    values.update(overrides)
    transport = master.transport_config(unavailable_timeout_seconds=1.0, not_found_timeout_seconds=0.5)
    return CaptureClient(CaptureClientConfig.model_validate(values), transport)


def _check(sample: Any, target: Path, want: tuple[str, list[int], list[int]]) -> None:
    sid, input_ids, loss_mask, hidden, last_hidden = sample
    assert sid == want[0]
    assert input_ids.tolist() == want[1] and loss_mask.tolist() == want[2]
    ref_hidden, ref_last = reference_states(target, want[1], LAYER_IDS)
    assert torch.equal(hidden, ref_hidden)
    assert torch.equal(last_hidden, ref_last)


@pytest.fixture
def two_servers(tiny_target: Path, mooncake_master: MooncakeMaster) -> Iterator[list[ServerHandle]]:
    servers = [_server(tiny_target, mooncake_master) for _ in range(2)]
    yield servers
    for s in servers:
        s.stop()


def test_stream_in_order_exactly_once_over_two_servers(
    tiny_target: Path, mooncake_master: MooncakeMaster, two_servers: list[ServerHandle]
) -> None:
    samples = _samples(16)
    waits: list[float] = []
    client = _client(mooncake_master, [s.url for s in two_servers], window=4)
    client.on_wait = waits.append
    with client:
        got = []
        for sample in client.stream(samples):
            _check(sample, tiny_target, samples[sample.index])
            got.append(sample.sample_id)
            assert sample.nbytes > 0 and sample.server in {s.url for s in two_servers}
            sample.release()
        assert client.buffer_pool.in_use == 0
        assert mooncake_master.key_count() == 0  # every fetched record was deleted
    assert got == [s[0] for s in samples]
    assert client.stats.delivered == client.stats.submitted == 16
    assert client.stats.retries == 0
    assert len(waits) == 16 and all(w >= 0 for w in waits)
    assert client.stats.data_wait_seconds_total == pytest.approx(sum(waits))
    served = [metric_value(http(f"{s.url}/metrics")[2], "dspark_capture_requests_total") for s in two_servers]
    assert sum(served) == 16 and min(served) >= 4, served  # spread over both servers


def test_retries_dead_server_and_full_queues_without_duplicates(
    tiny_target: Path, mooncake_master: MooncakeMaster
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with _server(tiny_target, mooncake_master, max_queue=1, retry_after_seconds=1) as server:
        samples = _samples(8, seed=1)
        with _client(mooncake_master, [dead, server.url], window=4, max_retries=50) as client:
            got = [s.materialize() for s in client.stream(samples)]
            assert mooncake_master.key_count() == 0
    assert [s.sample_id for s in got] == [s[0] for s in samples]
    for s in got:
        _check(s, tiny_target, samples[s.index])
    assert client.stats.errors["connection"] >= 1
    assert client.stats.errors["queue_full"] >= 1
    assert client.stats.delivered == 8


class _Proxy(BackgroundWebApp):
    """Forwards /capture to a real server; `first_answer` may replace the answer to the first attempt of each
    request (after the server wrote the record)."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.seen: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with aiohttp.ClientSession() as session, session.post(f"{self.upstream}/capture", json=body) as r:
            payload = await r.json()
        if body["request_id"] not in self.seen:
            self.seen.add(body["request_id"])
            replaced = await asyncio.get_running_loop().run_in_executor(None, self.first_answer, payload)
            if replaced is not None:
                return replaced
        return web.json_response(payload, status=r.status)

    def first_answer(self, payload: dict[str, Any]) -> web.Response | None:
        return None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/capture", self.handle)


class _LosingProxy(_Proxy):
    """The answer to each first attempt is lost (503 after the record was written): retries make a second one."""

    def first_answer(self, payload: dict[str, Any]) -> web.Response | None:
        return web.json_response({"error": "lost", "reason": "proxy"}, status=503)


class _MasterRestartingProxy(_Proxy):
    """The Mooncake master restarts between the first record's write and the client's read: the record is lost."""

    def __init__(self, upstream: str, master: MooncakeMaster) -> None:
        super().__init__(upstream)
        self.master = master
        self.restarted = False

    def first_answer(self, payload: dict[str, Any]) -> web.Response | None:
        if not self.restarted:
            self.restarted = True
            self.master.restart()
        return None


def test_stale_record_of_a_lost_answer_is_deleted(tiny_target: Path, mooncake_master: MooncakeMaster) -> None:
    samples = _samples(5, seed=2)
    with (
        _server(tiny_target, mooncake_master) as server,
        _LosingProxy(server.url) as proxy,
        _client(mooncake_master, [f"http://127.0.0.1:{proxy.port}"], window=2) as client,
    ):
        got = [s.materialize() for s in client.stream(samples)]
        # each sample was written twice; the stale first record was deleted with the fetched one
        assert mooncake_master.key_count() == 0
    assert [s.sample_id for s in got] == [s[0] for s in samples]
    assert all(s.attempts == 2 for s in got)
    assert client.stats.stale_keys_deleted == 2 * len(samples)
    for s in got:
        _check(s, tiny_target, samples[s.index])


def test_master_killed_mid_stream_recovers_without_loss_or_duplicates(
    tiny_target: Path, mooncake_master: MooncakeMaster
) -> None:
    samples = _samples(12, seed=3)
    with _server(tiny_target, mooncake_master) as server:
        with _client(mooncake_master, [server.url], window=3, max_retries=200) as client:
            got = []
            for sample in client.stream(samples):
                got.append(sample.materialize())
                if len(got) == 4:
                    mooncake_master.kill()
                    # the server side: a clear 503 while the master is down
                    status, _, ans = http(f"{server.url}/capture", {"request_id": "probe", "input_ids": [1, 2]})
                    assert status == 503 and ans["reason"] == "store_unavailable", ans
                    assert f"Mooncake master at {mooncake_master.address} unreachable" in ans["error"]
                    threading.Timer(1.0, mooncake_master.start).start()
            assert mooncake_master.key_count() == 0
        server_metrics = http(f"{server.url}/metrics")[2]
    assert [s.sample_id for s in got] == [s[0] for s in samples]  # every sample once, in order
    for s in got:
        _check(s, tiny_target, samples[s.index])
    # both sides saw the loss clearly
    assert metric_value(server_metrics, "dspark_capture_failures_total", 'reason="store_unavailable"') >= 1
    assert client.stats.errors["store_unavailable"] + client.stats.errors["record_lost"] >= 1
    assert any("RPC_FAIL" in e or "not in the Mooncake store" in e for e in client.stats.last_errors)
    # (whether a sample had to be captured again depends on timing; test_record_lost_... forces that case)


def test_gives_up_with_a_clear_error(mooncake_master: MooncakeMaster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        _client(mooncake_master, [dead], max_retries=2) as client,
        pytest.raises(CaptureError, match=r"gave up after 3 attempts; last error \(connection\)"),
    ):
        list(client.stream(_samples(2)))


def test_bad_sample_fails_at_once(tiny_target: Path, mooncake_master: MooncakeMaster) -> None:
    with _server(tiny_target, mooncake_master) as server, _client(mooncake_master, [server.url]) as client:
        bad = [("bad:1", [1, TINY_VOCAB + 5], [0, 1])]
        with pytest.raises(CaptureError, match=r"refused the request \(400\): input_ids\[1\]"):
            list(client.stream(bad))
        assert client.stats.retries == 0


def test_record_lost_with_the_master_is_captured_again(tiny_target: Path, mooncake_master: MooncakeMaster) -> None:
    samples = _samples(3, seed=4)
    with (
        _server(tiny_target, mooncake_master) as server,
        _MasterRestartingProxy(server.url, mooncake_master) as proxy,
        _client(mooncake_master, [f"http://127.0.0.1:{proxy.port}"], window=1, max_retries=100) as client,
    ):
        got = [s.materialize() for s in client.stream(samples)]
        assert mooncake_master.key_count() == 0
    assert mooncake_master.starts == 2
    assert [s.sample_id for s in got] == [s[0] for s in samples]
    assert got[0].attempts >= 2 and client.stats.errors["record_lost"] >= 1
    assert any("not in the Mooncake store" in e for e in client.stats.last_errors)
    for s in got:
        _check(s, tiny_target, samples[s.index])
