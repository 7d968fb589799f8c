"""The services of the local pipeline, each a child process started from the one job config
(``layout.config``), as the operator's pods are: the Mooncake master (`dspark mooncake-master`), the
reference capture server(s) (`dspark capture-server`, one per capture device), and torchrun."""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dspark_trainer.config.job import JobConfig
from dspark_trainer.config.training import ConfigError
from dspark_trainer.local.processes import ManagedProcess, ProcessSet
from dspark_trainer.util.net import free_port

if TYPE_CHECKING:
    from dspark_trainer.local.pipeline import Layout


class ServiceError(RuntimeError):
    """A service of the local pipeline did not come up."""


def ensure_tiny_target(path: Path) -> Path:
    """The demo target: a tiny random Qwen3, taught the demo conversations (created once)."""
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


CAPTURE_DEVICES_OPTION = "capture devices (`dspark train --local --capture-devices`, LocalOptions.capture_devices)"
_CUDA_DEVICE = re.compile(r"^cuda:([0-9]+)$")


def parse_capture_devices(text: str) -> list[str]:
    """`--capture-devices cuda:2,cuda:3` -> ["cuda:2", "cuda:3"] (checked by ``check_capture_devices``)."""
    return [] if not text.strip() else [part.strip() for part in text.split(",")]


def check_capture_devices(devices: Sequence[str] | None) -> list[str] | None:
    """Validate the capture servers' devices: None (one server on the trainer's device), or a non-empty
    list of "cpu" / "cuda:N", one server each. Returns them stripped; raises ConfigError."""
    if devices is None:
        return None
    if isinstance(devices, str):
        raise ConfigError(f"{CAPTURE_DEVICES_OPTION}: give a list of devices, not the string {devices!r} "
                          f"(e.g. [\"cuda:2\", \"cuda:3\"]; on the command line: --capture-devices cuda:2,cuda:3)")
    out = [str(d).strip() for d in devices]
    if not out:
        raise ConfigError(f"{CAPTURE_DEVICES_OPTION}: the list is empty; give one device per capture server "
                          f"(e.g. cuda:2,cuda:3 or cpu,cpu), or leave the option out for one server on the "
                          f"trainer's device")
    for d in out:
        if d != "cpu" and not _CUDA_DEVICE.match(d):
            raise ConfigError(f"{CAPTURE_DEVICES_OPTION}: {d!r} is not a device; each entry is \"cpu\" or "
                              f"\"cuda:N\" with N a GPU index (e.g. cuda:2,cuda:3: two servers, on GPUs 2 and 3)")
    return out


@dataclass(frozen=True)
class CaptureServerPlan:
    """Where one reference capture server runs: its `--device` and its environment overrides."""

    name: str  # process and log name: capture-server, or capture-server-<i> when there are several
    label: str  # as the user gave it ("cuda:2", "cpu"), for messages
    device: str  # the server's --device
    env: dict[str, str] = field(default_factory=dict)


def plan_capture_servers(devices: Sequence[str] | None, cfg: JobConfig) -> list[CaptureServerPlan]:
    """The capture servers of the local pipeline; raises ConfigError for bad devices (before anything starts).

    None: one server on the trainer's device (cuda:0 when ``runtime.device`` is cuda, else cpu), the
    environment unchanged. "cuda:N": the server's CUDA_VISIBLE_DEVICES names only GPU N and it uses
    cuda:0. N counts the GPUs this process sees, like the trainer ranks' cuda:0..nproc-1: with
    CUDA_VISIBLE_DEVICES=4,5,6,7 set here, cuda:2 is GPU 6."""
    checked = check_capture_devices(devices)
    if checked is not None and cfg.capture.mode != "remote":
        raise ConfigError(f"{CAPTURE_DEVICES_OPTION}: capture.mode is {cfg.capture.mode!r}, which runs no capture "
                          f"server; use capture.mode: remote, or leave the option out")
    if checked is None:
        device = "cuda:0" if cfg.runtime.device == "cuda" else "cpu"
        return [CaptureServerPlan("capture-server", device, device)]
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [v.strip() for v in (inherited or "").split(",") if v.strip()]
    plans = []
    for i, label in enumerate(checked):
        name = f"capture-server-{i}" if len(checked) > 1 else "capture-server"
        m = _CUDA_DEVICE.match(label)
        if m is None:
            plans.append(CaptureServerPlan(name, label, "cpu"))
            continue
        index = int(m.group(1))
        if inherited is not None and index >= len(visible):
            seen = f"cuda:0..cuda:{len(visible) - 1}" if visible else "none"
            raise ConfigError(f"{CAPTURE_DEVICES_OPTION}: {label} is not visible here: CUDA_VISIBLE_DEVICES="
                              f"{inherited!r} leaves {len(visible)} GPU(s) ({seen}); use an index among them")
        gpu = visible[index] if inherited is not None else str(index)
        plans.append(CaptureServerPlan(name, label, "cuda:0", {"CUDA_VISIBLE_DEVICES": gpu}))
    return plans


