"""The reference capture server on a tiny random Qwen3, writing to a real Mooncake master over TCP."""

from __future__ import annotations

import concurrent.futures
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from capture_helpers import TINY_LAYERS, TINY_VOCAB, http, metric_value, reference_states
from dspark_trainer.capture.engine import CaptureEngine, check_layer_ids
from dspark_trainer.capture.server import ServerHandle, ServerSettings, start_capture_server
from dspark_trainer.transport import MooncakeTransport, RecordInfo
from harness.mooncake import MooncakeMaster

LAYER_IDS = [-1, 0, 3, 6]  # both ends: the embedding output and the last layer before the final one


@pytest.fixture
def reader(mooncake_master: MooncakeMaster) -> Iterator[MooncakeTransport]:
    t = MooncakeTransport(mooncake_master.transport_config(), segment_size=0, name="test-reader").connect()
    yield t
    t.close()


def _server(target: Path, master: MooncakeMaster, layer_ids: list[int] = LAYER_IDS, **settings: object) -> ServerHandle:
    engine = CaptureEngine(target, layer_ids, max_seq_len=256, batch_mode=settings.pop("batch_mode", "auto"))  # type: ignore[arg-type]
    transport = MooncakeTransport(master.transport_config(unavailable_timeout_seconds=1.0), name="capture-server")
    return start_capture_server(engine, transport, ServerSettings(**settings))  # type: ignore[arg-type]


def test_layer_id_checks() -> None:
    assert check_layer_ids([-1, 0, 7], 8) == [-1, 0, 7]
    with pytest.raises(ValueError, match="out of range"):
        check_layer_ids([8], 8)
    with pytest.raises(ValueError, match="out of range"):
        check_layer_ids([-2], 8)
    with pytest.raises(ValueError, match="repeat"):
        check_layer_ids([1, 1], 8)


def test_auto_batch_mode_is_equal_length_on_cpu(tiny_target: Path) -> None:
    """auto = equal_length on CPU (exact in every case measured), per_sample on CUDA (stacking was not exact
    on an H200; see docs/capture.md)."""
    assert CaptureEngine(tiny_target, [1]).batch_mode == "equal_length"
    assert CaptureEngine(tiny_target, [1], batch_mode="per_sample").batch_mode == "per_sample"
    with pytest.raises(ValueError, match="batch_mode"):
        CaptureEngine(tiny_target, [1], batch_mode="padded")  # type: ignore[arg-type]


@pytest.mark.mooncake
@pytest.mark.parametrize("batch_mode", ["equal_length", "per_sample"])
def test_captures_are_bit_identical_to_transformers(
    tiny_target: Path, mooncake_master: MooncakeMaster, reader: MooncakeTransport, batch_mode: str
) -> None:
    """Concurrent requests (batched by equal length) give exactly the hidden states of single forwards."""
    g = torch.Generator().manual_seed(1)
    lengths = [1, 5, 17, 17, 17, 40, 5, 64]
    seqs = [torch.randint(0, TINY_VOCAB, (n,), generator=g).tolist() for n in lengths]
    pool = reader.new_buffer_pool()
    with _server(tiny_target, mooncake_master, batch_mode=batch_mode, batch_window_ms=50.0) as server:
        with concurrent.futures.ThreadPoolExecutor(len(seqs)) as ex:
            answers = list(ex.map(
                lambda iv: http(f"{server.url}/capture", {"request_id": f"req-{iv[0]}", "input_ids": iv[1]}),
                enumerate(seqs),
            ))
        metrics = http(f"{server.url}/metrics")[2]
        assert all(status == 200 for status, _, _ in answers), answers
        if batch_mode == "equal_length":
            # the three 17-token requests (at least two of them) were stacked into one forward
            assert any(a["timings"]["batch_size"] > 1 for _, _, a in answers)
        # records live in the capture server's segment: read them while it runs
        for ids, (_, _, ans) in zip(seqs, answers, strict=True):
            assert ans["records"]["hidden"]["shape"] == [len(ids), len(LAYER_IDS) * 64]
            assert ans["records"]["last_hidden"]["shape"] == [len(ids), 64]
            assert ans["records"]["hidden"]["dtype"] == "bfloat16"
            (rec,) = reader.get_records([RecordInfo.from_json(ans)], pool)
            want_hidden, want_last = reference_states(tiny_target, ids, LAYER_IDS)
            assert torch.equal(rec.tensors["hidden"], want_hidden)
            assert torch.equal(rec.tensors["last_hidden"], want_last)
            rec.release()
            reader.delete_records([ans["key"]])
        assert mooncake_master.key_count() == 0
    assert metric_value(metrics, "dspark_capture_requests_total") == len(seqs)
    assert metric_value(metrics, "dspark_capture_bytes_total") == sum(
        a["records"]["hidden"]["nbytes"] + a["records"]["last_hidden"]["nbytes"] for _, _, a in answers
    )
    pool.close()


