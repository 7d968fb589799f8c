"""Dashboards and alerts against a real Prometheus (Debian's `prometheus`) scraping real exporters:

- the embedded pipeline (`dspark train --local`): the trainer's rank 0, the reference capture server
  and the Mooncake master, all real processes training the tiny target;
- the real `dspark-operator`, authenticated with the token of the ServiceAccount the Helm chart
  installs (namespace scope), reconciling jobs on the test control plane: one that runs (a trainer
  pod is deleted, so the gang restarts) and one with an invalid spec (it fails);
- SGLang cannot run on these machines, so its series come from a stand-in exporter that declares
  every `sglang:*` metric exactly as the pinned SGLang's source does (name and type).

Each target gets the labels a PodMonitor/ServiceMonitor would add (`namespace`, `dspark_job`,
`component`). Then every PromQL expression of every dashboard panel and template variable is
evaluated through Prometheus's HTTP API and must return data, every metric name the dashboards use
must be among the series Prometheus holds, and the alert rules must load and evaluate without
error (DSparkJobFailed fires for the failed job).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    CHART,
    DASHBOARDS,
    RULES_FILE,
    dashboard_queries,
    metric_names,
    missing,
    rule_exprs,
    sglang_metric_kinds,
    substitute,
    variable_queries,
)
from harness.cluster import LocalCluster
from harness.operator_process import small_job_manifest
from harness.prometheus import PrometheusServer, find_binary, free_port, poll

pytestmark = [pytest.mark.prometheus, pytest.mark.cluster, pytest.mark.mooncake, pytest.mark.slow]

JOB = "demo"  # the dspark_job label of the embedded training run
RUN_TIMEOUT = 600


# ------------------------------------------------------------------------------------ SGLang stand-in


class SGLangStandIn:
    """Serves every `sglang:*` metric the pinned SGLang defines (same names and types), with moving values.

    Like SGLang (`make_asgi_app`), it answers through prometheus_client's content negotiation: a
    Prometheus 2.x scraper (OpenMetrics without UTF-8 names) gets `sglang_*`, Prometheus 3 `sglang:*`
    (prometheus/client_python#1177); the dashboards select either spelling."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

        self.registry = CollectorRegistry()
        self.metrics: list[Any] = []
        kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram, "summary": Summary}
        for name, kind in sorted(sglang_metric_kinds().items()):
            metric = kinds[kind](name, f"stand-in for SGLang's {name}", ["model_name"], registry=self.registry)
            self.metrics.append((kind, metric.labels(model_name="tiny-qwen3")))
        self.port = free_port()
        self._stop = threading.Event()
        self._server: Any = None

    def _tick(self, i: int) -> None:
        for kind, child in self.metrics:
            if kind == "counter":
                child.inc(10 + i % 7)
            elif kind == "gauge":
                child.set(0.25 + (i % 5) / 10)
            else:
                child.observe(0.01 * (1 + i % 9))

    def start(self) -> SGLangStandIn:
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._tick(0)

        def loop() -> None:
            i = 1
            while not self._stop.wait(0.5):
                self._tick(i)
                i += 1

        threading.Thread(target=loop, daemon=True, name="sglang-standin").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()


# ------------------------------------------------------------------------------------ the embedded pipeline


