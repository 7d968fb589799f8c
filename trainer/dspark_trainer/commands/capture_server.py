"""`dspark capture-server`: serve the reference hidden-state capture server (transformers + Mooncake).

    dspark capture-server --model /models/qwen3-8b --layer-ids 1 9 17 25 33 --port 30000 \\
        --master mooncake-master:50051

Loads the target from a local directory, connects to the Mooncake master, and serves the HTTP
contract of docs/capture.md (POST /capture, /health, /health_generate, /metrics, /info) until
SIGTERM/SIGINT. It also serves OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` (generation with
the same weights; docs/data.md) unless ``--no-chat``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from typing import Any

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


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
                    raise SystemExit(f"dspark capture-server: --layer-ids: {part!r} is not an integer") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("target")
    model.add_argument("--model", required=True, metavar="DIR", help="local directory of the target (HF format)")
    model.add_argument(
        "--layer-ids", nargs="+", metavar="ID",
        help="layers to capture, in order (-1 = embedding output); space or comma separated. "
        "Default: the DSpark rule (N ids evenly spaced from 1 to num_layers-3)",
    )
    model.add_argument("--num-layer-ids", type=int, default=5, help="N for the default --layer-ids rule (5)")
    model.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    model.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (cpu)")
    model.add_argument("--max-seq-len", type=int, default=None, help="longest request (default: the model's limit)")

    http = parser.add_argument_group("HTTP server")
    http.add_argument("--host", default="0.0.0.0", help="listen address (0.0.0.0)")
    http.add_argument("--port", type=int, default=30000, help="listen port (30000; 0 picks a free one)")
    http.add_argument("--max-queue", type=int, default=64, help="requests accepted and not answered; more get 429")
    http.add_argument("--max-batch-size", type=int, default=8, help="requests per batch (8)")
    http.add_argument("--max-batch-tokens", type=int, default=32768, help="tokens per batch (32768)")
    http.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a batch waits to fill (5 ms)")
    http.add_argument(
        "--batch-mode", choices=["auto", "equal_length", "per_sample"], default="auto",
        help="equal_length: stack same-length requests into one forward; per_sample: one forward each "
        "(exact by construction); auto: per_sample on CUDA, equal_length on CPU",
    )

    mc = parser.add_argument_group("Mooncake transport")
    mc.add_argument("--transport-config", metavar="FILE",
                    help="YAML/JSON TransportConfig (or a trainer config with `transport:`); flags override it")
    mc.add_argument("--master", metavar="HOST:PORT", help="Mooncake master RPC address")
    mc.add_argument("--protocol", choices=["tcp", "rdma"], help="transfer protocol")
    mc.add_argument("--device-names", help="RDMA devices, comma separated (e.g. mlx5_0,mlx5_1)")
    mc.add_argument("--metadata-server", help="P2PHANDSHAKE or http://host:port/metadata")
    mc.add_argument("--local-hostname", help="address this process advertises (default: $POD_IP or 127.0.0.1)")
    mc.add_argument("--segment-size", type=parse_size, help="bytes contributed to the store (e.g. 4GiB)")
    mc.add_argument("--buffer-size", type=parse_size, help="registered local transfer buffer (e.g. 512MiB)")
    mc.add_argument("--key-ttl", type=float, help="seconds before an unfetched record is deleted")
    # --- issue 9 (regeneration): OpenAI-compatible generation routes, see capture/chat_completions.py ---
    chat = parser.add_argument_group("OpenAI-compatible chat (/v1/chat/completions, /v1/models)")
    chat.add_argument("--served-model-name", default=None, help="model name in /v1/models (default: --model)")
    chat.add_argument("--no-chat", action="store_true", help="do not serve /v1/chat/completions")
    # --- end issue 9 ---
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def transport_config_from_args(args: argparse.Namespace) -> Any:
    from dspark_trainer.config.training import ConfigError, format_validation_error, read_config_mapping
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
    from pydantic import ValidationError

    try:
        return TransportConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "transport")) from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dspark_trainer.config.training import ConfigError

    try:
        transport_cfg = transport_config_from_args(args)
    except ConfigError as exc:
        print(f"dspark capture-server: {exc}", file=sys.stderr)
        return 2
    from dspark_trainer.capture.engine import CaptureEngine
    from dspark_trainer.capture.server import CaptureServer, ServerSettings
    from dspark_trainer.transport.errors import TransportError
    from dspark_trainer.transport.mooncake_client import MooncakeTransport

    try:
        engine = CaptureEngine(
            args.model,
            parse_layer_ids(args.layer_ids),
            dtype=args.dtype,
            device=args.device,
            max_seq_len=args.max_seq_len,
            batch_mode=args.batch_mode,
            num_layer_ids=args.num_layer_ids,
        )
    except (OSError, ValueError) as exc:
        print(f"dspark capture-server: cannot load the target: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_queue=args.max_queue,
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        batch_window_ms=args.batch_window_ms,
    )
    transport = MooncakeTransport(transport_cfg, name="capture-server")
    server = CaptureServer(engine, transport, settings)
    # --- issue 9 (regeneration): add /v1/chat/completions + /v1/models before the app starts ---
    if not args.no_chat:
        from dspark_trainer.capture.chat_completions import attach_to_capture_server

        try:
            attach_to_capture_server(server, args.model, model_name=args.served_model_name)
        except (OSError, ValueError) as exc:  # e.g. no tokenizer in the model directory: capture still works
            print(f"dspark capture-server: warning: no /v1/chat/completions: {exc}", file=sys.stderr)
    # --- end issue 9 ---

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(f"dspark capture-server: serving {engine.model_path} layers {engine.layer_ids} on {server.url} "
              f"(Mooncake master {transport_cfg.master_address}, {transport_cfg.protocol})", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except TransportError as exc:
        print(f"dspark capture-server: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
    return 0
