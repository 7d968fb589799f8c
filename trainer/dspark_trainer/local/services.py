"""The services of the local pipeline, each a child process: the Mooncake master (issue 4's helper
builds its command line), the reference capture server (`dspark capture-server`), and torchrun."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dspark_trainer.config.training import TrainerConfig
from dspark_trainer.config.transport import TransportConfig
from dspark_trainer.local.processes import ManagedProcess, ProcessSet
from dspark_trainer.util.net import free_port

if TYPE_CHECKING:
    from dspark_trainer.local.pipeline import Layout


class ServiceError(RuntimeError):
    """A service of the local pipeline did not come up."""


def ensure_tiny_target(path: Path) -> Path:
    """The demo target: issue 3's tiny random Qwen3, taught the demo conversations (created once)."""
    from dspark_trainer.local.tiny_target import ensure_demo_target

    return ensure_demo_target(path)


def worker_env(threads: int = 1) -> dict[str, str]:
    """Environment of the child processes: one thread each (the demo shares a few CPU cores)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "DSPARK_EXIT_ON_COMPLETE": "1", "PYTHONUNBUFFERED": "1"})
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def torchrun_argv(config_path: Path, nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "dspark_trainer.cli", "train", "--config", str(config_path),
    ]


def wait_until(check: Callable[[], bool], proc: ManagedProcess, what: str, timeout: float) -> None:
    """Poll ``check`` until true; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.poll()}; the end of {proc.log_path}:\n{proc.tail(30)}")
        if check():
            return
        time.sleep(0.25)
    raise ServiceError(f"{what} did not become ready in {timeout:.0f}s; the end of {proc.log_path}:\n{proc.tail(30)}")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(200 <= resp.status < 300)
        except (urllib.error.URLError, OSError):
            return False

    return check


def start_services(
    cfg: TrainerConfig, layout: Layout, layer_ids: list[int], processes: ProcessSet, say: Callable[[str], None]
) -> TrainerConfig:
    """Start what the config needs (Mooncake + capture server in remote mode); returns the config with
    their addresses and a free metrics port filled in."""
    updates: dict[str, object] = {"metrics": cfg.metrics.model_copy(update={"port": free_port()})}
    if cfg.capture.mode == "remote":
        transport = start_mooncake(cfg, layout, processes, say)
        cfg = cfg.model_copy(update={"transport": transport})
        url = start_capture_server(cfg, layout, layer_ids, processes, say)
        updates["capture"] = cfg.capture.model_copy(update={"endpoints": [url]})
    return cfg.model_copy(update=updates)


def start_mooncake(
    cfg: TrainerConfig, layout: Layout, processes: ProcessSet, say: Callable[[str], None]
) -> TransportConfig:
    """A real mooncake_master on free loopback ports (issue 4's helper); returns the transport config."""
    from dspark_trainer.testing.mooncake import MooncakeMaster

    master = MooncakeMaster(log_dir=layout.logs / "mooncake", ready_timeout=60.0)
    say(f"starting the Mooncake master on {master.address}")
    processes.on_stop("mooncake-master", master.stop)
    try:
        master.start()
    except (RuntimeError, FileNotFoundError) as exc:
        hint = ""
        if "libibverbs" in str(exc) or "librdmacm" in str(exc) or "libnuma" in str(exc):
            hint = "\nMooncake needs Debian's libibverbs1 librdmacm1 libnuma1: run `make system-deps`."
        raise ServiceError(f"the Mooncake master did not start: {exc}{hint}") from None
    return cfg.transport.model_copy(update={
        "protocol": "tcp",
        "master_address": master.address,
        "metadata_server": "P2PHANDSHAKE",
        "local_hostname": "127.0.0.1",
    })


def start_capture_server(
    cfg: TrainerConfig, layout: Layout, layer_ids: list[int], processes: ProcessSet, say: Callable[[str], None]
) -> str:
    """The reference capture server (`dspark capture-server`) for the target; returns its URL."""
    import yaml

    port = free_port()
    transport_path = layout.root / "transport.yaml"
    transport_path.write_text(yaml.safe_dump({"transport": cfg.transport.to_wire()}, sort_keys=False))
    argv = [
        str(Path(sys.executable).parent / "dspark"), "capture-server",
        "--model", cfg.target.model, "--layer-ids", *[str(i) for i in layer_ids], "--dtype", cfg.target.dtype,
        "--device", "cuda:0" if cfg.runtime.device == "cuda" else "cpu",
        "--max-seq-len", str(cfg.dataset.max_length),
        "--host", "127.0.0.1", "--port", str(port), "--transport-config", str(transport_path),
        "--log-level", "WARNING",
    ]
    say(f"starting the reference capture server on 127.0.0.1:{port}")
    proc = processes.start("capture-server", argv, layout.logs / "capture-server.log", env=worker_env(),
                           cwd=layout.root)
    url = f"http://127.0.0.1:{port}"
    wait_until(http_ok(f"{url}/health"), proc, "the capture server", timeout=180)
    return url
