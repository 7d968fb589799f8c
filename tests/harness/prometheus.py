"""A real Prometheus server (Debian's `prometheus` package) for tests and local checks.

It listens on a free port on 127.0.0.1, scrapes the targets it is given with a generated
configuration (optionally with rule files), keeps its data in a temporary directory and is
queried through its HTTP API:

    with PrometheusServer(tmp_path) as prom:
        prom.add_target("trainer", "127.0.0.1:9400", labels={"namespace": "ns", "dspark_job": "demo"})
        prom.wait_for_targets_up()
        prom.query('dspark_train_step{dspark_job="demo"}')

Targets may be added before or after `start()` (the configuration is rewritten and reloaded).
`scripts/install-system-deps.sh` installs the binary (`/usr/bin/prometheus`).

    python -m harness.prometheus --target 127.0.0.1:9400   # scrape one target, print the URL
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml
from dspark_trainer.util.net import free_port
from dspark_trainer.util.polling import poll_until

T = TypeVar("T")

DEFAULT_BINARY = "prometheus"
PROMTOOL = "promtool"


class PrometheusError(RuntimeError):
    """Prometheus did not start, answered with an error, or a wait ran out of time."""


class ProcessExited(PrometheusError):
    """The prometheus process ended: waiting longer cannot help."""


def find_binary(name: str = DEFAULT_BINARY) -> str | None:
    """Path of a Prometheus tool (`prometheus`, `promtool`) on PATH or in /usr/bin, else None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/bin") / name
    return str(candidate) if candidate.exists() else None


def poll(predicate: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25,
         detail: Callable[[], str] | None = None) -> T:
    """Calls `predicate` until it returns something truthy (returned) or `timeout` seconds pass.

    Exceptions from the predicate count as "not yet" (the last one is named in the error), except
    ProcessExited, which ends the wait at once. On timeout raises `PrometheusError`.
    """
    return poll_until(
        predicate, timeout=timeout, what=what, interval=interval, on_timeout=detail,
        error=PrometheusError, fatal=(ProcessExited,),
    )


@dataclass
class Target:
    """One scrape job with one target address."""

    job: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"

    def scrape_config(self, interval: str) -> dict[str, Any]:
        """The `scrape_configs` entry for this target."""
        static: dict[str, Any] = {"targets": [self.address]}
        if self.labels:
            static["labels"] = dict(self.labels)
        return {
            "job_name": self.job,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "metrics_path": self.metrics_path,
            "static_configs": [static],
        }


_libc: Any = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the test process


