"""The Mooncake master role: its binary and its command line, derived from the job's transport config
(the master listens on the ports its clients are told to use)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from dspark_trainer.config.transport import TransportConfig

MASTER_BINARY = "mooncake_master"


def find_master_binary() -> str:
    """`mooncake_master` next to this interpreter, on PATH, or inside the installed `mooncake` package."""
    candidates = [Path(sys.executable).parent / MASTER_BINARY]
    on_path = shutil.which(MASTER_BINARY)
    if on_path:
        candidates.append(Path(on_path))
    try:
        import importlib.util

        spec = importlib.util.find_spec("mooncake")
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / MASTER_BINARY)
    except (ImportError, ValueError):
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise FileNotFoundError(
        f"{MASTER_BINARY} not found (install the mooncake-cpu or mooncake-cuda extra of dspark-k8s); "
        f"looked at {[str(c) for c in candidates]}"
    )


def master_args(transport: TransportConfig, *, host: str = "0.0.0.0", metric_reporting: bool = True) -> list[str]:
    """Flags of `mooncake_master` for this transport: RPC on masterAddress's port, the HTTP metadata server
    when metadataServer is the master's URL, health and metrics on masterMetricsPort."""
    args = [
        f"--rpc_address={host}",
        f"--rpc_port={transport.master_rpc_port}",
        f"--metrics_host={host}",
        f"--metrics_port={transport.master_metrics_port}",
        f"--enable_metric_reporting={'true' if metric_reporting else 'false'}",
    ]
    metadata_port = transport.master_metadata_port
    if metadata_port is not None:
        args += [
            "--enable_http_metadata_server=true",
            f"--http_metadata_server_host={host}",
            f"--http_metadata_server_port={metadata_port}",
        ]
    return args
