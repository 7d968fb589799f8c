"""A process kubelet for the test cluster: it registers one node, and runs the pods the scheduler binds to it
as local processes, so what the operator renders really runs (test-only; never shipped).

For each pod it does what a kubelet does, on one machine:
- volumes: ConfigMap, Secret, downward API, projected (service-account token from the TokenRequest API, the
  cluster CA, the namespace), emptyDir, hostPath, and PersistentVolumeClaims bound to hostPath volumes, each
  mounted at its mountPath in a private mount namespace (``unshare --mount``; needs root), so a container sees
  /etc/dspark, /output, /var/run/secrets/... exactly where its manifest says;
- networking: every pod is on 127.0.0.1 (like hostNetwork); the pod's /etc/hosts (bind-mounted too) maps the
  namespace's Service names, StatefulSet pod names and the apiserver's name to 127.0.0.1, and
  KUBERNETES_SERVICE_HOST/PORT point at the real apiserver;
- env: plain values with $(VAR) expansion, fieldRef (metadata.*, labels, annotations, status.podIP, ...),
  secretKeyRef, configMapKeyRef, envFrom;
- lifecycle: command + args, restartPolicy with a short back-off and restartCount, startup/readiness/liveness
  probes (httpGet, tcpSocket, exec), SIGTERM then SIGKILL after the grace period on deletion, then the final
  delete; pod phase, conditions, container states and exit codes are written back to the apiserver;
- the node: Ready, with a Lease heartbeat, so the node controller never taints it.

Images are ignored: commands run with this environment's interpreter and console scripts first on PATH.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cluster import LocalCluster

MERGE_PATCH = "application/merge-patch+json"
LOOPBACK = "127.0.0.1"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_GRACE_SECONDS = 60.0
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, undefined ones stay, `$$` is a `$`."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(repl, value)


class PodSetupError(RuntimeError):
    """A pod that cannot start (a missing Secret, an unbound claim, ...): reported in its container status."""


@dataclass
class Probe:
    """One probe of one container, with its schedule and counters."""

    spec: dict[str, Any]
    next_at: float
    failures: int = 0
    successes: int = 0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold", 3))


@dataclass
class ContainerRun:
    """One container of a pod: its process, restarts and probe state."""

    spec: dict[str, Any]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str = ""
    restart_at: float = 0.0
    backoff: float = 1.0
    started: bool = False
    ready: bool = False
    startup: Probe | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])


@dataclass
class PodRun:
    """One pod this kubelet runs."""

    pod: dict[str, Any]
    root: Path
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    mounts: dict[str, Path] = field(default_factory=dict)  # volume name -> host directory
    start_time: str = field(default_factory=now_iso)
    kill_deadline: float | None = None
    last_status: str = ""

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])


class ProcessKubelet:
    """Runs the pods bound to node `node_name` as local processes (see the module docstring)."""

    def __init__(
        self,
        cluster: LocalCluster,
        work_dir: Path,
        *,
        node_name: str = "dspark-process-node",
        labels: Mapping[str, str] | None = None,
        cpu: str = "16",
        memory: str = "64Gi",
        interval: float = 0.3,
    ) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the process kubelet needs root (it gives each pod a private mount namespace)")
        if shutil.which("unshare") is None:
            raise RuntimeError("the process kubelet needs `unshare` (Debian package util-linux)")
        self.cluster = cluster
        self.work_dir = work_dir
        self.node_name = node_name
        self.labels = dict(labels or {})
        self.cpu, self.memory = cpu, memory
        self.interval = interval
        self.pods: dict[str, PodRun] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_heartbeat = 0.0
        self.bin_dir = Path(sys.executable).parent

    # ------------------------------------------------------------------ node
    def node_manifest(self) -> dict[str, Any]:
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": "110"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "type": "process", **self.labels},
            },
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [self._ready_condition()],
                "addresses": [{"type": "InternalIP", "address": LOOPBACK}, {"type": "Hostname",
                                                                             "address": self.node_name}],
                "nodeInfo": {"kubeletVersion": "process-kubelet", "operatingSystem": "linux",
                             "architecture": "amd64"},
            },
        }

    def _ready_condition(self) -> dict[str, Any]:
        t = now_iso()
        return {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "process kubelet",
                "lastHeartbeatTime": t, "lastTransitionTime": t}

    def start(self) -> ProcessKubelet:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        status, out = self.cluster.api("POST", "/api/v1/nodes", self.node_manifest())
        if status == 409:
            self.cluster.api("DELETE", f"/api/v1/nodes/{self.node_name}")
            status, out = self.cluster.api("POST", "/api/v1/nodes", self.node_manifest())
        if status != 201:
            raise RuntimeError(f"registering node {self.node_name}: {status} {out}")
        self._heartbeat(force=True)
        self._thread = threading.Thread(target=self._run, name="process-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for run in list(self.pods.values()):
                for c in run.containers.values():
                    self._kill(c, signal.SIGKILL)
                self._unmount_dirs(run)
            self.pods.clear()
        self.cluster.api("DELETE", f"/api/v1/nodes/{self.node_name}")

    def _heartbeat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_heartbeat < 10:
            return
        self._last_heartbeat = time.monotonic()
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        renew = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        status, _ = self.cluster.api("PATCH", lease_path, {"spec": {"renewTime": renew}}, content_type=MERGE_PATCH)
        if status == 404:
            self.cluster.api("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": renew},
            })
        self.cluster.api("PATCH", f"/api/v1/nodes/{self.node_name}/status",
                         {"status": {"conditions": [self._ready_condition()]}}, content_type=MERGE_PATCH)

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._heartbeat()
                self._sync()
            except Exception as exc:  # keep running; tests read `errors` on failure
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if len(self.errors) > 200:
                    del self.errors[:100]
            self._stop.wait(self.interval)

    def _sync(self) -> None:
        status, body = self.cluster.api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.node_name}")
        if status != 200:
            return
        seen = set()
        with self._lock:
            for pod in body.get("items") or []:
                uid = pod["metadata"]["uid"]
                seen.add(uid)
                run = self.pods.get(uid)
                if run is None:
                    if pod["metadata"].get("deletionTimestamp"):
                        self._final_delete(pod)
                        continue
                    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        continue
                    run = self.pods[uid] = PodRun(pod, self.work_dir / "pods" / f"{pod['metadata']['namespace']}_"
                                                  f"{pod['metadata']['name']}_{uid[:8]}")
                    self._setup(run)
                run.pod = pod
                self._sync_pod(run)
            for uid in [u for u in self.pods if u not in seen]:  # deleted behind our back (force delete)
                run = self.pods.pop(uid)
                for c in run.containers.values():
                    self._kill(c, signal.SIGKILL)
                self._unmount_dirs(run)

    def _sync_pod(self, run: PodRun) -> None:
        meta = run.pod["metadata"]
        if meta.get("deletionTimestamp"):
            self._terminate(run)
            return
        policy = run.pod["spec"].get("restartPolicy", "Always")
        for c in run.containers.values():
            if c.proc is not None:
                code = c.proc.poll()
                if code is not None:
                    self._on_exit(c, code, policy)
            if c.proc is None and c.terminated is None and c.waiting_reason != "SetupFailed" \
                    and time.monotonic() >= c.restart_at:
                self._start_container(run, c)
            if c.proc is not None:
                self._probe(run, c)
        self._write_status(run)

    # ------------------------------------------------------------------ pod setup
    def _setup(self, run: PodRun) -> None:
        run.root.mkdir(parents=True, exist_ok=True)
        (run.root / "logs").mkdir(exist_ok=True)
        for spec in run.pod["spec"].get("containers") or []:
            run.containers[spec["name"]] = ContainerRun(spec, run.root / "logs" / f"{spec['name']}.log")
        try:
            for volume in run.pod["spec"].get("volumes") or []:
                run.mounts[volume["name"]] = self._volume(run, volume)
            (run.root / "hosts").write_text(self._hosts_file(run))
        except PodSetupError as exc:
            for c in run.containers.values():
                c.waiting_reason, c.waiting_message = "SetupFailed", str(exc)

    def _volume(self, run: PodRun, volume: dict[str, Any]) -> Path:
        name, ns = volume["name"], run.namespace
        target = run.root / "volumes" / name
        if "persistentVolumeClaim" in volume:
            return self._claim_dir(ns, volume["persistentVolumeClaim"]["claimName"])
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            path.mkdir(parents=True, exist_ok=True)
            return path
        target.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            return target
        if "configMap" in volume:
            self._write_items(target, self._object_data(ns, "configmaps", volume["configMap"]), volume["configMap"])
        elif "secret" in volume:
            src = volume["secret"]
            self._write_items(target, self._object_data(ns, "secrets", {**src, "name": src["secretName"]}), src)
        elif "downwardAPI" in volume:
            for item in volume["downwardAPI"].get("items") or []:
                self._write_file(target / item["path"], self._field(run, item["fieldRef"]["fieldPath"]))
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                self._projected(run, target, source)
        else:
            raise PodSetupError(f"volume {name}: kind {sorted(set(volume) - {'name'})} not supported")
        return target

    def _projected(self, run: PodRun, target: Path, source: dict[str, Any]) -> None:
        ns = run.namespace
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            sa = run.pod["spec"].get("serviceAccountName", "default")
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "audiences": [sat["audience"]] if sat.get("audience") else [],
                "expirationSeconds": int(sat.get("expirationSeconds", 3607)),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": run.name, "uid": run.uid},
            }}
            status, out = self.cluster.api("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", body)
            if status != 201:
                raise PodSetupError(f"token for service account {sa}: {status} {out}")
            self._write_file(target / sat["path"], out["status"]["token"])
        elif "configMap" in source:
            src = source["configMap"]
            self._write_items(target, self._object_data(ns, "configmaps", src), src)
        elif "secret" in source:
            src = source["secret"]
            self._write_items(target, self._object_data(ns, "secrets", src), src)
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                self._write_file(target / item["path"], self._field(run, item["fieldRef"]["fieldPath"]))

    def _object_data(self, ns: str, plural: str, ref: Mapping[str, Any]) -> dict[str, str]:
        status, obj = self.cluster.api("GET", f"/api/v1/namespaces/{ns}/{plural}/{ref['name']}")
        if status != 200:
            if ref.get("optional"):
                return {}
            raise PodSetupError(f"{plural[:-1]} {ns}/{ref['name']} not found")
        if plural == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _write_items(self, target: Path, data: Mapping[str, str], src: Mapping[str, Any]) -> None:
        items = src.get("items")
        pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, path in pairs:
            if key not in data:
                raise PodSetupError(f"key {key} missing in {src.get('name')}")
            self._write_file(target / path, data[key])

    @staticmethod
    def _write_file(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)

    def _claim_dir(self, ns: str, claim: str) -> Path:
        status, pvc = self.cluster.api("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        if status != 200:
            raise PodSetupError(f"persistentvolumeclaim {ns}/{claim} not found")
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise PodSetupError(f"persistentvolumeclaim {ns}/{claim} is not bound")
        status, pv = self.cluster.api("GET", f"/api/v1/persistentvolumes/{pv_name}")
        host = ((pv or {}).get("spec") or {}).get("hostPath", {}).get("path") if status == 200 else None
        if not host:
            raise PodSetupError(f"persistentvolume {pv_name}: only hostPath volumes run here")
        Path(host).mkdir(parents=True, exist_ok=True)
        return Path(host)

    def _hosts_file(self, run: PodRun) -> str:
        """127.0.0.1 for every name a pod of this namespace may look up: Services, StatefulSet pods, the apiserver."""
        ns = run.namespace
        names = {"localhost", run.pod["spec"].get("hostname") or run.name}
        for base in ("kubernetes", "kubernetes.default"):
            names |= {base, f"{base}.svc", f"{base}.svc.cluster.local"}
        _, svcs = self.cluster.api("GET", f"/api/v1/namespaces/{ns}/services")
        for svc in (svcs or {}).get("items") or []:
            n = svc["metadata"]["name"]
            names |= {n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local"}
        _, sets = self.cluster.api("GET", f"/apis/apps/v1/namespaces/{ns}/statefulsets")
        for sts in (sets or {}).get("items") or []:
            svc_name = sts["spec"].get("serviceName")
            for i in range(max(int(sts["spec"].get("replicas") or 0), 1)):
                pod = f"{sts['metadata']['name']}-{i}"
                if svc_name:
                    names |= {f"{pod}.{svc_name}", f"{pod}.{svc_name}.{ns}", f"{pod}.{svc_name}.{ns}.svc",
                              f"{pod}.{svc_name}.{ns}.svc.cluster.local"}
        return f"{LOOPBACK} " + " ".join(sorted(names)) + "\n::1 localhost ip6-localhost ip6-loopback\n"

    def _unmount_dirs(self, run: PodRun) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(run.root / "volumes")

    # ------------------------------------------------------------------ env
    def _field(self, run: PodRun, path: str) -> str:
        meta, spec = run.pod["metadata"], run.pod["spec"]
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": self.node_name, "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": LOOPBACK, "status.hostIP": LOOPBACK, "status.podIPs": LOOPBACK,
        }
        if path in simple:
            return str(simple[path])
        m = _FIELD_KEY.match(path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(path.split(".")[1]) or {}).items()))
        raise PodSetupError(f"fieldRef {path} not supported")

    def _env(self, run: PodRun, spec: dict[str, Any]) -> dict[str, str]:
        ns = run.namespace
        env: dict[str, str] = {
            "PATH": f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": run.pod["spec"].get("hostname") or run.name,
            "HOME": str(run.root / "home"),
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": LOOPBACK,
            "KUBERNETES_SERVICE_PORT": str(self.cluster.ports.apiserver),
        }
        (run.root / "home").mkdir(exist_ok=True)
        for src in spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = self._object_data(ns, "configmaps", src["configMapRef"])
            else:
                data = self._object_data(ns, "secrets", src["secretRef"])
            env.update({prefix + k: v for k, v in data.items()})
        for var in spec.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "valueFrom" in var:
                vf = var["valueFrom"]
                if "fieldRef" in vf:
                    env[var["name"]] = self._field(run, vf["fieldRef"]["fieldPath"])
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    plural, ref = ("secrets", vf["secretKeyRef"]) if "secretKeyRef" in vf else (
                        "configmaps", vf["configMapKeyRef"])
                    data = self._object_data(ns, plural, ref)
                    if ref["key"] in data:
                        env[var["name"]] = data[ref["key"]]
                    elif not ref.get("optional"):
                        raise PodSetupError(f"env {var['name']}: key {ref['key']} missing in {ref['name']}")
                elif "resourceFieldRef" in vf:
                    env[var["name"]] = "1"
            else:
                env[var["name"]] = ""
        return env

    # ------------------------------------------------------------------ containers
    def _start_container(self, run: PodRun, c: ContainerRun) -> None:
        spec = c.spec
        try:
            env = self._env(run, spec)
        except PodSetupError as exc:
            c.waiting_reason, c.waiting_message = "CreateContainerConfigError", str(exc)
            c.restart_at = time.monotonic() + 2
            return
        argv = [expand(a, env) for a in [*(spec.get("command") or []), *(spec.get("args") or [])]]
        if not argv:
            c.waiting_reason, c.waiting_message = "NoCommand", "the process kubelet runs no images: set command"
            return
        try:
            script = self._mount_script(run, spec)
        except PodSetupError as exc:
            c.waiting_reason, c.waiting_message = "CreateContainerError", str(exc)
            return
        log = open(c.log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        log.write(f"--- {now_iso()} start (restart {c.restart_count}): {shlex.join(argv)}\n".encode())
        log.flush()
        # A private mount namespace (the pod's files at their mountPaths) and a PID namespace: the command is
        # its init, and when it ends (or unshare is killed) every process it started ends too, as in a container.
        c.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGKILL",
             "--mount-proc", "--", "/bin/sh", "-c", script, "sh", *argv],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        c.started_at = now_iso()
        c.waiting_reason = None
        c.started = "startupProbe" not in spec
        c.ready = False
        t = time.monotonic()
        for kind in ("startup", "readiness", "liveness"):
            p = spec.get(f"{kind}Probe")
            setattr(c, kind, Probe(p, t + float(p.get("initialDelaySeconds", 0))) if p else None)
        if c.readiness is None and c.started:
            c.ready = True

    def _mount_script(self, run: PodRun, spec: Mapping[str, Any]) -> str:
        """The shell prologue that mounts /etc/hosts and every volumeMount, then execs the command."""
        mounts = [f"mount --bind {shlex.quote(str(run.root / 'hosts'))} /etc/hosts"]
        for m in spec.get("volumeMounts") or []:
            src = run.mounts.get(m["name"])
            if src is None:
                raise PodSetupError(f"volumeMount {m['name']}: no such volume")
            if m.get("subPath"):
                src = src / m["subPath"]
            dst = shlex.quote(m["mountPath"])
            make = f"mkdir -p {dst}" if src.is_dir() else f"mkdir -p $(dirname {dst}) && touch {dst}"
            mounts.append(f"{make} && mount --bind {shlex.quote(str(src))} {dst}")
            if m.get("readOnly"):
                mounts.append(f"mount -o remount,bind,ro {dst}")
        workdir = spec.get("workingDir") or "/"
        return " && ".join([*mounts, f"cd {shlex.quote(workdir)}"]) + ' && exec "$@"'

    def _on_exit(self, c: ContainerRun, code: int, policy: str) -> None:
        reason = "Completed" if code == 0 else "Error"
        exit_code = code if code >= 0 else 128 - code
        state = {"exitCode": exit_code, "reason": reason, "startedAt": c.started_at, "finishedAt": now_iso()}
        c.proc = None
        c.ready = False
        restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        if restart:
            c.last_terminated = state
            c.restart_count += 1
            c.waiting_reason, c.waiting_message = "CrashLoopBackOff", f"exit code {exit_code}"
            c.restart_at = time.monotonic() + c.backoff
            c.backoff = min(c.backoff * 2, 10.0)
        else:
            c.terminated = state

    def _kill(self, c: ContainerRun, sig: int) -> None:
        """SIGKILL ends the whole container (unshare, then its PID namespace); other signals go to its init
        process, the container's command, as a container runtime delivers them."""
        if c.proc is None or c.proc.poll() is not None:
            return
        pid = c.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(pid, sig)
                return
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            for child in children:
                os.kill(int(child), sig)

    def kill_container(self, namespace: str, pod: str, container: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to every process of one container (a crash, for tests); returns the killed group's pid."""
        with self._lock:
            for run in self.pods.values():
                if run.namespace == namespace and run.name == pod and container in run.containers:
                    c = run.containers[container]
                    if c.proc is None:
                        raise RuntimeError(f"{namespace}/{pod}/{container} is not running")
                    pid = c.proc.pid
                    self._kill(c, sig)
                    return pid
        raise KeyError(f"{namespace}/{pod}/{container} is not running here")

    def log_tail(self, namespace: str, pod: str, container: str | None = None, lines: int = 40) -> str:
        """The end of a container's log (all restarts), for failure messages."""
        out = []
        for d in sorted((self.work_dir / "pods").glob(f"{namespace}_{pod}_*")):
            for log in sorted((d / "logs").glob(f"{container or '*'}.log")):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"==> {log} <==\n" + "\n".join(text))
        return "\n".join(out)

    # ------------------------------------------------------------------ probes
    def _probe(self, run: PodRun, c: ContainerRun) -> None:
        t = time.monotonic()
        if not c.started:
            p = c.startup
            if p is not None and t >= p.next_at:
                p.next_at = t + p.period
                if self._check(run, c, p.spec):
                    c.started = True
                    c.ready = c.readiness is None
                    if c.readiness is not None:
                        c.readiness.next_at = t
                else:
                    p.failures += 1
                    if p.failures >= p.failure_threshold:
                        self._kill(c, signal.SIGKILL)
            return
        if c.readiness is not None and t >= c.readiness.next_at:
            p = c.readiness
            p.next_at = t + p.period
            ok = self._check(run, c, p.spec)
            p.failures = 0 if ok else p.failures + 1
            if ok:
                c.ready = True
            elif p.failures >= p.failure_threshold:
                c.ready = False
        if c.liveness is not None and t >= c.liveness.next_at:
            p = c.liveness
            p.next_at = t + p.period
            if self._check(run, c, p.spec):
                p.failures = 0
            else:
                p.failures += 1
                if p.failures >= p.failure_threshold:
                    self._kill(c, signal.SIGKILL)

    @staticmethod
    def _port(c: ContainerRun, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise PodSetupError(f"probe port {port!r} is not a named port of container {c.name}")

    def _check(self, run: PodRun, c: ContainerRun, spec: Mapping[str, Any]) -> bool:
        timeout = min(float(spec.get("timeoutSeconds", 1)), 5.0)
        try:
            if "httpGet" in spec:
                g = spec["httpGet"]
                url = f"http://{LOOPBACK}:{self._port(c, g['port'])}{g.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return bool(200 <= resp.status < 400)
            if "tcpSocket" in spec:
                with socket.create_connection((LOOPBACK, self._port(c, spec["tcpSocket"]["port"])), timeout=timeout):
                    return True
            if "exec" in spec:
                done = subprocess.run(spec["exec"]["command"], env=self._env(run, c.spec), timeout=timeout,
                                      capture_output=True, check=False)
                return done.returncode == 0
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired, PodSetupError):
            return False
        return False

    # ------------------------------------------------------------------ deletion
    def _terminate(self, run: PodRun) -> None:
        t = time.monotonic()
        if run.kill_deadline is None:
            grace = run.pod["metadata"].get("deletionGracePeriodSeconds")
            grace = float(run.pod["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace)
            run.kill_deadline = t + min(grace, MAX_GRACE_SECONDS)
            for c in run.containers.values():
                self._kill(c, signal.SIGTERM)
        alive = [c for c in run.containers.values() if c.proc is not None and c.proc.poll() is None]
        if alive and t < run.kill_deadline:
            return
        for c in alive:
            self._kill(c, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=10)  # type: ignore[union-attr]
        self.pods.pop(run.uid, None)
        self._unmount_dirs(run)
        self._final_delete(run.pod)

    def _final_delete(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        self.cluster.api("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                         {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})

    # ------------------------------------------------------------------ status
    def _container_status(self, c: ContainerRun) -> dict[str, Any]:
        state: dict[str, Any]
        if c.terminated is not None:
            state = {"terminated": c.terminated}
        elif c.proc is not None:
            state = {"running": {"startedAt": c.started_at}}
        else:
            state = {"waiting": {"reason": c.waiting_reason or "Waiting", "message": c.waiting_message}}
        out: dict[str, Any] = {
            "name": c.name, "image": c.spec.get("image", ""), "imageID": "", "ready": c.ready, "started": c.started,
            "restartCount": c.restart_count, "state": state,
            "lastState": {"terminated": c.last_terminated} if c.last_terminated else {},
        }
        if c.proc is not None:
            out["containerID"] = f"process://{c.proc.pid}"
        return out

    def _write_status(self, run: PodRun) -> None:
        statuses = [self._container_status(c) for c in run.containers.values()]
        terminated = [c.terminated for c in run.containers.values()]
        if terminated and all(t is not None for t in terminated):
            phase = "Succeeded" if all(t["exitCode"] == 0 for t in terminated if t) else "Failed"
        elif any(c.proc is not None or c.restart_count for c in run.containers.values()):
            phase = "Running"
        else:
            phase = "Pending"
        ready = bool(run.containers) and all(c.ready for c in run.containers.values())

        def cond(ctype: str, value: bool) -> dict[str, Any]:
            return {"type": ctype, "status": "True" if value else "False"}

        status = {
            "phase": phase, "hostIP": LOOPBACK, "hostIPs": [{"ip": LOOPBACK}], "podIP": LOOPBACK,
            "podIPs": [{"ip": LOOPBACK}], "startTime": run.start_time, "containerStatuses": statuses,
            "conditions": [cond("PodScheduled", True), cond("Initialized", True),
                           cond("ContainersReady", ready), cond("Ready", ready)],
        }
        text = json.dumps(status, sort_keys=True)
        if text == run.last_status:
            return
        code, out = self.cluster.api("PATCH", f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
                                     {"status": status}, content_type=MERGE_PATCH)
        if code == 200:
            run.last_status = text
        elif code != 404:
            self.errors.append(f"status of {run.namespace}/{run.name}: {code} {out}")