@pytest.mark.mooncake
def test_request_keys_fetch_delete_leaves_store_empty(
    tiny_target: Path, mooncake_master: MooncakeMaster, reader: MooncakeTransport
) -> None:
    ids = list(range(1, 30))
    pool = reader.new_buffer_pool()
    with _server(tiny_target, mooncake_master, layer_ids=[1, 4]) as server:
        status, _, ans = http(f"{server.url}/capture", {"request_id": "rank0-0", "input_ids": ids, "sample_id": "s:1"})
        assert status == 200, ans
        assert ans["sample_id"] == "s:1" and ans["request_id"] == "rank0-0" and ans["num_tokens"] == 29
        assert ans["key"].startswith("dspark/") and "/rank0-0/" in ans["key"]
        assert ans["layer_ids"] == [1, 4] and ans["hidden_size"] == 64
        assert mooncake_master.key_count() == 2
        # a retry of the same request id never collides: a fresh nonce
        status2, _, ans2 = http(f"{server.url}/capture", {"request_id": "rank0-0", "input_ids": ids})
        assert status2 == 200 and ans2["key"] != ans["key"]
        recs = reader.get_records([RecordInfo.from_json(ans), RecordInfo.unsized(ans2["key"])], pool)
        assert torch.equal(recs[0].tensors["hidden"], recs[1].tensors["hidden"])
        want_hidden, want_last = reference_states(tiny_target, ids, [1, 4])
        assert torch.equal(recs[0].tensors["hidden"], want_hidden)
        assert torch.equal(recs[1].tensors["last_hidden"], want_last)
        for r in recs:
            r.release()
        reader.delete_records([ans["key"], ans2["key"]])
        assert mooncake_master.key_count() == 0
    pool.close()


@pytest.mark.mooncake
def test_bad_requests_get_4xx_naming_the_problem(tiny_target: Path, mooncake_master: MooncakeMaster) -> None:
    cases = [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"input_ids": [1]}, "missing field `request_id`"),
        ({"request_id": "r1"}, "missing field `input_ids`"),
        ({"request_id": "has space", "input_ids": [1]}, "request_id 'has space' is invalid"),
        ({"request_id": "r1", "input_ids": []}, "input_ids is empty"),
        ({"request_id": "r1", "input_ids": [1, TINY_VOCAB]}, f"input_ids[1] = {TINY_VOCAB} is out of range"),
        ({"request_id": "r1", "input_ids": [-3]}, "input_ids[0] = -3 is out of range"),
        ({"request_id": "r1", "input_ids": [1, "a"]}, "input_ids[1] = 'a' is not an integer"),
        ({"request_id": "r1", "input_ids": [1, 2.5]}, "input_ids[1] = 2.5 is not an integer"),
        ({"request_id": "r1", "input_ids": "1 2 3"}, "input_ids must be a list"),
        ({"request_id": "r1", "input_ids": [1] * 257}, "257 tokens, more than this server's limit of 256"),
        ({"request_id": "r1", "input_ids": [1], "max_tokens": 3}, "unknown field(s) ['max_tokens']"),
    ]
    with _server(tiny_target, mooncake_master) as server:
        for body, message in cases:
            status, _, ans = http(f"{server.url}/capture", body)
            assert 400 <= status < 500, (body, status, ans)
            assert message in ans["error"], (body, ans)
            assert ans["reason"] == "bad_request"
        status, _, ans = http(f"{server.url}/capture", {"request_id": "ok", "input_ids": [1, 2, 3]})
        assert status == 200, ans
        metrics = http(f"{server.url}/metrics")[2]
        assert metric_value(metrics, "dspark_capture_failures_total", 'reason="bad_request"') == len(cases)
        assert mooncake_master.key_count() == 2
    # a capture server's records live in the memory it contributed: they go when it stops
    assert mooncake_master.key_count() == 0


