"""A real Kubernetes control plane on 127.0.0.1 for tests and local development.

It runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (simulated nodes
whose pods become Running) from the binaries that `scripts/build-cluster-binaries.sh` builds at
the versions pinned in `scripts/cluster-versions.env`. Everything listens on 127.0.0.1 on free
ports, talks TLS with certificates made for this cluster, and writes its data and logs under one
state directory (`logs/<component>.log`).

    with LocalCluster(Path("/tmp/k8s")) as cluster:   # starts and waits until usable
        cluster.kubectl("get", "nodes")

Command line (used by `make cluster-up` / `make cluster-down`):

    python -m harness.cluster up|down|status [--state-dir DIR]

`up` leaves the processes running detached and records them in `<repo>/.cluster/state.json`.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import yaml
from dspark_trainer.util.net import free_port
from dspark_trainer.util.polling import poll_until

from harness.pki import PKI, CertPair

T = TypeVar("T")

VERSIONS_FILE_NAME = "cluster-versions.env"
GPU_RESOURCE = "nvidia.com/gpu"
RDMA_RESOURCE = "rdma/hca"
# kwok manages exactly the nodes carrying this annotation (the ones this module creates).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
NODE_KIND_LABEL = "dspark.io/test-node-kind"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
KWOK_STAGES_FILE = "kwok-stages.yaml"
FRONT_PROXY_CLIENT = "front-proxy-client"
STATE_MARKER = ".dspark-test-cluster"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REQUIRED_COMPONENTS = ("etcd", "kube-apiserver")


class ClusterError(RuntimeError):
    """The control plane could not be started, or a wait on it ran past its deadline."""


class ComponentExited(ClusterError):
    """A control-plane process exited; `wait_until` does not retry past this one."""

    def __init__(self, component: str, log: Path) -> None:
        super().__init__(f"{component} exited\n{_tail(log)}")
        self.component = component
        self.log = log


# --------------------------------------------------------------------------------------------
# Pinned versions and where their binaries are


@dataclass(frozen=True)
class Versions:
    """The versions pinned in scripts/cluster-versions.env."""

    k8s: str
    etcd: str
    kwok: str
    helm: str

    @property
    def key(self) -> str:
        """Cache key of the binaries; must match scripts/build-cluster-binaries.sh."""
        return f"k8s-{self.k8s}_etcd-{self.etcd}_kwok-{self.kwok}_helm-{self.helm}"

    @classmethod
    def load(cls, path: Path | None = None) -> Versions:
        path = path or versions_file()
        values: dict[str, str] = {}
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip("\"'")
        try:
            return cls(values["K8S_VERSION"], values["ETCD_VERSION"], values["KWOK_VERSION"], values["HELM_VERSION"])
        except KeyError as e:
            raise ClusterError(f"{path} does not set {e.args[0]}") from None


def repo_root() -> Path | None:
    """The checkout this module runs from (editable install) or the working directory's, if any."""
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if (d / "scripts" / VERSIONS_FILE_NAME).is_file():
                return d
    return None


def versions_file() -> Path:
    env = os.environ.get("DSPARK_CLUSTER_VERSIONS")
    if env:
        return Path(env)
    root = repo_root()
    if root is None:
        raise ClusterError(f"cannot find scripts/{VERSIONS_FILE_NAME} (set DSPARK_CLUSTER_VERSIONS)")
    return root / "scripts" / VERSIONS_FILE_NAME


