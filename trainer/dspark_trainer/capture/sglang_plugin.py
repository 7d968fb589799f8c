"""The DSpark capture plugin for SGLang 0.5.23 (out-of-tree, through SGLang's plugin mechanism).

STATUS: written against the source of the sglang==0.5.23 wheel and unit-tested with fake SGLang
objects and a real Mooncake store; it has NOT been run inside a real SGLang server (no SGLang
build runs on the development machines). Tests check that every SGLang function, method and
attribute listed in `HOOK_TARGETS` exists in that version's source, so a version bump that
moves one of them fails the tests instead of failing in production.

How SGLang loads it: this package declares the entry point ``dspark_capture`` in group
``sglang.srt.plugins``; SGLang's ``load_plugins()`` calls `register()` in every process when
``SGLANG_PLUGINS`` allows it (``SGLANG_PLUGINS=dspark_capture``), then applies the hooks.

How it is started: ``dspark capture-server --config /etc/dspark/job.yaml`` with ``inference.engine:
sglang`` execs ``python3 -m sglang.launch_server`` with the capture flags of
``dspark_trainer.capture.sglang_args`` (capture-only mode of 0.5.23: ``--enable-return-aux-hidden-states
--speculative-algorithm DSPARK --return-aux-hidden-state-layer-ids ...``, no draft loaded,
``--chunked-prefill-size -1 --disable-radix-cache``), ``SGLANG_PLUGINS=dspark_capture`` and
``DSPARK_JOB_CONFIG`` naming the job config, whose ``transport`` section this plugin reads.

That is for Qwen3 and Llama-family targets (SGLang's ``set_dflash_layers_to_capture``). Qwen2/Qwen2.5 targets
have no DFlash/DSpark capture method in 0.5.23; start them with ``--speculative-algorithm EAGLE3`` instead (the
capture convention only; ``set_eagle3_layers_to_capture`` takes the same explicit layer ids: id ``i`` is the
output of Hugging Face layer ``i``, packed in ascending order). The rest is the same for every target.

With those flags SGLang's logits processor already keeps, for every prefill token, the packed
aux hidden states (``LogitsProcessorOutput.hidden_states``, [T, L*H], layers in ascending order)
and the final hidden state after the final norm (``LogitsProcessorOutput.last_hidden_states``,
[T, H]), but it only hands the aux states to clients, as JSON lists. The plugin:

1. (AROUND ``GenerationBatchResult.copy_to_cpu``) also copies ``last_hidden_states`` to pinned
   host memory with SGLang's own ``async_d2h``, before the copy-done event is recorded, so the
   overlap scheduler's result processing can read it safely;
2. (AROUND ``SchedulerBatchResultProcessor._append_prefill_hidden_states``) for requests whose
   ``rid`` is a DSpark record key (``dspark/<minute>/<request_id>/<nonce>``), queues
   ``{rid}/hidden`` and ``{rid}/last_hidden`` for the asynchronous Mooncake writer (a bounded queue
   and a worker thread: the scheduler loop never waits for the store unless the queue is full) in
   the record format of `dspark_trainer.transport.record` (the same bytes the reference server
   writes) instead of turning them into Python lists, and puts the record description (or an
   error) into ``req.customized_info["dspark_capture"]``, which SGLang returns as
   ``meta_info["dspark_capture"]``. The description is complete before the write (keys, shapes,
   dtypes); the reader waits for the keys. Other requests are untouched.

The HTTP contract is a thin adapter over SGLang's ``/generate`` (the capture client speaks it
when the job's ``inference.engine`` is ``sglang``)::

    POST /generate {"input_ids": [...], "rid": "dspark/<minute>/<request_id>/<nonce>",
                    "sampling_params": {"max_new_tokens": 1, "temperature": 0},
                    "return_hidden_states": true}
    -> {..., "meta_info": {..., "dspark_capture": [{"key": rid, "records": {...}}]}}

Only the attention-TP rank 0 scheduler of each data-parallel group writes. Embedding capture
(layer id -1) is not possible: SGLang 0.5.23 rejects negative ``--return-aux-hidden-state-layer-ids``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

SGLANG_VERSION = "0.5.23"
PLUGIN_NAME = "dspark_capture"
META_KEY = "dspark_capture"
RID_PREFIX = "dspark/"

TargetKind = Literal["module", "function", "method", "attribute", "enum_member", "constant", "string", "reads"]


@dataclass(frozen=True)
class SGLangTarget:
    """One SGLang internal the plugin depends on.

    kind: function/method (must exist, with `params` among its parameters), attribute (class field
    or ``self.<name> =`` in the class), enum_member, constant (module-level name whose value contains
    `value`), string (a string constant `value` appears in the module), reads (the method's body
    reads attribute `value`), module (the file exists). `hook` is set for the targets the plugin
    registers a hook on.
    """

    path: str
    kind: TargetKind
    why: str
    hook: Literal["around"] | None = None
    params: tuple[str, ...] = ()
    value: str | None = None


_BRP = "sglang.srt.managers.scheduler_components.batch_result_processor.SchedulerBatchResultProcessor"
_GBR = "sglang.srt.managers.utils.GenerationBatchResult"
_LPO = "sglang.srt.layers.logits_processor.LogitsProcessorOutput"
_REQ = "sglang.srt.managers.schedule_batch.Req"
_GRI = "sglang.srt.managers.io_struct.GenerateReqInput"

# The single list of SGLang internals this plugin hooks or uses; tests check each one against the
# installed SGLang source of SGLANG_VERSION.
HOOK_TARGETS: tuple[SGLangTarget, ...] = (
    # the plugin mechanism
    SGLangTarget("sglang.srt.plugins.GENERAL_PLUGINS_GROUP", "constant", "entry point group of general plugins",
                 value="sglang.srt.plugins"),
    SGLangTarget("sglang.srt.plugins.load_plugins", "function", "loads entry points and applies hooks"),
    SGLangTarget("sglang.srt.plugins.hook_registry.HookRegistry.register", "method", "registers our hooks",
                 params=("target", "hook", "hook_type")),
    SGLangTarget("sglang.srt.plugins.hook_registry.HookType.AROUND", "enum_member", "our hook type"),
    SGLangTarget("sglang.srt.environ.Envs.SGLANG_PLUGINS", "attribute", "the plugin allow-list variable"),
    # hooked
    SGLangTarget(f"{_BRP}._append_prefill_hidden_states", "method",
                 "per-request prefill hidden states: we write them to Mooncake", hook="around",
                 params=("req", "logits_output", "hidden_state_offset", "capture_hidden_mode", "extend_input_len",
                         "store")),
    SGLangTarget(f"{_GBR}.copy_to_cpu", "method", "overlap D2H copy: we add last_hidden_states to it",
                 hook="around", params=("return_logprob", "return_hidden_states")),
    # used
    SGLangTarget(f"{_GBR}.logits_output", "attribute", "the batch's LogitsProcessorOutput"),
    SGLangTarget(f"{_LPO}.hidden_states", "attribute", "packed aux hidden states [tokens, L*H]"),
    SGLangTarget(f"{_LPO}.last_hidden_states", "attribute", "post-norm final hidden states [tokens, H]"),
    SGLangTarget("sglang.srt.layers.logits_processor.LogitsProcessor._get_last_hidden_states_to_store", "method",
                 "fills last_hidden_states under --enable-return-aux-hidden-states"),
    SGLangTarget(f"{_REQ}.rid", "attribute", "request id = our record key"),
    SGLangTarget(f"{_REQ}.origin_input_ids", "attribute", "prompt length check (no prefix reuse, no chunking)"),
    SGLangTarget(f"{_REQ}.customized_info", "attribute", "carries the record description to meta_info"),
    SGLangTarget("sglang.srt.managers.scheduler_components.output_streamer._GenerationStreamAccumulator.accept",
                 "reads", "copies req.customized_info into the response", value="customized_info"),
    SGLangTarget("sglang.srt.model_executor.forward_batch_info.CaptureHiddenMode.is_full", "method",
                 "only full capture has every token's states"),
    SGLangTarget("sglang.srt.utils.common.async_d2h", "function", "pinned async device-to-host copy"),
    SGLangTarget("sglang.srt.runtime_context.get_parallel", "function", "rank of this scheduler"),
    SGLangTarget("sglang.srt.runtime_context", "string", "parallel field we read", value="attn_tp_rank"),
    # the HTTP adapter and the server flags it relies on
    SGLangTarget("sglang.srt.entrypoints.http_server", "string", "the endpoint the adapter posts to",
                 value="/generate"),
    SGLangTarget(f"{_GRI}.rid", "attribute", "client-chosen request id"),
    SGLangTarget(f"{_GRI}.input_ids", "attribute", "token ids in"),
    SGLangTarget(f"{_GRI}.return_hidden_states", "attribute", "turns on full hidden-state capture"),
    SGLangTarget("sglang.srt.arg_groups.fields.exec_.ExecFeatures.enable_return_aux_hidden_states", "attribute",
                 "capture-only mode flag"),
    SGLangTarget("sglang.srt.arg_groups.fields.exec_.ExecFeatures.return_aux_hidden_state_layer_ids", "attribute",
                 "target layer ids flag"),
    SGLangTarget("sglang.srt.arg_groups.validation_hook._AUX_HIDDEN_STATE_CAPTURE_METHODS", "constant",
                 "DSPARK is an accepted capture convention", value="DSPARK"),
    SGLangTarget("sglang.srt.models.qwen3.Qwen3ForCausalLM.set_dflash_layers_to_capture", "method",
                 "Qwen3 aux capture (output of HF layer i)"),
    SGLangTarget("sglang.srt.models.llama.LlamaForCausalLM.set_dflash_layers_to_capture", "method",
                 "Llama-family aux capture under --speculative-algorithm DSPARK (output of HF layer i)"),
    SGLangTarget("sglang.srt.models.qwen2.Qwen2ForCausalLM.set_eagle3_layers_to_capture", "method",
                 "Qwen2/Qwen2.5 have no DFlash/DSpark capture method: they capture under --speculative-algorithm "
                 "EAGLE3, whose explicit layer ids follow the same convention (output of HF layer i)"),
    SGLangTarget("sglang.srt.arg_groups.validation_hook._AUX_HIDDEN_STATE_CAPTURE_METHODS", "constant",
                 "EAGLE3 is an accepted capture convention (Qwen2 targets)", value="EAGLE3"),
    SGLangTarget("sglang.srt.model_executor.model_runner_components.attention_backend_setup."
                 "configure_aux_hidden_state_capture", "function",
                 "DSPARK capture calls set_dflash_layers_to_capture, EAGLE3 set_eagle3_layers_to_capture"),
    # DSPARK speculative serving exists in this version (drafts trained here are served by it)
    SGLangTarget("sglang.srt.speculative.spec_info.SpeculativeAlgorithm.DSPARK", "enum_member",
                 "--speculative-algorithm DSPARK"),
)


def hooked_targets() -> list[SGLangTarget]:
    return [t for t in HOOK_TARGETS if t.hook is not None]


# --------------------------------------------------------------------------- configuration
def load_transport_config() -> Any | None:
    """The transport section of the job config named by $DSPARK_JOB_CONFIG; None when it is not set."""
    from dspark_trainer.config.job import JOB_CONFIG_ENV, load_job_config

    if not os.environ.get(JOB_CONFIG_ENV, "").strip():
        return None
    return load_job_config().transport


# --------------------------------------------------------------------------- the writer
class _Capture:
    """Lazily connected Mooncake writer of one SGLang scheduler process.

    ``write`` runs in SGLang's scheduler loop: it only describes the record and queues it for the
    asynchronous writer (`dspark_trainer.transport.async_writer`), whose worker thread does the staging
    copy and the Mooncake put. The description goes into the response at once; the trainer's reader
    waits for the keys to appear (``transport.notFoundTimeoutSeconds``), as for any record.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transport: Any = None
        self._writer: Any = None
        self._janitor: Any = None
        self._metrics: Any = None
        self._config: Any = None
        self.disabled_reason: str | None = None

    def configure(self, config: Any) -> None:
        self._config = config

    def writer(self) -> Any:
        """The process's AsyncRecordWriter (connecting to Mooncake on first use)."""
        with self._lock:
            if self._writer is None:
                from dspark_trainer.capture.metrics import CaptureMetrics
                from dspark_trainer.transport.async_writer import AsyncRecordWriter
                from dspark_trainer.transport.janitor import RecordJanitor
                from dspark_trainer.transport.mooncake_client import MooncakeTransport

                if self._config is None:
                    self._config = load_transport_config()
                if self._config is None:
                    raise RuntimeError("the dspark capture plugin has no Mooncake configuration: set "
                                       "DSPARK_JOB_CONFIG to the job config (dspark capture-server does)")
                cfg = self._config
                transport = MooncakeTransport(cfg, name="sglang-capture").connect()
                if self._metrics is None:
                    try:
                        from prometheus_client import REGISTRY

                        self._metrics = CaptureMetrics(REGISTRY)
                    except ValueError:  # already registered in this process
                        self._metrics = None
                metrics = self._metrics
                if metrics is not None:
                    transport.on_retry = lambda reason, _code: metrics.store_retries.labels(reason=reason).inc()
                self._janitor = RecordJanitor(transport, cfg.key_ttl_seconds, cfg.janitor_interval_seconds).start()
                self._transport = transport
                self._writer = AsyncRecordWriter(
                    transport.put_records,
                    max_records=cfg.write_queue_records,
                    max_bytes=cfg.write_queue_bytes,
                    block_seconds=cfg.write_block_seconds,
                    on_done=self._written,
                    on_wait=None if metrics is None else metrics.write_wait_seconds.observe,
                    name="sglang-capture writer",
                )
            return self._writer

    def write(self, rid: str, aux: Any, last: Any, num_tokens: int) -> dict[str, Any]:
        """Queue one record; returns the description for meta_info (or {"error", "reason"})."""
        from dspark_trainer.transport.errors import TransportError
        from dspark_trainer.transport.record import parse_base_key

        t0 = time.perf_counter()
        try:
            _minute, request_id, _nonce = parse_base_key(rid)
            pending = self.writer().submit(rid, {"hidden": aux, "last_hidden": last})
        except TransportError as exc:
            self._count_failure(exc.reason)
            return {"error": str(exc), "reason": exc.reason}
        except Exception as exc:
            log.exception("dspark capture: queueing %s failed", rid)
            self._count_failure("internal")
            return {"error": f"{type(exc).__name__}: {exc}", "reason": "internal"}
        if self._metrics is not None:
            self._metrics.requests.inc()
            self._observe_queue()
        info: dict[str, Any] = pending.info.to_json()
        info.update(request_id=request_id, num_tokens=num_tokens, hidden_size=int(last.shape[-1]), write="async",
                    timings={"submit_seconds": time.perf_counter() - t0})
        return info

    def _written(self, pending: Any) -> None:
        """The writer's completion callback (its worker thread): metrics."""
        m = self._metrics
        if m is None:
            return
        self._observe_queue()
        if pending.error is not None:
            m.failures.labels(reason=pending.error.reason).inc()
            return
        m.records.inc()
        m.tokens.inc(pending.info.fields["last_hidden"].shape[0])
        m.bytes.inc(pending.info.nbytes)
        m.put_seconds.observe(pending.result.seconds)
        m.write_latency_seconds.observe(time.perf_counter() - pending.submitted)

    def _observe_queue(self) -> None:
        writer, m = self._writer, self._metrics
        if writer is not None and m is not None:
            m.write_queue_records.set(writer.stats.queued_records)
            m.write_queue_bytes.set(writer.stats.queued_bytes)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for every queued record to be written (tests, benchmarks)."""
        writer = self._writer
        return True if writer is None else bool(writer.flush(timeout))

    def close(self) -> None:
        """Write what is queued, stop the janitor and disconnect (tests; SGLang processes just exit)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._janitor is not None:
                self._janitor.stop()
                self._janitor = None
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            self._config = None

    def _count_failure(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.requests.inc()
            self._metrics.failures.labels(reason=reason).inc()


CAPTURE = _Capture()


def is_capture_rid(rid: object) -> bool:
    return isinstance(rid, str) and rid.startswith(RID_PREFIX)


def _is_writer_rank() -> bool:
    """Only the attention-TP rank 0 scheduler writes (the other TP ranks hold the same states)."""
    try:
        from sglang.srt.runtime_context import get_parallel
    except ImportError:
        return True
    try:
        return int(get_parallel().attn_tp_rank) == 0
    except Exception:
        return True


def _set_info(req: Any, info: dict[str, Any]) -> None:
    if getattr(req, "customized_info", None) is None:
        req.customized_info = {}
    req.customized_info[META_KEY] = [info]


# --------------------------------------------------------------------------- hooks
def append_prefill_hidden_states_hook(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND SchedulerBatchResultProcessor._append_prefill_hidden_states (keyword-only arguments)."""
    req = kwargs.get("req")
    if args or req is None or not is_capture_rid(getattr(req, "rid", None)):
        return original(self, *args, **kwargs)
    logits_output = kwargs["logits_output"]
    start = int(kwargs["hidden_state_offset"])
    store = bool(kwargs.get("store", True))
    mode = kwargs["capture_hidden_mode"]
    # Let SGLang advance the offset (store=False: it keeps nothing, and never builds Python lists).
    end = int(original(self, **{**kwargs, "store": False}))
    if not store:
        return end
    if not _is_writer_rank():
        return end
    num_tokens = len(req.origin_input_ids)
    if not mode.is_full():
        _set_info(req, {"error": "the batch did not capture every token's hidden states (the request needs "
                        "return_hidden_states=true and the server --enable-return-aux-hidden-states)",
                        "reason": "bad_server_config"})
        return end
    last = getattr(logits_output, "last_hidden_states", None)
    if last is None:
        _set_info(req, {"error": "SGLang kept no final hidden states: start it with "
                        "--enable-return-aux-hidden-states --speculative-algorithm DSPARK "
                        "--return-aux-hidden-state-layer-ids ...", "reason": "bad_server_config"})
        return end
    if end - start != num_tokens:
        _set_info(req, {"error": f"prefill covered {end - start} of {num_tokens} prompt tokens (prefix cache hit or "
                        "chunked prefill): start SGLang with --disable-radix-cache --chunked-prefill-size -1",
                        "reason": "bad_server_config"})
        return end
    aux = logits_output.hidden_states[start:end]
    _set_info(req, CAPTURE.write(req.rid, aux, last[start:end], num_tokens))
    return end


def copy_to_cpu_hook(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND GenerationBatchResult.copy_to_cpu: queue the D2H copy of last_hidden_states before the
    original records its copy-done event."""
    return_hidden_states = kwargs.get("return_hidden_states", args[1] if len(args) > 1 else True)
    out: Any = getattr(self, "logits_output", None)
    last = getattr(out, "last_hidden_states", None)
    if return_hidden_states and last is not None and getattr(last, "device", None) is not None \
            and last.device.type != "cpu":
        from sglang.srt.utils.common import async_d2h

        out.last_hidden_states = async_d2h(last)
    return original(self, *args, **kwargs)


HOOKS: dict[str, Any] = {
    f"{_BRP}._append_prefill_hidden_states": append_prefill_hidden_states_hook,
    f"{_GBR}.copy_to_cpu": copy_to_cpu_hook,
}


def register() -> None:
    """The `sglang.srt.plugins` entry point: register the AROUND hooks (SGLang applies them)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    expected = {t.path for t in hooked_targets()}
    if set(HOOKS) != expected:  # pragma: no cover - guarded by the tests
        raise RuntimeError(f"dspark capture plugin: HOOKS {sorted(HOOKS)} != HOOK_TARGETS {sorted(expected)}")
    try:
        import sglang

        version = getattr(sglang, "__version__", None)
    except ImportError:  # pragma: no cover
        version = None
    if version is not None and version != SGLANG_VERSION:
        log.warning("dspark capture plugin: written for SGLang %s, running on %s", SGLANG_VERSION, version)
    for target, hook in HOOKS.items():
        HookRegistry.register(target, hook, HookType.AROUND)
    log.info("dspark capture plugin: registered %d hooks", len(HOOKS))
