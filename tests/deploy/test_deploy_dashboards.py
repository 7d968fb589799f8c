"""Dashboards and alert rules, offline: PromQL syntax (promtool), `promtool test rules`, and every
metric name used is one that something we run really exports: the project's own exporters
(trainer, capture server, operator), SGLang at the version pinned in the `serving` extra (from its
source), and the real `mooncake_master`."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_helpers import (
    ALERTS_TEST,
    CHART,
    DASHBOARDS,
    RULES_FILE,
    by_kind,
    dashboard_queries,
    helm_binary,
    metric_names,
    missing,
    project_metric_names,
    render,
    rule_exprs,
    run,
    sglang_metric_kinds,
    sglang_metric_names,
    substitute,
    variable_queries,
)
from harness.prometheus import PROMTOOL, find_binary


def promtool() -> str:
    path = find_binary(PROMTOOL)
    if path is None:
        missing("promtool not found: run scripts/install-system-deps.sh (Debian's prometheus package)")
    assert path is not None
    return path


def all_exprs() -> list[tuple[str, str]]:
    out = [(q.where, substitute(q.expr)) for path in DASHBOARDS for q in dashboard_queries(path)]
    out += [(f"rule {name}", expr) for name, expr in rule_exprs()]
    return out


def used_names() -> dict[str, set[str]]:
    """Metric name -> where it is used."""
    used: dict[str, set[str]] = {}
    for where, expr in all_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    for path in DASHBOARDS:
        for var, query in variable_queries(path):
            for name in metric_names(query.replace("label_values", "")):
                if name not in {"namespace", "dspark_job"}:
                    used.setdefault(name, set()).add(f"{path.stem}: variable {var}")
    return used


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.9, sum by (namespace, le) (rate(a_seconds_bucket{x=~"$job", y="b c"}[5m]))) '
            '/ on (namespace) group_left() sglang:gen_throughput and b_total offset 1h unless abs(c) == +Inf')
    assert metric_names(expr) == {"a_seconds_bucket", "sglang:gen_throughput", "b_total", "c"}
    expr = 'rate({__name__=~"sglang[:_]prompt_tokens_total", namespace=~"$namespace"}[1m]) + d{__name__="e"}'
    assert metric_names(expr) == {"sglang:prompt_tokens_total", "d", "e"}
    with pytest.raises(ValueError, match="not a single metric name"):
        metric_names('{__name__=~"dspark_.*"}')


def test_promql_is_valid(tmp_path: Path) -> None:
    """Every dashboard query (variables substituted) as a recording rule: `promtool check rules` parses it."""
    rules = [{"record": f"dspark:check:{i}", "expr": expr} for i, (_, expr) in enumerate(all_exprs())]
    path = tmp_path / "dashboards-as-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = run([promtool(), "check", "rules", str(path)], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(rules) > 60


def test_alert_rules_check_and_unit_tests() -> None:
    out = run([promtool(), "check", "rules", str(RULES_FILE)], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout
    out = run([promtool(), "test", "rules", str(ALERTS_TEST)], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_dspark_metric_names_are_exported_by_the_project() -> None:
    exported = project_metric_names()
    unknown = {n: sorted(w) for n, w in used_names().items()
               if (n.startswith("dspark_") or n.startswith("process_")) and n not in exported}
    assert not unknown, f"metric names no exporter of the project defines: {unknown}"


def test_sglang_metric_names_exist_in_the_pinned_sglang() -> None:
    assert len(sglang_metric_kinds()) > 50  # the source scan found SGLang's collectors
    exported = sglang_metric_names()
    used = {n: w for n, w in used_names().items() if n.startswith("sglang:")}
    assert {"sglang:prompt_tokens_total", "sglang:gen_throughput", "sglang:num_running_reqs"} <= set(used)
    unknown = {n: sorted(w) for n, w in used.items() if n not in exported}
    assert not unknown, f"not defined by the pinned SGLang: {unknown}"


def test_every_used_name_has_a_known_source() -> None:
    prefixes = ("dspark_", "process_", "sglang:", "master_")
    strays = {n: sorted(w) for n, w in used_names().items() if not n.startswith(prefixes)}
    assert not strays, f"metric names of unknown origin: {strays}"


@pytest.mark.mooncake
def test_mooncake_metric_names_are_served_by_mooncake_master(tmp_path: Path) -> None:
    from harness.mooncake import MooncakeMaster, find_master_binary

    try:
        find_master_binary()
    except (FileNotFoundError, RuntimeError) as exc:
        missing(f"mooncake_master not available: {exc}")
    master = MooncakeMaster(log_dir=tmp_path)
    master.start()
    try:
        with urllib.request.urlopen(f"{master.metrics_url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        master.stop()
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    used = {n: sorted(w) for n, w in used_names().items() if n.startswith("master_")}
    assert used, "the training dashboard shows the Mooncake store"
    unknown = {n: w for n, w in used.items() if n not in served}
    assert not unknown, f"not served by mooncake_master: {unknown}"


def test_alert_settings_from_chart_values_give_valid_rules(tmp_path: Path) -> None:
    """prometheusRule.alerts changes thresholds, durations and severities, drops disabled alerts, and
    what it renders still passes `promtool check rules`."""
    (rule,) = by_kind(render(
        "--set", "prometheusRule.enabled=true",
        "--set", "prometheusRule.alerts.DSparkDataStarvation.threshold=0.25",
        "--set", "prometheusRule.alerts.DSparkDataStarvation.for=30m",
        "--set", "prometheusRule.alerts.DSparkGangRestarting.threshold=10",
        "--set", "prometheusRule.alerts.DSparkLossNotFinite.severity=page",
        "--set", "prometheusRule.alerts.DSparkJobFailed.enabled=false",
        "--set", "prometheusRule.alerts.DSparkTrainingStalled.window=30m",
    ), "PrometheusRule")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "DSparkJobFailed" not in rules
    assert rules["DSparkDataStarvation"]["expr"].rstrip().endswith(") > 0.25")
    assert rules["DSparkDataStarvation"]["for"] == "30m"
    assert rules["DSparkGangRestarting"]["expr"].rstrip().endswith("[1h])) > 10")
    assert rules["DSparkLossNotFinite"]["labels"]["severity"] == "page"
    stalled = rules["DSparkTrainingStalled"]["expr"]
    assert "[30m]" in stalled and "offset 30m" in stalled and "15m" not in stalled
    assert rules["DSparkOperatorReconcileErrors"] == next(
        r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]
        if r["alert"] == "DSparkOperatorReconcileErrors")
    path = tmp_path / "rendered-alerts.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    out = run([promtool(), "check", "rules", str(path)], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout


def test_alert_settings_are_checked_by_the_chart_schema() -> None:
    for bad, field in [("prometheusRule.alerts.DSparkJobFailed.threshold=2", "threshold"),
                       ("prometheusRule.alerts.DSparkDataStarvation.for=soon", "for"),
                       ("prometheusRule.alerts.DSparkLossNotFinite.window=5m", "window"),
                       ("prometheusRule.alerts.NoSuchAlert.enabled=true", "NoSuchAlert")]:
        out = run([helm_binary(), "template", "x", str(CHART), "--set", bad], check=False)
        assert out.returncode != 0 and field in out.stderr, (bad, out.stderr)
