"""`dspark capture-server`: the capture-server role of a job, or a standalone reference capture server.

In a job's inference pods (and in the embedded pipeline)::

    dspark capture-server --config /etc/dspark/job.yaml      # default: $DSPARK_JOB_CONFIG

reads the job config and starts its ``inference.engine``: ``sglang`` execs ``python3 -m
sglang.launch_server`` with the flags the capture needs (``--print-sglang-args`` shows them) and the
dspark plugin allowed; ``reference`` serves the reference capture server (transformers) in this process.

Standalone (no job config)::

    dspark capture-server --model /models/qwen3-8b --layer-ids 1 9 17 25 33 --port 30000 \\
        --master mooncake-master:50051

loads the target from a local directory, connects to the Mooncake master, and serves the HTTP contract
of docs/capture.md (POST /capture, /health, /health_generate, /metrics, /info) until SIGTERM/SIGINT. It
also serves OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` (generation with the same
weights; docs/data.md) unless ``--no-chat``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shlex
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark_trainer.config.job import (
    JOB_CONFIG_ENV,
    InferenceConfig,
    InferenceEngine,
    JobConfig,
    ReferenceServerConfig,
    load_job_config,
)
from dspark_trainer.config.training import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_REFERENCE_DEFAULTS = ReferenceServerConfig()
_DEFAULT_PORT = InferenceConfig().port
PROG = "dspark capture-server"
# Standalone flags that a job config already answers (given together with --config they are errors).
_STANDALONE_ONLY = ("model", "layer_ids", "transport_config", "master", "protocol", "device_names",
                    "metadata_server", "local_hostname", "segment_size", "buffer_size", "key_ttl")


def parse_size(text: str) -> int:
    """`1073741824`, `1GiB`, `512MiB`, `2G` -> bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1073741824, 512MiB, 1GiB)")
    unit = (m.group(2) or "").lower().removesuffix("b")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_layer_ids(values: list[str] | None) -> list[int] | None:
    """`["1,9", "17"]` or `["-1", "3"]` -> [1, 9, 17] / [-1, 3]."""
    if not values:
        return None
    out: list[int] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if part:
                try:
                    out.append(int(part))
                except ValueError:
                    raise SystemExit(f"{PROG}: --layer-ids: {part!r} is not an integer") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    job = parser.add_argument_group("job config (the capture-server role of a job)")
    job.add_argument("--config", metavar="FILE",
                     help=f"the job config; default: ${JOB_CONFIG_ENV} when --model is not given")
    job.add_argument("--print-sglang-args", action="store_true",
                     help="engine sglang: print the sglang.launch_server command line and exit")

    model = parser.add_argument_group("target (standalone)")
    model.add_argument("--model", metavar="DIR", help="local directory of the target (HF format)")
    model.add_argument(
        "--layer-ids", nargs="+", metavar="ID",
        help="layers to capture, in order (-1 = embedding output); space or comma separated. "
        "Default: the DSpark rule (N ids evenly spaced from 1 to num_layers-3)",
    )
    model.add_argument("--num-layer-ids", type=int, default=5, help="N for the default --layer-ids rule (5)")
    model.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    model.add_argument("--device", default=None,
                       help="torch device, e.g. cpu or cuda:0 (default: the config's, else cpu)")
    model.add_argument("--max-seq-len", type=int, default=None, help="longest request (default: the model's limit)")

    http = parser.add_argument_group("HTTP server")
    http.add_argument("--host", default="0.0.0.0", help="listen address (0.0.0.0)")
    http.add_argument("--port", type=int, default=None,
                      help=f"listen port (default: the config's inference.port, else {_DEFAULT_PORT}; 0 picks one)")
    d = _REFERENCE_DEFAULTS
    http.add_argument("--max-queue", type=int, default=None,
                      help=f"requests accepted and not answered; more get 429 ({d.max_queue})")
    http.add_argument("--max-batch-size", type=int, default=None, help=f"requests per batch ({d.max_batch_size})")
    http.add_argument("--max-batch-tokens", type=int, default=None, help=f"tokens per batch ({d.max_batch_tokens})")
    http.add_argument("--batch-window-ms", type=float, default=None,
                      help=f"how long a batch waits to fill ({d.batch_window_ms} ms)")
    http.add_argument(
        "--batch-mode", choices=["auto", "equal_length", "per_sample"], default=None,
        help="equal_length: stack same-length requests into one forward; per_sample: one forward each "
        "(exact by construction); auto: per_sample on CUDA, equal_length on CPU",
    )

    mc = parser.add_argument_group("Mooncake transport (standalone)")
    mc.add_argument("--transport-config", metavar="FILE",
                    help="YAML/JSON TransportConfig (or a job config with `transport:`); flags override it")
    mc.add_argument("--master", metavar="HOST:PORT", help="Mooncake master RPC address")
    mc.add_argument("--protocol", choices=["tcp", "rdma", "auto"], help="transfer protocol")
    mc.add_argument("--device-names", help="RDMA devices, comma separated (e.g. mlx5_0,mlx5_1)")
    mc.add_argument("--metadata-server", help="P2PHANDSHAKE or http://host:port/metadata")
    mc.add_argument("--local-hostname", help="address this process advertises (default: $DSPARK_POD_IP or 127.0.0.1)")
    mc.add_argument("--segment-size", type=parse_size, help="bytes contributed to the store (e.g. 4GiB)")
    mc.add_argument("--buffer-size", type=parse_size, help="registered local transfer buffer (e.g. 512MiB)")
    mc.add_argument("--key-ttl", type=float, help="seconds before an unfetched record is deleted")
    chat = parser.add_argument_group("OpenAI-compatible chat (/v1/chat/completions, /v1/models)")
    chat.add_argument("--served-model-name", default=None, help="model name in /v1/models (default: the model path)")
    chat.add_argument("--no-chat", action="store_true", help="do not serve /v1/chat/completions")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def transport_config_from_args(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from dspark_trainer.config.training import format_validation_error, read_config_mapping
    from dspark_trainer.config.transport import TransportConfig

    data: dict[str, Any] = {}
    if args.transport_config:
        raw = read_config_mapping(args.transport_config)
        data = dict(raw.get("transport", raw))
    overrides = {
        "master_address": args.master,
        "protocol": args.protocol,
        "device_names": args.device_names,
        "metadata_server": args.metadata_server,
        "local_hostname": args.local_hostname,
        "global_segment_size": args.segment_size,
        "local_buffer_size": args.buffer_size,
        "key_ttl_seconds": args.key_ttl,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TransportConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "transport")) from None


