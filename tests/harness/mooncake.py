"""A real `mooncake_master` on free ports of 127.0.0.1, for tests and the embedded demo.

    with MooncakeMaster() as master:
        cfg = master.transport_config()          # TransportConfig pointing at it (tcp, P2PHANDSHAKE)
        ...
        master.kill()                            # SIGKILL the whole process group (a crash)
        master.start()                           # again on the same ports

The master runs in its own process group (``start_new_session``); `stop()`/`kill()` signal the
group, and an `atexit` hook kills any master still running when the interpreter exits.
Readiness is polled with a deadline: the master's HTTP `/health` must report
``service_ready`` and its RPC port must accept connections.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspark_trainer.config.transport import TransportConfig
from dspark_trainer.transport.master import find_master_binary
from dspark_trainer.util.net import free_port

_LIVE: weakref.WeakSet[MooncakeMaster] = weakref.WeakSet()


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class MooncakeMaster:
    """One `mooncake_master` process on 127.0.0.1 (or `host`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        rpc_port: int | None = None,
        metrics_port: int | None = None,
        binary: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.rpc_port = rpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.binary = binary or find_master_binary()
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="dspark-mooncake-"))
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ------------------------------------------------------------------ addresses
    @property
    def address(self) -> str:
        """host:port of the master RPC service."""
        return f"{self.host}:{self.rpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "mooncake_master.log"

    def transport_config(self, **overrides: Any) -> TransportConfig:
        """A TCP TransportConfig pointing at this master, with small sizes fit for tests."""
        values: dict[str, Any] = {
            "protocol": "tcp",
            "master_address": self.address,
            "metadata_server": "P2PHANDSHAKE",
            "local_hostname": self.host,
            "global_segment_size": 256 * 1024 * 1024,
            "local_buffer_size": 64 * 1024 * 1024,
        }
        values.update(overrides)
        return TransportConfig.model_validate(values)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--rpc_address={self.host}",
            f"--rpc_port={self.rpc_port}",
            f"--metrics_host={self.host}",
            f"--metrics_port={self.metrics_port}",
            "--enable_metric_reporting=false",
            *self.extra_args,
        ]

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> MooncakeMaster:
        """Start (or restart, on the same ports) and wait until it serves."""
        if self.running:
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("GLOG_minloglevel", "1")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            log.write(f"\n=== start {self.starts + 1}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )
        finally:
            log.close()
        self.starts += 1
        _LIVE.add(self)
        self.wait_ready(self.ready_timeout if timeout is None else timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll /health and the RPC port until both answer; RuntimeError with the log tail on failure."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"mooncake_master exited with {self.proc.returncode} during start:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.metrics_url}/health", timeout=1) as resp:
                    body = json.loads(resp.read().decode() or "{}")
                if body.get("service_ready", True) and _port_open(self.host, self.rpc_port):
                    return
                last = f"health: {body}"
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"mooncake_master not ready after {timeout:g}s ({last}):\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the master's process group (a crash) and reap it."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it if it does not exit in `timeout` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._signal_group(signal.SIGKILL)  # stray children of the group, if any

    def restart(self, timeout: float | None = None) -> MooncakeMaster:
        """Kill and start again on the same ports (all stored objects are lost)."""
        self.kill()
        return self.start(timeout)

    def __enter__(self) -> MooncakeMaster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection
    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metrics(self) -> dict[str, float]:
        """The master's Prometheus metrics (unlabelled series only), name -> value."""
        with urllib.request.urlopen(f"{self.metrics_url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#") or "{" in line:
                continue
            parts = line.split()
            if len(parts) >= 2:
                with contextlib.suppress(ValueError):
                    out[parts[0]] = float(parts[1])
        return out

    def key_count(self) -> int:
        """How many objects the store holds (`master_key_count`)."""
        return int(self.metrics().get("master_key_count", 0))


@atexit.register
def _kill_leftovers() -> None:
    for master in list(_LIVE):
        master.kill()
