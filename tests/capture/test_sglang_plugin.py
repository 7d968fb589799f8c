"""The SGLang capture plugin: its hook targets against the pinned SGLang source, and its hooks on fake
SGLang objects writing to a real Mooncake store (no SGLang build runs here; see docs/capture.md)."""

from __future__ import annotations

import asyncio
import importlib
import shutil
import sys
import threading
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web
from capture_helpers import TINY_VOCAB, BackgroundWebApp, reference_states
from dspark_trainer.capture import sglang_plugin as plugin
from dspark_trainer.capture.engine import CaptureEngine
from dspark_trainer.config.training import CaptureClientConfig
from dspark_trainer.data.capture_client import CaptureClient
from dspark_trainer.transport import MooncakeTransport, RecordInfo
from dspark_trainer.transport.record import make_base_key
from harness.mooncake import MooncakeMaster
from sglang_source import check_target, sglang_source

REPO = Path(__file__).resolve().parents[2]
LAYER_IDS = [1, 4, 6]  # SGLang cannot capture -1 (it rejects negative ids)


@pytest.fixture(scope="session")
def sglang_src() -> Path:
    return sglang_source(plugin.SGLANG_VERSION)


# ----------------------------------------------------------------------------- the pinned version
def test_pyproject_and_wheel_pin_the_plugin_version(sglang_src: Path) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"sglang=={plugin.SGLANG_VERSION}" in extras["serving"]
    meta = (sglang_src / f"sglang-{plugin.SGLANG_VERSION}.dist-info" / "METADATA").read_text()
    assert f"\nVersion: {plugin.SGLANG_VERSION}\n" in meta


def test_pyproject_declares_the_entry_point() -> None:
    eps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert eps["sglang.srt.plugins"][plugin.PLUGIN_NAME] == "dspark_trainer.capture.sglang_plugin:register"


@pytest.mark.parametrize("target", plugin.HOOK_TARGETS, ids=lambda t: t.path.removeprefix("sglang.srt."))
def test_every_hook_target_exists_in_the_pinned_sglang(sglang_src: Path, target: plugin.SGLangTarget) -> None:
    assert check_target(sglang_src, target) == []


def test_hooks_and_hook_targets_agree() -> None:
    assert set(plugin.HOOKS) == {t.path for t in plugin.hooked_targets()}
    assert len(plugin.hooked_targets()) == 2


def test_the_check_fails_when_a_target_disappears(sglang_src: Path, tmp_path: Path) -> None:
    """A copy of the SGLang source with the hooked method renamed (and other targets broken) fails the check."""
    copy = tmp_path / "src"
    rel = Path("sglang/srt/managers/scheduler_components/batch_result_processor.py")
    (copy / rel).parent.mkdir(parents=True)
    for parent in rel.parents:
        init = sglang_src / parent / "__init__.py"
        if init.is_file() and not (copy / parent / "__init__.py").exists():
            shutil.copy(init, copy / parent / "__init__.py")
    text = (sglang_src / rel).read_text()
    (copy / rel).write_text(text.replace("def _append_prefill_hidden_states(", "def _append_prefill_hidden_states_v2("))
    hooked = next(t for t in plugin.HOOK_TARGETS if t.path.endswith("_append_prefill_hidden_states"))
    assert check_target(sglang_src, hooked) == []
    assert "not found" in check_target(copy, hooked)[0]
    # a renamed keyword argument fails too
    (copy / rel).write_text(text.replace("extend_input_len: int,", "extend_len: int,"))
    assert "parameters ['extend_input_len'] missing" in check_target(copy, hooked)[0]
    broken = [
        plugin.SGLangTarget("sglang.srt.managers.schedule_batch.Req.no_such_attr", "attribute", "x"),
        plugin.SGLangTarget("sglang.srt.managers.utils.GenerationBatchResult.nope", "method", "x"),
        plugin.SGLangTarget("sglang.srt.speculative.spec_info.SpeculativeAlgorithm.NOPE", "enum_member", "x"),
        plugin.SGLangTarget("sglang.srt.utils.common.no_such_function", "function", "x"),
        plugin.SGLangTarget("sglang.srt.no_such_module.f", "function", "x"),
        plugin.SGLangTarget("sglang.srt.runtime_context", "string", "x", value="no-such-string"),
        plugin.SGLangTarget("sglang.srt.plugins.GENERAL_PLUGINS_GROUP", "constant", "x", value="other.group"),
    ]
    for t in broken:
        assert check_target(sglang_src, t), t.path