class PrometheusServer:
    """A Prometheus process with its own configuration and storage under `work_dir`."""

    def __init__(
        self,
        work_dir: Path,
        *,
        binary: str | None = None,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        port: int | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.binary = binary or find_binary() or DEFAULT_BINARY
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self._own_port = port is None
        self.port = port or free_port()
        self.targets: list[Target] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.work_dir / "prometheus.yml"
        self.data_dir = self.work_dir / "data"
        self.log_path = self.work_dir / "prometheus.log"

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL of the HTTP API and UI."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The generated prometheus.yml."""
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": [t.scrape_config(self.scrape_interval) for t in self.targets],
        }
        if self.rule_files:
            cfg["rule_files"] = [str(p) for p in self.rule_files]
        return cfg

    def write_config(self) -> Path:
        """Writes prometheus.yml; returns its path."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return self.config_path

    def start(self, timeout: float = 60) -> PrometheusServer:
        """Starts the server and waits until `/-/ready` answers 200. When the port was picked here and
        another process took it meanwhile, it retries on a new free port (twice)."""
        if self.proc is not None:
            raise PrometheusError("already started")
        if not (shutil.which(self.binary) or Path(self.binary).exists()):
            raise PrometheusError(
                f"{self.binary!r} not found: install Debian's prometheus package (scripts/install-system-deps.sh)"
            )
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except PrometheusError as e:
                if not (self._own_port and attempt < 2 and "address already in use" in str(e)):
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> PrometheusServer:
        self.write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=info",
        ]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.work_dir,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessExited(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            status, _ = self._request("GET", "/-/ready", timeout=2)
            # The answer must come from this server, not another one already on the port.
            return status == 200 and self.api("/api/v1/status/flags").get("config.file") == str(self.config_path)

        try:
            poll(ready, timeout=timeout, what=f"prometheus ready at {self.url}", detail=self.log_tail)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15) -> None:
        """Stops the server (SIGTERM, then SIGKILL after `timeout` seconds)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def __enter__(self) -> PrometheusServer:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no prometheus log)"
        return "\n".join(text[-lines:])

    # ---------------------------------------------------------------- targets

    def add_target(self, job: str, address: str, *, labels: Mapping[str, str] | None = None,
                   metrics_path: str = "/metrics") -> Target:
        """Adds a scrape job with one target; reloads the configuration when running."""
        if any(t.job == job for t in self.targets):
            raise PrometheusError(f"scrape job {job!r} exists already")
        target = Target(job=job, address=address, labels=dict(labels or {}), metrics_path=metrics_path)
        self.targets.append(target)
        if self.proc is not None:
            self.reload()
        return target

    def reload(self, timeout: float = 30) -> None:
        """Rewrites the configuration and asks the server to reload it."""
        self.write_config()
        status, body = self._request("POST", "/-/reload", timeout=timeout)
        if status != 200:
            raise PrometheusError(f"reload failed ({status}): {body.decode(errors='replace')}\n{self.log_tail()}")

    def active_targets(self) -> list[dict[str, Any]]:
        """`/api/v1/targets` active targets."""
        data = self.api("/api/v1/targets", {"state": "active"})
        return list(data["activeTargets"])

    def wait_for_targets_up(self, jobs: Iterable[str] | None = None, timeout: float = 60) -> list[dict[str, Any]]:
        """Waits until every (or each named) scrape job has a target whose last scrape succeeded."""
        wanted = set(jobs) if jobs is not None else {t.job for t in self.targets}

        def up() -> list[dict[str, Any]] | None:
            targets = [t for t in self.active_targets() if t["labels"].get("job") in wanted]
            healthy = {t["labels"]["job"] for t in targets if t.get("health") == "up"}
            return targets if healthy >= wanted else None

        def detail() -> str:
            try:
                rows = [f"  {t['labels'].get('job')}: {t.get('health')} {t.get('lastError', '')}"
                        for t in self.active_targets()]
            except Exception as e:
                rows = [f"  (targets unavailable: {e!r})"]
            return "targets:\n" + "\n".join(rows)

        return poll(up, timeout=timeout, what=f"targets up: {sorted(wanted)}", detail=detail)

    # ---------------------------------------------------------------- HTTP API

    def _request(self, method: str, path: str, params: Mapping[str, str] | None = None,
                 timeout: float = 30) -> tuple[int, bytes]:
        url = self.url + path
        data = None
        headers = {}
        if params:
            encoded = urllib.parse.urlencode(params)
            if method == "GET":
                url += "?" + encoded
            else:
                data = encoded.encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()

    def api(self, path: str, params: Mapping[str, str] | None = None, *, method: str = "GET",
            timeout: float = 30) -> Any:
        """Calls an `/api/v1/...` endpoint; returns its `data`, raises PrometheusError on an error answer."""
        status, body = self._request(method, path, params, timeout=timeout)
        try:
            payload = json.loads(body)
        except ValueError as e:
            raise PrometheusError(f"{path}: HTTP {status}, not JSON: {body[:200]!r}") from e
        if payload.get("status") != "success":
            raise PrometheusError(
                f"{path} {dict(params or {})}: {payload.get('errorType', status)}: {payload.get('error', body[:200])}"
            )
        return payload.get("data")

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns the result list (vector), or a one-element list for a scalar."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("/api/v1/query", params, method="POST")
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, *, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query; returns the result list (matrix)."""
        data = self.api("/api/v1/query_range",
                        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
                        method="POST")
        return list(data["result"])

    def wait_for_data(self, expr: str, timeout: float = 60, *,
                      check: Callable[[list[dict[str, Any]]], bool] | None = None) -> list[dict[str, Any]]:
        """Waits until `expr` returns a non-empty result (that also passes `check`, when given)."""

        def has_data() -> list[dict[str, Any]] | None:
            result = self.query(expr)
            if result and (check is None or check(result)):
                return result
            return None

        return poll(has_data, timeout=timeout, what=f"data for {expr!r}", interval=0.5)

    def series_names(self) -> set[str]:
        """Every metric name the server holds."""
        return set(self.api("/api/v1/label/__name__/values"))

    def rule_groups(self) -> list[dict[str, Any]]:
        """`/api/v1/rules` groups (with each rule's health and last error)."""
        return list(self.api("/api/v1/rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        return list(self.api("/api/v1/alerts")["alerts"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run a Prometheus that scrapes the given targets until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m harness.prometheus",
                                     description="Run Debian's prometheus scraping local targets.")
    parser.add_argument("--target", action="append", default=[], metavar="HOST:PORT", help="target to scrape")
    parser.add_argument("--rules", action="append", default=[], type=Path, help="rule file to load")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="dspark-prometheus-"))
    server = PrometheusServer(work, rule_files=args.rules, port=args.port)
    for i, address in enumerate(args.target):
        server.add_target(f"target{i}", address)
    with server:
        print(f"prometheus at {server.url} (data in {work}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
