"""Helpers of the deployment tests: the chart, helm, the dashboards and rules, metric names."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from module_loader import load_module

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "dspark-operator"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RULES_FILE = CHART / "rules" / "dspark-alerts.yaml"
ALERTS_TEST = Path(__file__).resolve().parent / "alerts_test.yaml"
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = REPO / "pyproject.toml"


# ------------------------------------------------------------------------------------ tools


def helm_binary() -> str:
    """The pinned helm built by scripts/build-cluster-binaries.sh (else one on PATH); skips or fails when absent."""
    from harness.cluster import default_bin_dir

    built = default_bin_dir() / "helm"
    if os.access(built, os.X_OK):
        return str(built)
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    missing(f"helm not found ({built} nor on PATH): run `make cluster-bins`")
    raise AssertionError("unreachable")


def missing(message: str) -> None:
    """A needed tool is absent: fail in CI (where `make test` installs everything), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str, hint: str) -> str:
    """Path of a command-line tool in the venv or on PATH."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which(name)
    if not found:
        missing(f"{name} not found: {hint}")
    return str(found)


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm_template(*args: str, release: str = "dspark-operator", namespace: str = "dspark-system",
                  check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([helm_binary(), "template", release, str(CHART), "--namespace", namespace, *args], check=check)


def render(*args: str, release: str = "dspark-operator", namespace: str = "dspark-system") -> list[dict[str, Any]]:
    """The manifests `helm template` renders with the given --set/--values arguments."""
    out = helm_template(*args, release=release, namespace=namespace).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


# ------------------------------------------------------------------------------------ pyproject


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def pinned(extra: str | None, package: str) -> str:
    """The `==` version pinned for `package` in the dependencies (extra None) or an optional extra."""
    project = pyproject()["project"]
    deps = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^;\s]+)", dep)
        if m and m.group(1).lower().replace("_", "-") == package.lower().replace("_", "-"):
            return m.group(3)
    raise AssertionError(f"{package} has no == pin in {extra or 'dependencies'} of pyproject.toml")


# ------------------------------------------------------------------------------------ dashboards


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def where(self) -> str:
        return f"{self.dashboard}: {self.panel!r} {self.ref}"


def load_dashboard(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels") or [])


def dashboard_queries(path: Path) -> list[PanelQuery]:
    """Every PromQL expression of the dashboard's panels."""
    d = load_dashboard(path)
    out = []
    for p in iter_panels(d["panels"]):
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append(PanelQuery(path.stem, p.get("title", "?"), t.get("refId", "?"), t["expr"]))
    return out


def variable_queries(path: Path) -> list[tuple[str, str]]:
    """(name, query) of the dashboard's query variables (label_values(...))."""
    d = load_dashboard(path)
    out = []
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((v["name"], q))
    return out


def substitute(expr: str, *, rate_interval: str = "1m", values: dict[str, str] | None = None) -> str:
    """Grafana's variables replaced for evaluation by Prometheus itself."""
    values = values or {}
    expr = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    expr = expr.replace("$__interval", rate_interval).replace("$__range", rate_interval)

    def var(m: re.Match[str]) -> str:
        return values.get(m.group(1) or m.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, expr)


# ------------------------------------------------------------------------------------ metric names

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan", "atan2",
}


# `{__name__=~"sglang[:_]x"}` selects SGLang's series under either spelling (see the training dashboard).
NAME_MATCHER = re.compile(r'__name__\s*(=~|=)\s*"([^"]*)"')