@dataclass
class LocalRun:
    """`dspark train --local` in a subprocess; its service addresses are read from the files it writes."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "pipeline.log"

    def start(self) -> LocalRun:
        from dspark_trainer.assets import LOCAL_DEMO_CONFIG
        from dspark_trainer.config.training import read_config_mapping

        cfg = read_config_mapping(LOCAL_DEMO_CONFIG)
        cfg["capture"] = {**cfg.get("capture", {}), "mode": "remote"}
        cfg["schedule"] = {**cfg.get("schedule", {}), "numEpochs": 6}  # long enough to be scraped while alive
        cfg["eval"] = {**cfg.get("eval", {}), "intervalSteps": 3, "maxSamples": 4}
        self.workdir.mkdir(parents=True, exist_ok=True)
        # After training, real speculative decoding of the export; Prometheus scrapes it before the trainer exits.
        prompts = self.workdir / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Tell me a story about the number {i}."}) + "\n"
                                   for i in range(4)))
        cfg["evaluation"] = {"promptSet": str(prompts), "numPrompts": 4, "maxNewTokens": 16}
        cfg["metrics"] = {**cfg.get("metrics", {}), "finalScrapeTimeoutSeconds": 60}
        config = self.workdir / "monitoring-test.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        dspark = Path(sys.executable).with_name("dspark")
        argv = [str(dspark), "train", "--local", str(config), "--workdir", str(self.workdir), "--fresh",
                "--no-progress", "--nproc", "2"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        logs = sorted((self.workdir / "logs").glob("*.log"))
        extra = []
        for path in logs:
            extra += [f"--- {path.name}", *path.read_text(errors="replace").splitlines()[-15:]]
        return "\n".join(text[-lines:] + extra)

    def _alive(self, *, finished_ok: bool = False) -> None:
        """Raise when the pipeline exited (with finished_ok, only when it failed: a finished run's series stay
        queryable in Prometheus for its lookback window)."""
        if self.proc is not None and self.proc.poll() is not None and not (finished_ok and self.proc.returncode == 0):
            raise AssertionError(f"dspark train --local exited with {self.proc.returncode}:\n{self.tail()}")

    def services(self, timeout: float = RUN_TIMEOUT) -> dict[str, str]:
        """Waits for the effective trainer config; returns host:port of trainer metrics, capture server, Mooncake."""

        def ready() -> dict[str, str] | None:
            self._alive()
            path = self.workdir / "job.yaml"
            if not path.exists():
                return None
            cfg = yaml.safe_load(path.read_text()) or {}
            metrics = cfg.get("metrics") or {}
            endpoints = (cfg.get("capture") or {}).get("endpoints") or []
            master_port = (cfg.get("transport") or {}).get("masterMetricsPort")
            if not (metrics.get("port") and endpoints and master_port):
                return None
            return {
                "trainer": f"127.0.0.1:{metrics['port']}",
                "capture": endpoints[0].split("://", 1)[-1].rstrip("/"),
                "mooncake": f"127.0.0.1:{master_port}",
            }

        return poll(ready, timeout=timeout, what="the embedded pipeline's services", interval=1.0,
                    detail=self.tail)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)  # the pipeline checkpoints and stops its processes
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


# ------------------------------------------------------------------------------------ the operator


def token_kubeconfig(cluster: LocalCluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a bound token, as in the operator's pod)."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cluster.server,
                                                   "certificate-authority": str(cluster.pki.ca.cert)}}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": service_account}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def job_phase(cluster: LocalCluster, ns: str, name: str) -> str | None:
    status, body = cluster.api("GET", f"/apis/dspark.io/v1alpha1/namespaces/{ns}/dsparktrainingjobs/{name}")
    return ((body or {}).get("status") or {}).get("phase") if status == 200 else None


# ------------------------------------------------------------------------------------ the fixture


@dataclass
class Monitored:
    prom: PrometheusServer
    at: float  # a time at which every target was up and had reported
    window: str  # range for rate() covering the whole run
    jobs_ns: str
    operator_ns: str


@pytest.fixture(scope="module")
def monitored(k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    if find_binary() is None:
        missing("prometheus not found: run scripts/install-system-deps.sh (Debian's prometheus package)")
    from harness.operator_process import OperatorProcess

    work = tmp_path_factory.mktemp("monitoring")
    t0 = time.time()
    operator_ns = k8s_cluster.create_namespace(f"dspark-system-{uuid.uuid4().hex[:6]}")
    jobs_ns = k8s_cluster.create_namespace(f"dspark-team-{uuid.uuid4().hex[:6]}")
    release = f"mon-{uuid.uuid4().hex[:6]}"
    prom = PrometheusServer(work / "prometheus", rule_files=[RULES_FILE])
    sglang = SGLangStandIn()
    run = LocalRun(work / "pipeline")
    operator: Any = None
    with contextlib.ExitStack() as stack:
        stack.callback(k8s_cluster.delete_namespace, jobs_ns)
        stack.callback(k8s_cluster.delete_namespace, operator_ns)
        # The chart in namespace scope; the real operator runs here with its ServiceAccount's token.
        k8s_cluster.helm("install", release, str(CHART), "--namespace", operator_ns, "--set", "rbac.scope=namespace",
                         "--set", f"watchNamespaces={{{jobs_ns}}}", timeout=180)
        stack.callback(k8s_cluster.helm, "uninstall", release, "--namespace", operator_ns, check=False)
        kubeconfig = token_kubeconfig(k8s_cluster, operator_ns, f"{release}-dspark-operator",
                                      work / "operator.kubeconfig")
        operator = OperatorProcess(kubeconfig, work / "operator.log", args=["-n", jobs_ns, "--resync-seconds", "5"])
        operator.start()
        stack.callback(operator.stop)

        prom.start()
        stack.callback(prom.stop)
        sglang.start()
        stack.callback(sglang.stop)
        run.start()
        stack.callback(run.stop)

        prom.add_target(f"{release}-dspark-operator-metrics", f"127.0.0.1:{operator.metrics_port}",
                        labels={"namespace": operator_ns})
        sglang_labels = {"namespace": jobs_ns, "dspark_job": JOB, "component": "inference"}
        prom.add_target("sglang", f"127.0.0.1:{sglang.port}", labels=sglang_labels)

        # Jobs for the operator: one runs (then loses a trainer pod: gang restart), one is invalid (fails).
        invalid = small_job_manifest("invalid")
        invalid["spec"]["inference"]["extraArgs"] = ["--port=1"]  # a flag the operator sets: refused by the operator
        for body in (small_job_manifest("runs"), invalid):
            k8s_cluster.kubectl("apply", "-n", jobs_ns, "-f", "-", input=json.dumps(body))

        services = run.services()
        for name, address in services.items():
            component = {"trainer": "trainer", "capture": "inference", "mooncake": "mooncake-master"}[name]
            prom.add_target(f"pipeline-{name}", address,
                            labels={"namespace": jobs_ns, "dspark_job": JOB, "component": component})
        prom.wait_for_targets_up(timeout=120)

        k8s_cluster.wait_until(lambda: job_phase(k8s_cluster, jobs_ns, "runs") == "Running", timeout=300,
                               what=f"job runs to be Running\n{operator.log_tail()}")
        k8s_cluster.wait_until(lambda: job_phase(k8s_cluster, jobs_ns, "invalid") == "Failed", timeout=300,
                               what=f"job invalid to be Failed\n{operator.log_tail()}")
        trainer_pod = f"/api/v1/namespaces/{jobs_ns}/pods/runs-trainer-0"
        k8s_cluster.wait_until(lambda: k8s_cluster.api("GET", trainer_pod)[0] == 200, timeout=120,
                               what="trainer pod runs-trainer-0")
        k8s_cluster.kubectl("delete", "pod", "-n", jobs_ns, "runs-trainer-0", "--wait=false")  # a gang restart

        not_yet: list[str] = []

        def reported() -> bool:
            run._alive(finished_ok=True)  # the evaluation's gauges are scraped just before the trainer exits
            checks = [
                f'dspark_train_step{{dspark_job="{JOB}"}} >= 4',
                f'dspark_eval_tau{{dspark_job="{JOB}"}}',
                f'dspark_eval_spec_tau{{dspark_job="{JOB}"}}',  # the evaluation after training
                f'dspark_capture_requests_total{{dspark_job="{JOB}"}} > 0',
                f'master_total_capacity_bytes{{dspark_job="{JOB}"}} > 0',
                "dspark_operator_gang_restarts_total >= 1",
                'dspark_operator_jobs{phase="Failed"} >= 1',
                'dspark_operator_jobs{phase="Running"} >= 1',
                'dspark_operator_job_info{dspark_job="invalid", phase="Failed"} == 1',
                'dspark_operator_job_gang_restarts_total{dspark_job="runs"} >= 1',
                '{__name__=~"sglang[:_]prompt_tokens_total"} > 0',
            ]
            # Reported at any moment of the run: the evaluation's gauges appear only in the trainer's last
            # seconds, after which the pipeline's exporters stop (and their series go stale).
            not_yet[:] = [expr for expr in checks if not prom.query(f"last_over_time(({expr})[1h:1s])")]
            return not not_yet

        poll(reported, timeout=RUN_TIMEOUT, what="every exporter to report", interval=2.0,
             detail=lambda: f"no data yet for {not_yet}\n" + run.tail() + "\n" + operator.log_tail())
        at = last_scrape_of(prom, f'dspark_eval_spec_tau{{dspark_job="{JOB}"}}')
        window = f"{int(at - t0) + 30}s"
        yield Monitored(prom=prom, at=at, window=window, jobs_ns=jobs_ns, operator_ns=operator_ns)


def last_scrape_of(prom: PrometheusServer, selector: str) -> float:
    """The time of the last scrape that returned `selector`. Every exporter of the run was live then (the
    evaluation's gauges are the last series the trainer serves, and the pipeline stops the capture server and
    Mooncake only after the trainer exits), so queries at that time see the whole run."""
    samples = [float(ts) for series in prom.query(f"{selector}[1h]") for ts, _ in series.get("values", [])]
    assert samples, f"no samples of {selector}"
    return max(samples) + 0.001


# ------------------------------------------------------------------------------------ the tests


def _values(mon: Monitored, dashboard: str) -> dict[str, str]:
    if dashboard == "operator":
        return {"namespace": mon.operator_ns}
    return {"namespace": mon.jobs_ns, "job": JOB}


def test_every_dashboard_query_returns_data(monitored: Monitored) -> None:
    empty: list[str] = []
    not_finite: list[str] = []
    count = 0
    for path in DASHBOARDS:
        for q in dashboard_queries(path):
            expr = substitute(q.expr, rate_interval=monitored.window, values=_values(monitored, path.stem))
            result = monitored.prom.query(expr, at=monitored.at)
            count += 1
            if not result:
                empty.append(f"{q.where}: {expr}")
            elif not any(math.isfinite(float(r["value"][1])) for r in result):
                not_finite.append(f"{q.where}: {expr} = {[r['value'][1] for r in result]}")
    assert count > 60
    problems = ["without data:", *empty, "without a finite value:", *not_finite] if empty or not_finite else []
    assert not problems, "\n".join(problems)


def test_template_variables_list_the_running_job(monitored: Monitored) -> None:
    for path in DASHBOARDS:
        values = _values(monitored, path.stem)
        for var, query in variable_queries(path):
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert m, query
            selector = substitute(m.group(1), values=values)
            found = monitored.prom.api(
                f"/api/v1/label/{m.group(2)}/values",
                {"match[]": selector, "start": f"{monitored.at - 600:.0f}", "end": f"{monitored.at:.0f}"},
            )
            expected = values["job"] if var == "job" else values["namespace"]
            assert expected in found, (path.stem, var, query, found)


def test_every_dashboard_metric_is_a_scraped_series(monitored: Monitored) -> None:
    held = monitored.prom.series_names()
    used = {n for path in DASHBOARDS for q in dashboard_queries(path) for n in metric_names(substitute(q.expr))}
    # Prometheus 2.x receives SGLang's names with "_" for ":" (see SGLangStandIn); either spelling counts.
    absent = sorted(n for n in used if not {n, n.replace("sglang:", "sglang_", 1)} & held)
    assert not absent, f"metrics no scraped exporter serves: {absent}"


def test_alert_rules_load_and_evaluate(monitored: Monitored) -> None:
    prom = monitored.prom

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prom.rule_groups() for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules) else None

    rules = poll(evaluated, timeout=30, what="the alert rules to be evaluated")
    assert {r["name"] for r in rules} == {name for name, _ in rule_exprs()}
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # Each rule expression also runs against the real series through the query API.
    for _, expr in rule_exprs():
        prom.query(expr, at=monitored.at)  # raises on an invalid expression

    def failed_alert() -> list[dict[str, Any]]:
        return [a for a in prom.alerts() if a["labels"]["alertname"] == "DSparkJobFailed"]

    alerts = poll(failed_alert, timeout=30, what="DSparkJobFailed to fire for the invalid job")
    assert alerts[0]["state"] == "firing"
    # The alert names the job, not the operator that reports it.
    labels = alerts[0]["labels"]
    assert (labels["dspark_namespace"], labels["dspark_job"]) == (monitored.jobs_ns, "invalid")
    assert float(alerts[0]["value"]) == 1
    assert "failed" in alerts[0]["annotations"]["summary"] and "invalid" in alerts[0]["annotations"]["summary"]
    # Nothing about the healthy training run fires.
    names = {a["labels"]["alertname"] for a in prom.alerts()}
    assert not names & {"DSparkLossNotFinite", "DSparkTrainingStalled"}, names
