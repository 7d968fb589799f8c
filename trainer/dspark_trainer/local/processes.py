"""Child processes of the local pipeline: each runs in its own session (so a terminal's Ctrl-C reaches
only the orchestrator, which then stops them in order), logs to a file, and is stopped by its own
process-group id: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


class ManagedProcess:
    """One child process (and everything it starts in its process group)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        self.pgid = self.proc.pid  # a new session: the group id is the child's pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the group, wait, then SIGKILL what is left; returns the exit code."""
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        # Children of the group that outlived the leader:
        self.signal(signal.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """Processes (and other services) started by the orchestrator, stopped in reverse start order."""

    def __init__(self) -> None:
        self._stoppers: list[tuple[str, Callable[[], object]]] = []

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        """Stop ``proc`` with the rest; returns it."""
        self._stoppers.append((proc.name, proc.stop))
        return proc

    def on_stop(self, name: str, stop: Callable[[], object]) -> None:
        """Register something started elsewhere (e.g. the Mooncake master) to be stopped with the rest."""
        self._stoppers.append((name, stop))

    def stop_all(self) -> None:
        while self._stoppers:
            name, stop = self._stoppers.pop()
            started = time.monotonic()
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                log.warning("stopping %s failed: %s", name, exc)
            log.info("stopped %s in %.1fs", name, time.monotonic() - started)