def canonical_name(value: str, op: str) -> str:
    """The metric name a `__name__` matcher selects; only the sglang colon/underscore alternative is allowed."""
    name = value.replace("sglang[:_]", "sglang:") if op == "=~" else value
    if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", name):
        raise ValueError(f"__name__ matcher {value!r} is not a single metric name")
    return name


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, label matchers, groupings and ranges ignored;
    `__name__` matchers count)."""
    names = {canonical_name(v, op) for op, v in NAME_MATCHER.findall(expr)}
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def sample_names(family_name: str, kind: str) -> set[str]:
    """The sample names a prometheus_client metric family exposes."""
    if kind == "counter":
        base = family_name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "histogram":
        return {f"{family_name}_bucket", f"{family_name}_sum", f"{family_name}_count", f"{family_name}_created"}
    if kind == "summary":
        return {family_name, f"{family_name}_sum", f"{family_name}_count", f"{family_name}_created"}
    return {family_name}


def registry_sample_names(registry: Any) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names |= sample_names(family.name, family.type)
    return names


@functools.cache
def project_metric_names() -> frozenset[str]:
    """Every sample name the project's own exporters define (trainer with its post-training evaluation,
    operator, capture server)."""
    from prometheus_client import CollectorRegistry

    names: set[str] = set()
    from dspark_trainer.runtime.metrics import TrainerMetrics

    names |= registry_sample_names(TrainerMetrics(CollectorRegistry()).registry)
    from dspark_trainer.eval.metrics import EvalGauges

    eval_registry = CollectorRegistry()
    EvalGauges(eval_registry)
    names |= registry_sample_names(eval_registry)
    from dspark_operator.metrics import OperatorMetrics

    names |= registry_sample_names(OperatorMetrics(CollectorRegistry()).registry)
    names |= capture_metric_names()
    return frozenset(names)


def capture_metric_names() -> set[str]:
    """Sample names of the capture server's metrics (reference server and SGLang plugin alike)."""
    from dspark_trainer.capture.metrics import CaptureMetrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    CaptureMetrics(registry=registry)
    return registry_sample_names(registry)


SGLANG_METRIC_RE = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*name\s*=\s*\"(sglang:[A-Za-z0-9_:]+)\"", re.S)


def cache_root() -> Path:
    """~/.cache/dspark-k8s (XDG_CACHE_HOME respected), as scripts/build-cluster-binaries.sh uses it."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dspark-k8s"


def sglang_source() -> Path:
    """The unpacked wheel of the SGLang pinned in the `serving` extra (its top holds `sglang/` and the
    dist-info), through the capture tests' cache helper (tests/capture/sglang_source.py)."""
    module = load_module("sglang_source", REPO / "tests" / "capture" / "sglang_source.py")
    try:
        return Path(module.sglang_source(pinned("serving", "sglang")))
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        missing(f"cannot obtain the pinned SGLang wheel: {e}")
        raise


def sglang_metadata() -> str:
    """The METADATA of the pinned SGLang wheel."""
    version = pinned("serving", "sglang")
    return (sglang_source() / f"sglang-{version}.dist-info" / "METADATA").read_text()


@functools.cache
def sglang_metric_kinds() -> dict[str, str]:
    """sglang:* metric name -> kind (counter/gauge/histogram/summary), from the pinned SGLang's source."""
    out: dict[str, str] = {}
    for path in sorted((sglang_source() / "sglang" / "srt").rglob("*.py")):
        text = path.read_text(errors="replace")
        if "sglang:" in text:
            for kind, name in SGLANG_METRIC_RE.findall(text):
                out[name] = kind.lower()
    return out


@functools.cache
def sglang_metric_names() -> frozenset[str]:
    names: set[str] = set()
    for name, kind in sglang_metric_kinds().items():
        names |= sample_names(name, kind)
    return frozenset(names)


def rule_exprs() -> list[tuple[str, str]]:
    """(alert name, expr) of every rule in the rule file."""
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


# ------------------------------------------------------------------------------------ Prometheus Operator CRDs

PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
MONITORING_CRDS = ("podmonitors", "servicemonitors", "prometheusrules")


def monitoring_crds() -> list[Path]:
    """The ServiceMonitor, PodMonitor and PrometheusRule CRDs of the Prometheus Operator, taken from its Go
    module (fetched once through the Go module proxy into the same cache the cluster binaries use)."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        missing("go not found: needed to fetch the Prometheus Operator CRDs")
    cache = cache_root()
    env = {**os.environ, "GOMODCACHE": os.environ.get("GOMODCACHE", str(cache / "go" / "mod")), "GOFLAGS": "-mod=mod"}
    proc = run([str(go), "mod", "download", "-json", f"{PROMETHEUS_OPERATOR_MODULE}@{PROMETHEUS_OPERATOR_VERSION}"],
               check=False, timeout=600, env=env, cwd=str(cache) if cache.exists() else None)
    if proc.returncode != 0:
        missing(f"cannot download {PROMETHEUS_OPERATOR_MODULE}: {proc.stdout[-300:]} {proc.stderr[-300:]}")
    module_dir = Path(json.loads(proc.stdout)["Dir"])
    paths = [module_dir / "example" / "prometheus-operator-crd" / f"monitoring.coreos.com_{n}.yaml"
             for n in MONITORING_CRDS]
    for p in paths:
        assert p.exists(), p
    return paths