@pytest.mark.mooncake
def test_full_queue_answers_429_with_retry_after(tiny_target: Path, mooncake_master: MooncakeMaster) -> None:
    with _server(tiny_target, mooncake_master, max_queue=2, retry_after_seconds=3) as server:
        engine = server.server.engine
        release = threading.Event()
        real_capture = engine.capture

        def slow_capture(seqs: list[list[int]]) -> object:
            release.wait(30)
            return real_capture(seqs)

        engine.capture = slow_capture  # type: ignore[method-assign]
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            held = [ex.submit(http, f"{server.url}/capture", {"request_id": f"h{i}", "input_ids": [1, 2]})
                    for i in range(2)]
            deadline = 0
            while server.server.metrics.queue_depth._value.get() < 2 and deadline < 500:  # type: ignore[attr-defined]
                threading.Event().wait(0.01)
                deadline += 1
            status, headers, ans = http(f"{server.url}/capture", {"request_id": "x", "input_ids": [1]})
            assert status == 429, ans
            assert headers.get("Retry-After") == "3"
            assert "capture queue full" in ans["error"] and ans["reason"] == "queue_full"
            release.set()
            assert [f.result()[0] for f in held] == [200, 200]
        engine.capture = real_capture  # type: ignore[method-assign]
        assert http(f"{server.url}/capture", {"request_id": "y", "input_ids": [1]})[0] == 200


@pytest.mark.mooncake
def test_health_info_metrics_and_master_loss(tiny_target: Path, mooncake_master: MooncakeMaster) -> None:
    with _server(tiny_target, mooncake_master) as server:
        assert http(f"{server.url}/health")[0] == 200
        status, _, ans = http(f"{server.url}/health_generate")
        assert status == 200 and ans["status"] == "ok", ans
        status, _, info = http(f"{server.url}/info")
        assert info["layer_ids"] == LAYER_IDS and info["num_layers"] == TINY_LAYERS and info["vocab_size"] == TINY_VOCAB
        assert info["contract_version"] == 1
        with urllib.request.urlopen(f"{server.url}/metrics") as resp:
            text = resp.read().decode()
        for name in ("dspark_capture_requests_total", "dspark_capture_bytes_total", "dspark_capture_put_seconds_bucket",
                     'dspark_capture_failures_total{reason="store_unavailable"}'):
            assert name in text, name

        mooncake_master.kill()
        status, headers, ans = http(f"{server.url}/capture", {"request_id": "lost", "input_ids": [1, 2, 3]})
        assert status == 503 and headers.get("Retry-After") == "1", ans
        assert ans["reason"] == "store_unavailable"
        assert f"Mooncake master at {mooncake_master.address} unreachable" in ans["error"]
        status, _, ans = http(f"{server.url}/health_generate")
        assert status == 503 and "does not answer" in ans["error"], ans
        assert http(f"{server.url}/health")[0] == 200  # liveness is the process, not the store

        mooncake_master.start()
        for _ in range(120):
            status, _, ans = http(f"{server.url}/capture", {"request_id": "back", "input_ids": [1, 2, 3]})
            if status == 200:
                break
            threading.Event().wait(0.5)
        assert status == 200, ans
        metrics = http(f"{server.url}/metrics")[2]
        assert metric_value(metrics, "dspark_capture_failures_total", 'reason="store_unavailable"') >= 1