@dataclass(frozen=True)
class ReferencePlan:
    """Everything the reference capture server is started with (from a job config or from flags)."""

    model: str
    layer_ids: list[int] | None
    num_layer_ids: int
    dtype: str
    device: str
    max_seq_len: int | None
    host: str
    port: int
    server: ReferenceServerConfig
    transport: Any
    chat: bool
    served_model_name: str | None


def resolve_device(device: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _server_overrides(args: argparse.Namespace, base: ReferenceServerConfig) -> ReferenceServerConfig:
    updates = {k: getattr(args, k) for k in ("max_queue", "max_batch_size", "max_batch_tokens", "batch_window_ms",
                                             "batch_mode") if getattr(args, k) is not None}
    return ReferenceServerConfig.model_validate({**base.model_dump(), **updates})


def plan_from_job(config: JobConfig, args: argparse.Namespace) -> ReferencePlan:
    """The reference server of a job: the job config, with --port/--host/--device/batching flags on top."""
    from dspark_trainer.target_resolution import resolve_target_dir, target_layer_ids

    inf = config.inference
    target_dir = resolve_target_dir(config.target)
    return ReferencePlan(
        model=target_dir,
        layer_ids=target_layer_ids(config, target_dir),
        num_layer_ids=config.draft.num_target_layers_captured,
        dtype=config.target.dtype,
        device=resolve_device(args.device or inf.reference.device),
        max_seq_len=config.context_length,
        host=args.host,
        port=inf.port if args.port is None else args.port,
        server=_server_overrides(args, inf.reference),
        transport=config.transport,
        chat=not args.no_chat,
        served_model_name=args.served_model_name,
    )


def plan_from_flags(args: argparse.Namespace) -> ReferencePlan:
    """A standalone reference server from the command-line flags."""
    return ReferencePlan(
        model=args.model,
        layer_ids=parse_layer_ids(args.layer_ids),
        num_layer_ids=args.num_layer_ids,
        dtype=args.dtype,
        device=resolve_device(args.device or "cpu"),
        max_seq_len=args.max_seq_len,
        host=args.host,
        port=_DEFAULT_PORT if args.port is None else args.port,
        server=_server_overrides(args, _REFERENCE_DEFAULTS),
        transport=transport_config_from_args(args),
        chat=not args.no_chat,
        served_model_name=args.served_model_name,
    )


def chat_template_file(config: JobConfig, directory: str | None = None) -> str | None:
    """The dataset's chat template as a file SGLang can read: the path itself, or the inline text written out."""
    template = config.dataset.chat_template
    if template is None:
        return None
    if "\n" not in template and "{" not in template and Path(template).is_file():
        return template
    fd, path = tempfile.mkstemp(prefix="dspark-chat-template-", suffix=".jinja", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(template)
    return path


def sglang_command(config: JobConfig) -> list[str]:
    """The whole SGLang command of a job's capture server (layer ids read from the target's config)."""
    from dspark_trainer.capture.sglang_args import sglang_server_args
    from dspark_trainer.target_resolution import target_layer_ids

    layer_ids = target_layer_ids(config)
    try:
        args = sglang_server_args(config, layer_ids, chat_template_file=chat_template_file(config))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return [sys.executable, "-m", "sglang.launch_server", *args]


def sglang_env(config_path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment SGLang runs in: the dspark plugin allowed, the job config named for it."""
    from dspark_trainer.capture.sglang_args import PLUGIN_ENV, PLUGIN_NAME

    env = dict(os.environ if base is None else base)
    plugins = [p for p in env.get(PLUGIN_ENV, "").split(",") if p.strip()]
    if PLUGIN_NAME not in plugins:
        plugins.append(PLUGIN_NAME)
    env[PLUGIN_ENV] = ",".join(plugins)
    env[JOB_CONFIG_ENV] = str(config_path.resolve())
    return env


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_job = args.config is not None or (args.model is None and os.environ.get(JOB_CONFIG_ENV))
    try:
        if use_job:
            given = [f"--{k.replace('_', '-')}" for k in _STANDALONE_ONLY if getattr(args, k) not in (None, False)]
            if given:
                raise ConfigError(f"{', '.join(given)}: not with a job config (the job config sets them)")
            from dspark_trainer.config.job import job_config_path

            path = job_config_path(args.config)
            config = load_job_config(path)
            if config.inference.engine == InferenceEngine.SGLANG:
                return exec_sglang(config, path, print_only=args.print_sglang_args)
            if args.print_sglang_args:
                raise ConfigError("--print-sglang-args: inference.engine is reference, not sglang")
            plan = plan_from_job(config, args)
        elif args.model is None:
            raise ConfigError(f"give --config FILE (or set {JOB_CONFIG_ENV}), or --model DIR for a standalone server")
        else:
            plan = plan_from_flags(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return serve_reference(plan)


def exec_sglang(config: JobConfig, config_path: Path, *, print_only: bool) -> int:
    """Replace this process with SGLang (or print its command line)."""
    command = sglang_command(config)
    if print_only:
        print(shlex.join(command))
        return 0
    print(f"{PROG}: starting SGLang: {shlex.join(command)}", flush=True)
    os.execvpe(command[0], command, sglang_env(config_path))


def serve_reference(plan: ReferencePlan) -> int:
    """Serve the reference capture server until SIGTERM/SIGINT."""
    from dspark_trainer.capture.engine import CaptureEngine
    from dspark_trainer.capture.server import CaptureServer, ServerSettings
    from dspark_trainer.transport.errors import TransportError
    from dspark_trainer.transport.mooncake_client import MooncakeTransport

    try:
        engine = CaptureEngine(
            plan.model,
            plan.layer_ids,
            dtype=plan.dtype,
            device=plan.device,
            max_seq_len=plan.max_seq_len,
            batch_mode=plan.server.batch_mode,
            num_layer_ids=plan.num_layer_ids,
        )
    except (OSError, ValueError) as exc:
        print(f"{PROG}: cannot load the target: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        host=plan.host,
        port=plan.port,
        max_queue=plan.server.max_queue,
        max_batch_size=plan.server.max_batch_size,
        max_batch_tokens=plan.server.max_batch_tokens,
        batch_window_ms=plan.server.batch_window_ms,
    )
    transport = MooncakeTransport(plan.transport, name="capture-server")
    server = CaptureServer(engine, transport, settings)
    if plan.chat:
        from dspark_trainer.capture.chat_completions import attach_to_capture_server

        try:
            attach_to_capture_server(server, plan.model, model_name=plan.served_model_name)
        except (OSError, ValueError) as exc:  # e.g. no tokenizer in the model directory: capture still works
            print(f"{PROG}: warning: no /v1/chat/completions: {exc}", file=sys.stderr)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(f"{PROG}: serving {engine.model_path} layers {engine.layer_ids} on {server.url} "
              f"(Mooncake master {plan.transport.master_address}, {transport.protocol})", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except TransportError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
    return 0