# ----------------------------------------------------------------------------- the hooks, on fake SGLang
@pytest.fixture
def hook_registry(sglang_src: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """SGLang's real hook_registry.py (pure Python) under stub `sglang`/`sglang.srt` packages."""
    for name, path in (("sglang", []), ("sglang.srt", []),
                       ("sglang.srt.plugins", [str(sglang_src / "sglang" / "srt" / "plugins")])):
        mod = types.ModuleType(name)
        mod.__path__ = path
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "sglang.srt.plugins.hook_registry", raising=False)
    module = importlib.import_module("sglang.srt.plugins.hook_registry")
    assert Path(module.__file__ or "").is_relative_to(sglang_src)
    module.HookRegistry.reset()
    yield module
    module.HookRegistry.reset()
    sys.modules.pop("sglang.srt.plugins.hook_registry", None)


def test_register_uses_the_real_hook_registry(hook_registry: types.ModuleType) -> None:
    plugin.register()
    hooks = hook_registry.HookRegistry._hooks
    assert set(hooks) == set(plugin.HOOKS)
    for target, entries in hooks.items():
        assert [(t, h) for t, h, _src in entries] == [(hook_registry.HookType.AROUND, plugin.HOOKS[target])]


class _Mode:
    def __init__(self, full: bool) -> None:
        self.full = full

    def is_full(self) -> bool:
        return self.full


class _Req:
    def __init__(self, rid: str, ids: list[int], return_hidden_states: bool = True) -> None:
        self.rid = rid
        self.origin_input_ids = ids
        self.return_hidden_states = return_hidden_states
        self.hidden_states: list[Any] = []
        self.customized_info: dict[str, list[Any]] | None = None


class _LogitsOutput:
    def __init__(self, hidden: torch.Tensor, last: torch.Tensor | None) -> None:
        self.hidden_states = hidden
        self.last_hidden_states = last


class _Processor:
    """Stands in for SchedulerBatchResultProcessor: offsets advance by the extend length (full capture) or
    by one (last-token capture), and requests asking for hidden states get them as lists."""

    def _append_prefill_hidden_states(
        self, *, req: _Req, logits_output: _LogitsOutput, hidden_state_offset: int, capture_hidden_mode: _Mode,
        extend_input_len: int, store: bool = True,
    ) -> int:
        if capture_hidden_mode.is_full():
            end = hidden_state_offset + extend_input_len
            if store and req.return_hidden_states:
                req.hidden_states.append(logits_output.hidden_states[hidden_state_offset:end].tolist())
            return end
        if store and req.return_hidden_states:
            req.hidden_states.append(logits_output.hidden_states[hidden_state_offset].tolist())
        return hidden_state_offset + 1


