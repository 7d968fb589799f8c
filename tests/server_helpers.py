"""Helpers for tests that start a server as a subprocess (importable from every test folder: tests/ is on sys.path)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any


def wait_http_ok(
    url: str, proc: subprocess.Popen[Any], log_path: Path, *, timeout: float, interval: float = 0.5
) -> None:
    """Polls `url` until it answers 200; fails with the server's log when `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(interval)