def start_services(
    cfg: JobConfig,
    layout: Layout,
    processes: ProcessSet,
    say: Callable[[str], None],
    capture_devices: Sequence[str] | None = None,
) -> JobConfig:
    """Start what the config needs, each role from the job config written to ``layout.config`` (in remote
    mode: the Mooncake master, then one reference capture server per entry of ``capture_devices``, or one on
    the trainer's device when None). Returns the config as written: loopback addresses, free ports."""
    plans = plan_capture_servers(capture_devices, cfg)
    cfg = with_local_addresses(cfg, len(plans) if cfg.capture.mode == "remote" else 0)
    write_config(cfg, layout.config)
    if cfg.capture.mode == "remote":
        start_mooncake(cfg, layout, processes, say)
        start_capture_servers(cfg, layout, processes, say, plans)
    return cfg


def with_local_addresses(cfg: JobConfig, servers: int) -> JobConfig:
    """The config with every address on 127.0.0.1 and free ports: the Mooncake master (RPC, health/metrics),
    ``servers`` reference capture servers (``capture.endpoints``) and the trainer's metrics."""
    ports: list[int] = []
    while len(ports) < 3 + servers:
        port = free_port()
        if port not in ports:
            ports.append(port)
    rpc, master_http, metrics, *server_ports = ports
    transport = cfg.transport.model_copy(update={
        "protocol": cfg.transport.resolved_protocol(),
        "master_address": f"127.0.0.1:{rpc}",
        "metadata_server": "P2PHANDSHAKE",
        "local_hostname": "127.0.0.1",
        "master_metrics_port": master_http,
    })
    updates: dict[str, object] = {
        "transport": transport,
        "metrics": cfg.metrics.model_copy(update={"port": metrics}),
    }
    if servers:
        updates["capture"] = cfg.capture.model_copy(
            update={"endpoints": [f"http://127.0.0.1:{p}" for p in server_ports]}
        )
    return cfg.model_copy(update=updates)


def write_config(cfg: JobConfig, path: Path) -> None:
    """Write the job config the local roles start from."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_wire(), sort_keys=False))


def dspark_argv(*args: str) -> list[str]:
    """`dspark ARGS...` with this interpreter's installation."""
    return [str(Path(sys.executable).parent / "dspark"), *args]


def start_mooncake(cfg: JobConfig, layout: Layout, processes: ProcessSet, say: Callable[[str], None]) -> None:
    """The Mooncake master role (`dspark mooncake-master --config`), waited for on its health endpoint."""
    say(f"starting the Mooncake master on {cfg.transport.master_address}")
    proc = processes.add(ManagedProcess(
        "mooncake-master",
        dspark_argv("mooncake-master", "--config", str(layout.config), "--host", "127.0.0.1"),
        layout.logs / "mooncake-master.log",
        env=worker_env(),
        cwd=layout.root,
    ))
    try:
        wait_until(http_ok(f"http://127.0.0.1:{cfg.transport.master_metrics_port}/health"), proc,
                   "the Mooncake master", timeout=60)
    except ServiceError as exc:
        hint = ""
        if any(lib in str(exc) for lib in ("libibverbs", "librdmacm", "libnuma")):
            hint = "\nMooncake needs Debian's libibverbs1 librdmacm1 libnuma1: run `make system-deps`."
        raise ServiceError(f"{exc}{hint}") from None


def start_capture_servers(
    cfg: JobConfig,
    layout: Layout,
    processes: ProcessSet,
    say: Callable[[str], None],
    plans: Sequence[CaptureServerPlan],
) -> None:
    """The reference capture servers (`dspark capture-server --config`), one per plan on the port of its
    entry in ``capture.endpoints``, each with its own log; all are started, then each is waited for."""
    started: list[tuple[str, ManagedProcess, str]] = []
    for i, (plan, url) in enumerate(zip(plans, cfg.capture.endpoints, strict=True)):
        port = url.rsplit(":", 1)[1]
        argv = dspark_argv("capture-server", "--config", str(layout.config), "--host", "127.0.0.1",
                           "--port", port, "--device", plan.device, "--log-level", "WARNING")
        if len(plans) > 1:
            what = f"the capture server {plan.name} ({plan.label})"
            say(f"starting reference capture server {i + 1}/{len(plans)} on 127.0.0.1:{port} ({plan.label})")
        else:
            what = "the capture server"
            say(f"starting the reference capture server on 127.0.0.1:{port} ({plan.label})")
        proc = processes.add(ManagedProcess(plan.name, argv, layout.logs / f"{plan.name}.log",
                                            env={**worker_env(), **plan.env}, cwd=layout.root))
        started.append((url, proc, what))
    for url, proc, what in started:
        wait_until(http_ok(f"{url}/health"), proc, what, timeout=180)
