"""Pytest fixtures for the real test Kubernetes control plane (loaded from conftest.py).

- `k8s_cluster` (session): a started `harness.cluster.LocalCluster`, started once
  per run the first time a test asks for it, stopped at session end (also on failure, Ctrl-C or
  SIGTERM). Attributes: `.kubeconfig` (Path), `.server`, `.env()`, `.kubectl(...)`, `.helm(...)`,
  `.api(...)`, `.api_client()`, `.wait_until(...)`, `.gpu_nodes`, `.nodes`, `.log_dir`, `.bin_dir`.
- `k8s_namespace` (function): the name of a fresh namespace (its default ServiceAccount exists),
  deleted after the test.

Tests that use either fixture are marked `cluster` automatically (so `-m cluster` / `-m "not
cluster"` select them); marking them explicitly is still good style.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from harness.cluster import (
    ClusterError,
    LocalCluster,
    default_bin_dir,
    install_termination_handlers,
    missing_binaries,
)

CLUSTER_FIXTURES = {"k8s_cluster", "k8s_namespace"}
_LOG_DIR_KEY = pytest.StashKey[Path]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    log_dir = item.config.stash.get(_LOG_DIR_KEY, None)
    if report.failed and log_dir is not None and CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
        report.sections.append(("test cluster", f"component logs: {log_dir}"))
    return report


@pytest.fixture(scope="session")
def k8s_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    bin_dir = default_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        msg = f"test cluster binaries missing in {bin_dir} ({', '.join(missing)}): run `make cluster-bins`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    install_termination_handlers()
    cluster = LocalCluster(tmp_path_factory.mktemp("k8s-cluster", numbered=True), bin_dir=bin_dir)
    request.config.stash[_LOG_DIR_KEY] = cluster.log_dir
    error: ClusterError | None = None
    try:
        cluster.start()
    except ClusterError as e:
        error = e
    if error is not None:
        pytest.fail(f"test cluster failed to start (logs in {cluster.log_dir}):\n{error}", pytrace=False)
    _announce(request, cluster)
    try:
        yield cluster
    finally:
        cluster.stop()


def _announce(request: pytest.FixtureRequest, cluster: LocalCluster) -> None:
    """One line on the terminal (outside output capture) saying what started and how fast."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    skipped = f"; without {', '.join(cluster.skipped)}" if cluster.skipped else ""
    line = f"test cluster {cluster.versions.key} up in {cluster.started_in:.1f}s at {cluster.server}{skipped}"
    ctx = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with ctx:
        reporter.ensure_newline()
        reporter.write_line(line)


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "t"
    return f"{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def k8s_namespace(k8s_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = k8s_cluster.create_namespace(_namespace_name(request.node.name))
    try:
        yield name
    finally:
        k8s_cluster.delete_namespace(name)
