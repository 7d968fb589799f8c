"""Helpers of the regeneration tests: reference chat servers as subprocesses, the CLI's environment, and
cleanup of a child's whole process session (Ray's raylet, workers and agents)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE", "disabled")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


class ServerProcess:
    """A reference chat server (``python -m dspark_trainer.capture.chat_completions``) on a free port."""

    def __init__(self, model: Path, workdir: Path, name: str, extra: list[str] | None = None) -> None:
        self.port_file = workdir / f"{name}.port"
        self.log = workdir / f"{name}.log"
        self.port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "dspark_trainer.capture.chat_completions", "--model", str(model),
               "--served-model-name", "tiny", "--port", "0", "--port-file", str(self.port_file),
               "--torch-threads", "1", *(extra or [])]
        self._log_fh = self.log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log_fh, stderr=subprocess.STDOUT, env=child_env(),
                                     start_new_session=True)
        self.url = ""

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{int(self.port_file.read_text())}"
        return self.url

    def stop(self) -> None:
        kill_session(self.proc)
        self._log_fh.close()


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (everything a child started with start_new_session spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_session(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGKILL the child and every process of its session (Ray's raylet, workers and agents too)."""
    sid = proc.pid
    for pid in [sid, *session_pids(sid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