def default_bin_dir(versions: Versions | None = None) -> Path:
    """`$DSPARK_CLUSTER_BIN_DIR`, else `~/.cache/dspark-k8s/<key>/bin` as the build script uses."""
    env = os.environ.get("DSPARK_CLUSTER_BIN_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dspark-k8s" / (versions or Versions.load()).key / "bin"


def missing_binaries(bin_dir: Path, names: Sequence[str] = REQUIRED_COMPONENTS) -> list[str]:
    return [n for n in names if not os.access(bin_dir / n, os.X_OK)]


# --------------------------------------------------------------------------------------------
# Small helpers


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Polls `predicate` until it returns something truthy (returned) or `timeout` seconds pass.

    Exceptions from the predicate count as "not yet" (the last one is shown in the error),
    except `ComponentExited`, which is raised at once. On timeout raises `ClusterError`.
    """
    return poll_until(
        predicate, timeout=timeout, what=what, interval=interval, on_timeout=on_timeout,
        error=ClusterError, fatal=(ComponentExited,),
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"--- last {min(lines, len(text))} lines of {path}:\n" + "\n".join(text[-lines:])


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a process, to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: already dead
        return None
    return int(fields[19])


_libc: Any = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a throwaway cluster needs no graceful exit


# --------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True)
class NodeSpec:
    """A simulated node (kwok makes it Ready and runs its pods on paper)."""

    name: str
    gpus: int = 0
    rdma: int = 0
    cpu: str = "96"
    memory: str = "1Ti"
    pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus else "cpu"

    def manifest(self) -> dict[str, Any]:
        resources: dict[str, str] = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods)}
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            NODE_KIND_LABEL: self.kind,
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
            labels.update({"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        if self.rdma:
            resources[RDMA_RESOURCE] = str(self.rdma)
        labels.update(self.labels)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {},
            "status": {"capacity": resources, "allocatable": resources, "nodeInfo": {"kubeletVersion": "fake"}},
        }


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("kwok-gpu-0", gpus=8, rdma=8),
    NodeSpec("kwok-gpu-1", gpus=8, rdma=8),
    NodeSpec("kwok-gpu-2", gpus=8, rdma=8),
    NodeSpec("kwok-gpu-3", gpus=8, rdma=8),
    NodeSpec("kwok-cpu-0"),
)


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class Component:
    """One process of the control plane (the leader of its own process group)."""

    name: str
    pid: int
    start_time: int | None
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.start_time is not None and _proc_start_time(self.pid) == self.start_time

    def signal_group(self, sig: int) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            else:
                time.sleep(0.1)
        return True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "log": str(self.log)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Component:
        return cls(str(data["name"]), int(data["pid"]), data.get("start_time"), Path(data["log"]))


_live_clusters: set[LocalCluster] = set()
_live_lock = threading.Lock()


def _stop_all_live() -> None:
    with _live_lock:
        clusters = list(_live_clusters)
    for c in clusters:
        c.stop()


atexit.register(_stop_all_live)


def install_termination_handlers() -> None:
    """Makes SIGTERM and SIGHUP behave like Ctrl-C (KeyboardInterrupt) so that `finally` blocks,
    context managers, pytest's fixture teardown and atexit stop the cluster. Only replaces the
    default handlers, and only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"received signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise)


# --------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    kwok: int = 0

    @classmethod
    def allocate(cls) -> Ports:
        ports: set[int] = set()
        while len(ports) < 6:
            ports.add(free_port())
        return cls(*ports)


class LocalCluster:
    """The test control plane. `start()` returns once the API server answers, the controllers and
    scheduler are healthy and every simulated node is Ready and schedulable; `stop()` (also on
    exit, Ctrl-C or SIGTERM via atexit and `install_termination_handlers`) kills every process.

    Attributes other code may use: `kubeconfig` (admin kubeconfig path), `server` (API URL),
    `state_dir`, `bin_dir`, `log_dir`, `nodes`, `gpu_nodes`, `versions`, `components` (name ->
    Component), and the helpers `kubectl`, `helm`, `env`, `api`, `api_client`, `create_namespace`,
    `delete_namespace`, `wait_until`, `logs`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        bin_dir: Path | None = None,
        nodes: Sequence[NodeSpec] = DEFAULT_NODES,
        detached: bool = False,
        kubectl: str | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.versions = Versions.load()
        self.bin_dir = (bin_dir or default_bin_dir(self.versions)).resolve()
        self.nodes = tuple(nodes)
        self.detached = detached
        self.log_dir = self.state_dir / "logs"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.ports = Ports()
        self.components: dict[str, Component] = {}
        self.skipped: list[str] = []
        self._kubectl = kubectl
        self._pki: PKI | None = None
        self._ssl: ssl.SSLContext | None = None
        self._stopped = False

    # ---------------------------------------------------------------- public helpers
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def gpu_nodes(self) -> list[str]:
        return [n.name for n in self.nodes if n.gpus]

    @property
    def pki(self) -> PKI:
        if self._pki is None:
            raise ClusterError("cluster not started")
        return self._pki

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def kubectl_path(self) -> str:
        """kubectl built at the pinned Kubernetes version if there, else the one on PATH."""
        if self._kubectl:
            return self._kubectl
        built = self.bin_dir / "kubectl"
        if os.access(built, os.X_OK):
            return str(built)
        found = shutil.which("kubectl")
        if not found:
            raise ClusterError("no kubectl: build it with scripts/build-cluster-binaries.sh")
        return found

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for tools: KUBECONFIG set, the pinned binaries first on PATH, helm kept
        inside the state dir."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        helm_home = self.state_dir / "helm"
        env.setdefault("HELM_CACHE_HOME", str(helm_home / "cache"))
        env.setdefault("HELM_CONFIG_HOME", str(helm_home / "config"))
        env.setdefault("HELM_DATA_HOME", str(helm_home / "data"))
        return env

    def run_tool(
        self, exe: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [exe, *args], input=input, capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{Path(exe).name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this cluster (`--kubeconfig` given explicitly)."""
        return self.run_tool(
            self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args, input=input, check=check, timeout=timeout
        )

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Runs the pinned helm against this cluster."""
        exe = self.bin_dir / "helm"
        if not os.access(exe, os.X_OK):
            raise ClusterError(f"helm was not built ({exe} missing)")
        return self.run_tool(
            str(exe), f"--kubeconfig={self.kubeconfig}", *args, input=input, check=check, timeout=timeout
        )

    def api(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """One request to the API server as the admin user; returns (status, decoded JSON or text).
        `content_type` selects the patch flavour (e.g. application/merge-patch+json)."""
        return self._https(self.ports.apiserver, method, path, body, timeout=timeout, content_type=content_type)

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` for this cluster (needs the `kubernetes` package)."""
        from kubernetes import config as k8s_config

        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def wait_until(
        self, predicate: Callable[[], T | None], *, timeout: float = 60, what: str, interval: float = 0.2
    ) -> T:
        return wait_until(predicate, timeout=timeout, what=what, interval=interval, on_timeout=self.logs)

    def crd_established(self, name: str) -> bool:
        """Whether the CustomResourceDefinition `name` exists and has its Established condition True."""
        status, body = self.api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return status == 200 and any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (body.get("status") or {}).get("conditions") or []
        )

    def wait_crd_established(self, name: str, *, timeout: float = 60) -> None:
        self.wait_until(lambda: self.crd_established(name), timeout=timeout, what=f"CRD {name} established")

    def create_namespace(self, name: str, *, labels: Mapping[str, str] | None = None, timeout: float = 60) -> str:
        """Creates a namespace and waits for its `default` ServiceAccount (pods need it)."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
        status, out = self.api("POST", "/api/v1/namespaces", body)
        if status not in (201, 409):
            raise ClusterError(f"creating namespace {name}: {status} {out}")
        self.wait_until(
            lambda: self.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
            timeout=timeout,
            what=f"the default ServiceAccount in namespace {name}",
        )
        return name

    def delete_namespace(self, name: str, *, wait: bool = False, timeout: float = 120) -> None:
        self.api("DELETE", f"/api/v1/namespaces/{name}")
        if wait:
            self.wait_until(
                lambda: self.api("GET", f"/api/v1/namespaces/{name}")[0] == 404,
                timeout=timeout,
                what=f"namespace {name} to be deleted",
            )

    def logs(self, lines: int = 30) -> str:
        """The tails of every component's log (for error messages)."""
        return "\n".join(_tail(c.log, lines) for c in self.components.values())

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 240) -> LocalCluster:
        """Starts every component and waits (polling, deadline `timeout`) until usable.

        A component that exits while being waited for fails the start at once (with its log);
        one that lost its port to another process (ports are picked free, then bound by the
        component) makes the whole start retry on new ports, up to 3 times.
        """
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ClusterError(
                f"missing {', '.join(missing)} in {self.bin_dir}: run `make cluster-bins` "
                "(scripts/build-cluster-binaries.sh)"
            )
        if not self.detached:
            global _libc
            if _libc is None:
                with contextlib.suppress(OSError):
                    _libc = ctypes.CDLL(None, use_errno=True)
        t0 = time.monotonic()
        deadline = t0 + timeout
        for attempt in range(1, 4):
            self._reset_state_dir()
            self.components = {}
            self.skipped = []
            if not self.detached:
                with _live_lock:
                    _live_clusters.add(self)
            try:
                self._start_once(deadline)
                break
            except ComponentExited as e:
                self.stop()
                if attempt == 3 or "address already in use" not in _tail(e.log, 60):
                    raise
                print(f"dspark test cluster: {e.component} lost its port, retrying on new ports", file=sys.stderr)
            except BaseException:
                self.stop()
                raise
        self.started_in = time.monotonic() - t0
        return self

    def _start_once(self, deadline: float) -> None:
        def wait(predicate: Callable[[], object], what: str) -> None:
            def check() -> object:
                self._raise_if_exited()
                return predicate()

            self.wait_until(check, timeout=max(1.0, deadline - time.monotonic()), what=what)

        self._prepare()
        self._spawn("etcd", self._etcd_args())
        wait(self._etcd_healthy, "etcd to be healthy")
        self._spawn("kube-apiserver", self._apiserver_args())
        wait(lambda: self.api("GET", "/readyz", timeout=5) == (200, "ok"), "kube-apiserver /readyz")
        self._spawn_optional("kube-controller-manager", self._controller_manager_args)
        self._spawn_optional("kube-scheduler", self._scheduler_args)
        self._spawn_optional("kwok", self._kwok_args)
        for spec in self.nodes:
            status, out = self.api("POST", "/api/v1/nodes", spec.manifest())
            if status not in (201, 409):
                raise ClusterError(f"creating node {spec.name}: {status} {out}")
        for name, port in (
            ("kube-controller-manager", self.ports.controller_manager),
            ("kube-scheduler", self.ports.scheduler),
            ("kwok", self.ports.kwok),
        ):
            if name in self.components:
                wait(self._healthz_probe(port), f"{name} /healthz")
        if "kwok" in self.components:
            wait(self._nodes_ready, "the kwok nodes to be Ready and untainted")
        if "kube-controller-manager" in self.components:
            wait(
                lambda: self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
                "the default ServiceAccount (controller-manager)",
            )

    def _raise_if_exited(self) -> None:
        for comp in self.components.values():
            if not comp.alive():
                raise ComponentExited(comp.name, comp.log)

    def stop(self, timeout: float = 15) -> None:
        """Stops every process this cluster started (SIGTERM to each process group, then SIGKILL)."""
        with _live_lock:
            _live_clusters.discard(self)
        for name in reversed(list(self.components)):
            comp = self.components[name]
            comp.signal_group(signal.SIGTERM)
            if not comp.wait_gone(timeout):
                comp.signal_group(signal.SIGKILL)
                comp.wait_gone(5)
            # Children of the process group that outlive their leader.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(comp.pid, signal.SIGKILL)
        self._stopped = True

    def running(self) -> dict[str, bool]:
        return {name: c.alive() for name, c in self.components.items()}

    # ---------------------------------------------------------------- state file (detached `up`)
    def save_state(self, path: Path) -> None:
        data = {
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "state_dir": str(self.state_dir),
            "bin_dir": str(self.bin_dir),
            "ports": self.ports.__dict__,
            "versions": self.versions.__dict__,
            "components": [c.to_json() for c in self.components.values()],
        }
        path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def from_state(cls, path: Path) -> LocalCluster:
        data = json.loads(path.read_text())
        cluster = cls(Path(data["state_dir"]), bin_dir=Path(data["bin_dir"]), detached=True)
        cluster.ports = Ports(**data["ports"])
        cluster.components = {c["name"]: Component.from_json(c) for c in data["components"]}
        cluster._load_pki()
        return cluster

    # ---------------------------------------------------------------- internals
    def _reset_state_dir(self) -> None:
        """Empties the state dir, but only one this module made (or an empty one)."""
        marker = self.state_dir / STATE_MARKER
        if self.state_dir.exists() and any(self.state_dir.iterdir()) and not marker.exists():
            raise ClusterError(f"{self.state_dir} is not empty and not a test cluster state dir: refusing to wipe it")
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.log_dir.mkdir(parents=True)
        marker.write_text("state of a harness.cluster control plane; wiped on each start\n")

    def _load_pki(self) -> None:
        pki_dir = self.state_dir / "pki"
        ca = CertPair(pki_dir / "ca.crt", pki_dir / "ca.key")
        self._pki = PKI(pki_dir, ca, pki_dir / "sa.key", pki_dir / "sa.pub")

    def _prepare(self) -> None:
        self.ports = Ports.allocate()
        pki = PKI.create(self.state_dir / "pki")
        self._pki = pki
        ips, dns = ("127.0.0.1",), ("localhost",)
        self._etcd_cert = pki.issue("etcd", "etcd", server=True, client=True, ip_addresses=ips, dns_names=dns)
        self._etcd_client = pki.issue("apiserver-etcd-client", "kube-apiserver-etcd-client")
        self._apiserver_cert = pki.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            client=False,
            ip_addresses=("127.0.0.1", "10.96.0.1"),
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        self._admin = pki.issue("admin", "kubernetes-admin", organizations=("system:masters",))
        # Request-header authentication (aggregated API servers; also read by the controller
        # manager and scheduler from the extension-apiserver-authentication ConfigMap).
        self._front_proxy = pki.issue("front-proxy-client", FRONT_PROXY_CLIENT)
        self._write_kubeconfig(self.kubeconfig, self._admin, user="admin")
        self._component_kubeconfigs: dict[str, Path] = {}
        for name, cn, orgs in (
            ("kube-controller-manager", "system:kube-controller-manager", ()),
            ("kube-scheduler", "system:kube-scheduler", ()),
            ("kwok", "kwok-controller", ("system:masters",)),
        ):
            client = pki.issue(f"{name}-client", cn, organizations=orgs)
            path = self.state_dir / "kubeconfigs" / f"{name}.kubeconfig"
            self._write_kubeconfig(path, client, user=name)
            self._component_kubeconfigs[name] = path
        self._serving: dict[str, CertPair] = {
            name: pki.issue(f"{name}-serving", name, server=True, client=False, ip_addresses=ips, dns_names=dns)
            for name in ("kube-controller-manager", "kube-scheduler", "kwok")
        }
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        self._ssl = ctx

    def _write_kubeconfig(self, path: Path, client: CertPair, *, user: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dspark-test",
                    "cluster": {"server": self.server, "certificate-authority-data": _b64(self.pki.ca.cert)},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": _b64(client.cert), "client-key-data": _b64(client.key)},
                }
            ],
            "contexts": [{"name": "dspark-test", "context": {"cluster": "dspark-test", "user": user}}],
            "current-context": "dspark-test",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            pki = self.pki
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
            admin = CertPair(pki.directory / "admin.crt", pki.directory / "admin.key")
            ctx.load_cert_chain(str(admin.cert), str(admin.key))
            self._ssl = ctx
        return self._ssl

    def _https(
        self, port: int, method: str, path: str, body: Any = None, *, timeout: float = 30,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self._ssl_context(), timeout=timeout)
        try:
            headers = {"Accept": "application/json"}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read().decode(errors="replace")
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.strip()

    def _healthz_probe(self, port: int) -> Callable[[], bool]:
        return lambda: self._https(port, "GET", "/healthz", timeout=5) == (200, "ok")

    def _etcd_healthy(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self._etcd_client.cert), str(self._etcd_client.key))
        conn = http.client.HTTPSConnection("127.0.0.1", self.ports.etcd_client, context=ctx, timeout=5)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            data = json.loads(resp.read())
        finally:
            conn.close()
        return resp.status == 200 and data.get("health") == "true"

    def _nodes_ready(self) -> bool:
        status, out = self.api("GET", "/api/v1/nodes", timeout=10)
        if status != 200:
            return False
        by_name = {item["metadata"]["name"]: item for item in out.get("items", [])}
        for spec in self.nodes:
            node = by_name.get(spec.name)
            if node is None:
                return False
            conditions = node.get("status", {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                return False
            taints = node.get("spec", {}).get("taints") or []
            if any(t.get("key", "").startswith("node.kubernetes.io/") for t in taints):
                return False
        return True

    def _spawn(self, name: str, args: list[str]) -> Component:
        exe = self.binary(name)
        log_path = self.log_dir / f"{name}.log"
        log: IO[bytes]
        with open(log_path, "ab") as log:
            log.write(f"$ {exe} {' '.join(args)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                [str(exe), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                # PR_SET_PDEATHSIG follows the spawning *thread*: only tie the processes to the main one.
                preexec_fn=_die_with_parent if self._die_with_parent() else None,
                env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
            )
        comp = Component(name, popen.pid, _proc_start_time(popen.pid), log_path, None if self.detached else popen)
        self.components[name] = comp
        self._check_alive_soon(comp)
        return comp

    def _die_with_parent(self) -> bool:
        return not self.detached and threading.current_thread() is threading.main_thread()

    def _check_alive_soon(self, comp: Component) -> None:
        """Fails fast (with the log) when a process exits right away, e.g. on a bad flag."""
        try:
            wait_until(lambda: not comp.alive(), timeout=0.3, what="", interval=0.1)
        except ClusterError:
            return  # still running after the grace period: good
        raise ComponentExited(comp.name, comp.log)

    def _spawn_optional(self, name: str, args: Callable[[], list[str]]) -> None:
        if not os.access(self.binary(name), os.X_OK):
            print(f"dspark test cluster: {name} not built, running without it", file=sys.stderr)
            self.skipped.append(name)
            return
        self._spawn(name, args())

    def _etcd_args(self) -> list[str]:
        p, c = self.ports, self._etcd_cert
        ca = self.pki.ca.cert
        peer = f"https://127.0.0.1:{p.etcd_peer}"
        return [
            "--name=dspark-test",
            f"--data-dir={self.state_dir / 'etcd-data'}",
            f"--listen-client-urls=https://127.0.0.1:{p.etcd_client}",
            f"--advertise-client-urls=https://127.0.0.1:{p.etcd_client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=dspark-test={peer}",
            "--initial-cluster-state=new",
            f"--cert-file={c.cert}",
            f"--key-file={c.key}",
            f"--trusted-ca-file={ca}",
            "--client-cert-auth",
            f"--peer-cert-file={c.cert}",
            f"--peer-key-file={c.key}",
            f"--peer-trusted-ca-file={ca}",
            "--peer-client-cert-auth",
            # A throwaway test store: durability is not needed, speed on small shared disks is.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p, pki = self.ports, self.pki
        return [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={p.apiserver}",
            f"--etcd-servers=https://127.0.0.1:{p.etcd_client}",
            f"--etcd-cafile={pki.ca.cert}",
            f"--etcd-certfile={self._etcd_client.cert}",
            f"--etcd-keyfile={self._etcd_client.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--tls-cert-file={self._apiserver_cert.cert}",
            f"--tls-private-key-file={self._apiserver_cert.key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=Node,RBAC",
            f"--requestheader-client-ca-file={pki.ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self._front_proxy.cert}",
            f"--proxy-client-key-file={self._front_proxy.key}",
            "--allow-privileged=true",
            # The "kubernetes" Service would point at 127.0.0.1, which Endpoints reject.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            "--profiling=false",
        ]

    def _controller_manager_args(self) -> list[str]:
        p, pki = self.ports, self.pki
        kc = self._component_kubeconfigs["kube-controller-manager"]
        serving = self._serving["kube-controller-manager"]
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p.controller_manager}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            "--controllers=*",
            f"--flex-volume-plugin-dir={self.state_dir / 'flexvolume'}",
            "--profiling=false",
        ]

    def _scheduler_args(self) -> list[str]:
        p, pki = self.ports, self.pki
        kc = self._component_kubeconfigs["kube-scheduler"]
        serving = self._serving["kube-scheduler"]
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p.scheduler}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _kwok_args(self) -> list[str]:
        kc = self._component_kubeconfigs["kwok"]
        serving = self._serving["kwok"]
        # The stages (node-initialize, node-heartbeat-with-lease, pod-ready/complete/delete) come
        # from kwok's own module at the pinned version (build script); --config also keeps any
        # ~/.kwok/kwok.yaml out.
        stages = self.bin_dir / KWOK_STAGES_FILE
        if not stages.is_file():
            raise ClusterError(f"{stages} missing: rerun scripts/build-cluster-binaries.sh")
        return [
            f"--kubeconfig={kc}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
            f"--node-port={self.ports.kwok}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--cidr={POD_CIDR}",
            "--node-lease-duration-seconds=40",
            "--node-ip=10.250.0.1",
        ]


