"""`harness.prometheus` on its own: a real Prometheus scraping a small exporter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import missing
from harness.prometheus import PrometheusError, PrometheusServer, find_binary, free_port
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

pytestmark = pytest.mark.prometheus


@pytest.fixture
def exporter() -> Iterator[tuple[int, Counter]]:
    registry = CollectorRegistry()
    Gauge("helper_up", "A constant.", registry=registry).set(1)
    counter = Counter("helper_events", "Counts.", registry=registry)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port, counter
    finally:
        server.shutdown()


def test_scrape_query_reload_and_errors(tmp_path: Path, exporter: tuple[int, Counter]) -> None:
    if find_binary() is None:
        missing("prometheus not found: run scripts/install-system-deps.sh")
    port, counter = exporter
    with PrometheusServer(tmp_path) as prom:  # started with no targets; one is added by a reload
        assert prom.query("vector(1)")[0]["value"][1] == "1"
        prom.add_target("helper", f"127.0.0.1:{port}", labels={"namespace": "ns", "dspark_job": "j"})
        (target,) = prom.wait_for_targets_up(timeout=60)
        assert target["labels"]["namespace"] == "ns"
        (sample,) = prom.wait_for_data('helper_up{dspark_job="j"}', timeout=60)
        assert sample["metric"]["job"] == "helper"
        start = time.time()
        counter.inc(5)
        prom.wait_for_data("helper_events_total", timeout=60, check=lambda r: float(r[0]["value"][1]) == 5)
        series = prom.query_range("helper_events_total", start=start - 5, end=time.time(), step=1)
        assert series and series[0]["values"]
        assert {"helper_up", "helper_events_total", "up"} <= prom.series_names()
        with pytest.raises(PrometheusError, match="parse error"):
            prom.query("rate(helper_events_total[")
        with pytest.raises(PrometheusError, match="exists already"):
            prom.add_target("helper", "127.0.0.1:1")
    assert prom.proc is None


def test_a_taken_port(tmp_path: Path) -> None:
    """A port given by the caller and taken fails clearly; a port picked by the helper is picked again."""
    if find_binary() is None:
        missing("prometheus not found: run scripts/install-system-deps.sh")
    with PrometheusServer(tmp_path / "a") as first:
        second = PrometheusServer(tmp_path / "b", port=first.port)
        with pytest.raises(PrometheusError, match="prometheus exited"):
            second.start(timeout=30)
        assert second.proc is None
        third = PrometheusServer(tmp_path / "c")
        third.port = first.port  # as if another process took the free port it picked
        with third:
            assert third.port != first.port
            assert third.query("vector(3)")[0]["value"][1] == "3"
