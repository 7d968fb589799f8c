"""A real S3-compatible server for tests: gofakes3 (built from its Go module by scripts/build-s3-server.sh),
in memory, on a free port of 127.0.0.1. It accepts any credentials (signatures are not checked)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

GOFAKES3_VERSION = "v1.2.0"  # as pinned in scripts/build-s3-server.sh


def gofakes3_binary() -> Path:
    """The cached gofakes3 binary; a clear error with the command that builds it when absent."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dspark-k8s"
    path = cache / f"gofakes3-{GOFAKES3_VERSION}" / "bin" / "gofakes3"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/build-s3-server.sh (make cluster-bins does)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class S3Server:
    """gofakes3 with one bucket created at start."""

    def __init__(self, bucket: str, log_path: Path) -> None:
        self.bucket = bucket
        self.port = _free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> S3Server:
        cmd = [str(gofakes3_binary()), "-backend", "memory", "-host", f"127.0.0.1:{self.port}",
               "-initialbucket", self.bucket]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gofakes3 exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"gofakes3 did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