# --------------------------------------------------------------------------------------------
# Command line


def _default_state_dir() -> Path:
    root = repo_root()
    return (root or Path.cwd()) / ".cluster"


@contextlib.contextmanager
def _quiet_broken_pipe() -> Iterator[None]:
    with contextlib.suppress(BrokenPipeError):
        yield


def _cmd_up(state_dir: Path, timeout: float) -> int:
    state_file = state_dir / "state.json"
    if state_file.exists():
        cluster = LocalCluster.from_state(state_file)
        if all(cluster.running().values()) and _ready(cluster):
            print(f"test cluster already running ({cluster.server})", file=sys.stderr)
            print(f"export KUBECONFIG={cluster.kubeconfig}")
            return 0
        print("stale test cluster state: stopping what is left of it", file=sys.stderr)
        cluster.stop()
        state_file.unlink()
    cluster = LocalCluster(state_dir, detached=True)  # start() recreates state_dir
    print(f"starting the test control plane ({cluster.versions.key}) in {cluster.state_dir}", file=sys.stderr)
    install_termination_handlers()
    try:
        cluster.start(timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    cluster.save_state(state_file)
    print(
        f"test cluster up in {cluster.started_in:.1f}s at {cluster.server}; "
        f"nodes: {', '.join(n.name for n in cluster.nodes)}; logs in {cluster.log_dir}",
        file=sys.stderr,
    )
    if cluster.skipped:
        print(f"WARNING: running without {', '.join(cluster.skipped)} (not built)", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _ready(cluster: LocalCluster) -> bool:
    try:
        return cluster.api("GET", "/readyz", timeout=5) == (200, "ok")
    except OSError:
        return False


def _cmd_down(state_dir: Path) -> int:
    state_file = state_dir / "state.json"
    if not state_file.exists():
        print("no test cluster recorded in " + str(state_file), file=sys.stderr)
        return 0
    cluster = LocalCluster.from_state(state_file)
    cluster.stop()
    state_file.unlink()
    print(f"test cluster stopped (logs kept in {cluster.log_dir})", file=sys.stderr)
    return 0


def _cmd_status(state_dir: Path) -> int:
    state_file = state_dir / "state.json"
    if not state_file.exists():
        print("test cluster: not running")
        return 1
    cluster = LocalCluster.from_state(state_file)
    running = cluster.running()
    ready = _ready(cluster)
    print(f"test cluster at {cluster.server}: apiserver {'ready' if ready else 'NOT ready'}")
    for name, alive in running.items():
        comp = cluster.components[name]
        print(f"  {name:<24} pid {comp.pid:<8} {'running' if alive else 'STOPPED'}  log {comp.log}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0 if ready and all(running.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.cluster", description="Local test Kubernetes control plane."
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=None, help="default: <repo>/.cluster")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for readiness (up)")
    args = parser.parse_args(argv)
    state_dir: Path = (args.state_dir or _default_state_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_broken_pipe():
        try:
            if args.command == "up":
                return _cmd_up(state_dir, args.timeout)
            if args.command == "down":
                return _cmd_down(state_dir)
            return _cmd_status(state_dir)
        except ClusterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