@pytest.fixture
def wrapped_processor(hook_registry: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> type[_Processor]:
    cls = type("HookedProcessor", (_Processor,), {})
    wrapped = hook_registry._wrap_fn(
        _Processor._append_prefill_hidden_states, plugin.append_prefill_hidden_states_hook,
        hook_registry.HookType.AROUND,
    )
    monkeypatch.setattr(cls, "_append_prefill_hidden_states", wrapped)
    return cls


@pytest.fixture
def plugin_capture(mooncake_master: MooncakeMaster) -> Iterator[plugin._Capture]:
    plugin.CAPTURE.configure(mooncake_master.transport_config())
    yield plugin.CAPTURE
    plugin.CAPTURE.close()


def _run_batch(proc: Any, reqs: list[_Req], lens: list[int], out: _LogitsOutput, full: bool = True) -> list[int]:
    offset, offsets = 0, []
    for req, n in zip(reqs, lens, strict=True):
        offset = proc._append_prefill_hidden_states(
            req=req, logits_output=out, hidden_state_offset=offset, capture_hidden_mode=_Mode(full),
            extend_input_len=n,
        )
        offsets.append(offset)
    return offsets


@pytest.mark.mooncake
def test_hook_writes_reference_format_records_and_leaves_other_requests_alone(
    mooncake_master: MooncakeMaster, wrapped_processor: type[_Processor], plugin_capture: plugin._Capture
) -> None:
    h, layers = 16, 3
    lens = [4, 3, 6]
    total = sum(lens)
    aux = torch.randn(total, layers * h).to(torch.bfloat16)
    last = torch.randn(total, h).to(torch.bfloat16)
    reqs = [
        _Req(make_base_key("r0-0"), list(range(4))),
        _Req("plain-request", list(range(3))),
        _Req(make_base_key("r0-1"), list(range(6))),
    ]
    offsets = _run_batch(wrapped_processor(), reqs, lens, _LogitsOutput(aux, last))
    assert offsets == [4, 7, 13]
    # the ordinary request was served by SGLang's own code path, the capture requests were not turned into lists
    assert reqs[1].hidden_states == [aux[4:7].tolist()] and reqs[1].customized_info is None
    assert reqs[0].hidden_states == [] and reqs[2].hidden_states == []
    reader = MooncakeTransport(mooncake_master.transport_config(), segment_size=0, name="reader").connect()
    pool = reader.new_buffer_pool()
    try:
        for req, (start, end) in ((reqs[0], (0, 4)), (reqs[2], (7, 13))):
            assert req.customized_info is not None
            (info,) = req.customized_info[plugin.META_KEY]
            assert "error" not in info, info
            assert info["key"] == req.rid and info["num_tokens"] == end - start
            assert info["records"]["hidden"]["shape"] == [end - start, layers * h]
            (rec,) = reader.get_records([RecordInfo.from_json(info)], pool)
            assert torch.equal(rec.tensors["hidden"], aux[start:end])
            assert torch.equal(rec.tensors["last_hidden"], last[start:end])
            rec.release()
            reader.delete_records([info["key"]])
        assert mooncake_master.key_count() == 0
    finally:
        pool.close()
        reader.close()


class _GatedPut:
    """Wraps MooncakeTransport.put_records so writes wait for ``gate`` (the scheduler must not)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        original = MooncakeTransport.put_records

        def put(transport: MooncakeTransport, records: Any) -> Any:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
            return original(transport, records)

        monkeypatch.setattr(MooncakeTransport, "put_records", put)


def _failures(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("dspark_capture_failures_total", {"reason": reason}) or 0.0


@pytest.mark.mooncake
def test_hook_queues_the_write_and_returns_before_the_store_has_the_record(
    mooncake_master: MooncakeMaster, wrapped_processor: type[_Processor], plugin_capture: plugin._Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gated = _GatedPut(monkeypatch)
    aux, last = torch.randn(5, 12).to(torch.bfloat16), torch.randn(5, 4).to(torch.bfloat16)
    req = _Req(make_base_key("r2-0"), list(range(5)))
    _run_batch(wrapped_processor(), [req], [5], _LogitsOutput(aux, last))  # returns with the put blocked
    assert gated.entered.wait(30)
    (info,) = req.customized_info[plugin.META_KEY]  # type: ignore[index]
    assert info["write"] == "async" and info["key"] == req.rid
    assert info["records"]["hidden"]["shape"] == [5, 12] and info["records"]["last_hidden"]["nbytes"] == 64 + 40
    assert mooncake_master.key_count() == 0  # described, not written yet
    gated.gate.set()
    reader = MooncakeTransport(mooncake_master.transport_config(), segment_size=0, name="reader").connect()
    pool = reader.new_buffer_pool()
    try:  # the reader waits for the keys, as the trainer does
        (rec,) = reader.get_records([RecordInfo.from_json(info)], pool)
        assert torch.equal(rec.tensors["hidden"], aux) and torch.equal(rec.tensors["last_hidden"], last)
        rec.release()
        reader.delete_records([info["key"]])
    finally:
        pool.close()
        reader.close()


@pytest.mark.mooncake
def test_a_full_write_queue_fails_the_capture_with_a_counted_reason(
    mooncake_master: MooncakeMaster, wrapped_processor: type[_Processor], monkeypatch: pytest.MonkeyPatch,
) -> None:
    gated = _GatedPut(monkeypatch)
    cfg = mooncake_master.transport_config().model_copy(update={"write_queue_records": 1, "write_block_seconds": 0.1})
    plugin.CAPTURE.configure(cfg)
    try:
        proc = wrapped_processor()
        aux, last = torch.zeros(3, 12, dtype=torch.bfloat16), torch.zeros(3, 4, dtype=torch.bfloat16)
        first, second = (_Req(make_base_key(f"r3-{i}"), [1, 2, 3]) for i in range(2))
        _run_batch(proc, [first], [3], _LogitsOutput(aux, last))
        assert gated.entered.wait(30)
        before = _failures("writer_full")
        _run_batch(proc, [second], [3], _LogitsOutput(aux, last))
        (err,) = second.customized_info[plugin.META_KEY]  # type: ignore[index]
        assert err["reason"] == "writer_full" and "does not keep up" in err["error"]
        assert _failures("writer_full") == before + 1
        gated.gate.set()
        assert plugin.CAPTURE.flush(30)
        assert mooncake_master.key_count() == 2  # the first record was written, nothing of the second
    finally:
        gated.gate.set()
        plugin.CAPTURE.close()


@pytest.mark.mooncake
def test_hook_reports_server_misconfiguration(
    mooncake_master: MooncakeMaster, wrapped_processor: type[_Processor], plugin_capture: plugin._Capture
) -> None:
    aux = torch.zeros(5, 8)
    proc = wrapped_processor()
    # prefix cache hit / chunked prefill: fewer rows than prompt tokens
    req = _Req(make_base_key("r1-0"), list(range(5)))
    assert _run_batch(proc, [req], [3], _LogitsOutput(aux, torch.zeros(5, 4))) == [3]
    assert "--disable-radix-cache" in req.customized_info[plugin.META_KEY][0]["error"]  # type: ignore[index]
    # no final hidden states kept (server not in capture-only mode)
    req = _Req(make_base_key("r1-1"), list(range(5)))
    _run_batch(proc, [req], [5], _LogitsOutput(aux, None))
    assert "--enable-return-aux-hidden-states" in req.customized_info[plugin.META_KEY][0]["error"]  # type: ignore[index]
    # last-token capture mode
    req = _Req(make_base_key("r1-2"), list(range(5)))
    assert _run_batch(proc, [req], [5], _LogitsOutput(aux, torch.zeros(5, 4)), full=False) == [1]
    assert "return_hidden_states=true" in req.customized_info[plugin.META_KEY][0]["error"]  # type: ignore[index]
    assert mooncake_master.key_count() == 0


def test_copy_to_cpu_hook_passes_through_on_cpu() -> None:
    calls: list[tuple[Any, ...]] = []

    class Result:
        logits_output = _LogitsOutput(torch.zeros(2, 2), torch.ones(2, 2))

    def original(self: Any, *args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return "done"

    r = Result()
    before = r.logits_output.last_hidden_states
    assert plugin.copy_to_cpu_hook(original, r, True, return_hidden_states=True) == "done"
    assert r.logits_output.last_hidden_states is before  # already on the host: nothing to copy
    assert calls == [((True,), {"return_hidden_states": True})]


# ----------------------------------------------------------------------------- client <-> plugin, end to end
class _FakeSGLang(BackgroundWebApp):
    """A stand-in for SGLang's /generate: computes the target's states with transformers, packs them like
    SGLang's capture-only mode (with an unrelated request in front in the same batch), and runs the plugin's
    hook on them."""

    client_max_size = 64 << 20

    def __init__(self, engine: CaptureEngine, processor: Any) -> None:
        super().__init__()
        self.engine = engine
        self.processor = processor

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert body["return_hidden_states"] is True and body["sampling_params"]["max_new_tokens"] == 1
        ids = body["input_ids"]
        other = [7, 8, 9]
        loop = asyncio.get_running_loop()

        def run() -> _Req:
            a, b = self.engine.capture([other, ids])
            aux = torch.cat([a.hidden(), b.hidden()])
            last = torch.cat([a.last_hidden, b.last_hidden])
            req = _Req(body["rid"], ids)
            _run_batch(self.processor, [_Req("other", other, False), req], [3, len(ids)], _LogitsOutput(aux, last))
            return req

        req = await loop.run_in_executor(None, run)
        meta = {"id": body["rid"], **(req.customized_info or {})}
        return web.json_response({"text": "x", "output_ids": [1], "meta_info": meta})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/generate", self.generate)


@pytest.mark.mooncake
def test_capture_client_speaks_the_sglang_adapter(
    tiny_target: Path, mooncake_master: MooncakeMaster, wrapped_processor: type[_Processor],
    plugin_capture: plugin._Capture,
) -> None:
    engine = CaptureEngine(tiny_target, LAYER_IDS, batch_mode="per_sample")
    g = torch.Generator().manual_seed(5)
    samples = []
    for i in range(4):
        ids = torch.randint(0, TINY_VOCAB, (int(torch.randint(2, 30, (1,), generator=g)),), generator=g).tolist()
        samples.append((f"s{i}", ids, [1] * len(ids)))
    with _FakeSGLang(engine, wrapped_processor()) as fake:
        cfg = CaptureClientConfig.model_validate(
            {"window": 2, "endpoints": [f"http://127.0.0.1:{fake.port}"]}
        )
        with CaptureClient(cfg, mooncake_master.transport_config(), server_api="sglang") as client:
            got = [s.materialize() for s in client.stream(samples)]
            assert mooncake_master.key_count() == 0
    assert [s.sample_id for s in got] == ["s0", "s1", "s2", "s3"]
    for s, (_sid, ids, _mask) in zip(got, samples, strict=True):
        want_hidden, want_last = reference_states(tiny_target, ids, LAYER_IDS)
        assert torch.equal(s.hidden, want_hidden)
        assert torch.equal(s.last_hidden, want_last)
