"""Manifest builders: semantics of every child (no snapshots)."""

from __future__ import annotations

import copy
import signal
import subprocess
import time
from pathlib import Path

import yaml
from dspark_operator.builders import build_children, child_names
from dspark_operator.builders.common import spec_hash
from dspark_operator.constants import ANNOTATION_SPEC_HASH
from dspark_operator.reconcile import needs_apply
from dspark_trainer.capture.sglang_args import sglang_server_args
from dspark_trainer.config import JobConfig
from dspark_trainer.transport.master import master_args
from operator_helpers import UID, env_of, find, make_ctx

PROD = {
    "target": {"model": "/models/q", "modelClaimName": "models", "hfTokenSecretRef": {"name": "hf"}},
    "dataset": {"path": "/data/x.jsonl", "claimName": "data"},
    "inference": {
        "replicas": 4,
        "tensorParallelSize": 2,
        "memFractionStatic": 0.8, "extraArgs": ["--max-running-requests", "64"],
        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}},
    },
    "trainer": {
        "nodes": 2,
        "gpusPerNode": 8,
        "output": {"claimName": "out"},
        "resources": {"requests": {"cpu": 32}, "limits": {"memory": "512Gi"}},
    },
    "transport": {"protocol": "rdma", "rdmaResourceName": "rdma/ib", "rdmaResourceCount": 2, "deviceNames": "mlx5_0"},
    "scheduling": {
        "priorityClassName": "high",
        "nodeSelector": {"gpu": "h100"},
        "schedulerName": "volcano",
        "queueName": "team-q",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def test_every_child_is_owned_labelled_and_namespaced() -> None:
    ctx = make_ctx(PROD, podmonitor=True)
    children = build_children(ctx)
    kinds = sorted(m["kind"] for m in children)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "Deployment",
            "Service",
            "Deployment",
            "Service",
            "StatefulSet",
            "PodMonitor",
        ]
    )
    for m in children:
        meta = m["metadata"]
        assert meta["namespace"] == "ns"
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "dspark.io/v1alpha1",
            "kind": "DSparkTrainingJob",
            "name": "demo",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "dspark"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "dspark-operator"
        assert labels["app.kubernetes.io/part-of"] == "dspark"
        assert "app.kubernetes.io/component" in labels
        assert meta["annotations"][ANNOTATION_SPEC_HASH] == spec_hash(m)
        assert len(meta["name"]) <= 63


def test_podmonitor_only_when_the_api_exists_and_wanted() -> None:
    assert "PodMonitor" not in [m["kind"] for m in build_children(make_ctx(PROD, podmonitor=False))]
    off = {**PROD, "metrics": {"podMonitor": False}}
    assert "PodMonitor" not in [m["kind"] for m in build_children(make_ctx(off, podmonitor=True))]
    pm = find(build_children(make_ctx(PROD, podmonitor=True)), "PodMonitor")
    ports = {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    assert ports == {"metrics", "http"}
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "demo"


def test_mooncake_master() -> None:
    children = build_children(make_ctx(PROD))
    dep = find(children, "Deployment", "mooncake-master")
    svc = find(children, "Service", "mooncake-master")
    assert dep["spec"]["replicas"] == 1
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["dspark", "mooncake-master", "--config", "/etc/dspark/job.yaml"]
    assert env_of(c) == {"DSPARK_JOB_CONFIG": "/etc/dspark/job.yaml"}
    assert {"name": "config", "mountPath": "/etc/dspark", "readOnly": True} in c["volumeMounts"]
    # The master listens where the job config tells its clients to connect.
    config = JobConfig.from_mapping(yaml.safe_load(find(children, "ConfigMap")["data"]["job.yaml"]))
    args = master_args(config.transport)
    assert "--rpc_port=50051" in args and "--http_metadata_server_port=8080" in args and "--metrics_port=9003" in args
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"rpc": 50051, "http-metadata": 8080, "metrics": 9003}
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "rpc": 50051,
        "http-metadata": 8080,
        "metrics": 9003,
    }
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_sglang_deployment() -> None:
    children = build_children(make_ctx(PROD))
    dep = find(children, "Deployment", "inference")
    svc = find(children, "Service", "inference")
    assert dep["spec"]["replicas"] == 4
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["dspark", "capture-server", "--config", "/etc/dspark/job.yaml"]
    assert "args" not in c
    env = env_of(c)
    assert env["DSPARK_JOB_CONFIG"] == "/etc/dspark/job.yaml"
    assert env["DSPARK_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert not [k for k in env if k.startswith("MOONCAKE_") or k in ("DSPARK_CONFIG", "POD_IP")]
    # What SGLang is started with: derived from the rendered config (the capture-server role's argv).
    config = JobConfig.from_mapping(yaml.safe_load(find(children, "ConfigMap")["data"]["job.yaml"]))
    assert config.inference.engine == "sglang" and config.capture_server_api == "sglang"
    assert config.transport.protocol == "rdma" and config.transport.device_names == "mlx5_0"
    args = sglang_server_args(config, [1, 9, 17])
    assert args[args.index("--model-path") + 1] == "/models/q"
    assert args[args.index("--tp-size") + 1] == "2"
    assert args[args.index("--chunked-prefill-size") + 1] == "-1"
    assert args[args.index("--mem-fraction-static") + 1] == "0.8"
    assert "--disable-radix-cache" in args and "--enable-metrics" in args
    assert args[-2:] == ["--max-running-requests", "64"]
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert c["startupProbe"]["httpGet"]["path"] == "/health_generate"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health_generate"
    assert c["livenessProbe"]["httpGet"]["path"] == "/ping"  # SGLang's flag check (see test_inference_probes.py)
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    # GPUs = tensor parallel size by default; RDMA resource; CPU/memory from the spec.
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert c["resources"]["limits"]["rdma/ib"] == 2
    assert c["resources"]["requests"]["cpu"] == "8"
    assert c["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert c["securityContext"]["privileged"] is False
    assert (
        svc["spec"]["ports"][0]["port"] == 30000 and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    )


def test_trainer_statefulset_and_headless_service() -> None:
    children = build_children(make_ctx(PROD))
    sts = find(children, "StatefulSet", "trainer")
    svc = find(children, "Service", "trainer")
    names = child_names("demo")
    spec = sts["spec"]
    assert spec["replicas"] == 2 and spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["serviceName"] == names.trainer == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in svc["spec"]["ports"]} == {29500, 9400}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == names.service_account
    assert pod["terminationGracePeriodSeconds"] == 300
    (c,) = pod["containers"]
    script = c["command"][2]
    assert c["command"][:2] == ["/bin/sh", "-c"]
    assert "torchrun --nnodes 2 --nproc-per-node 8" in script
    assert "--master-addr demo-trainer-0.demo-trainer.ns.svc --master-port 29500" in script
    assert '--node-rank "$rank"' in script
    assert "-m dspark_trainer.cli train --config /etc/dspark/job.yaml" in script
    env = env_of(c)
    assert env["DSPARK_JOB_CONFIG"] == "/etc/dspark/job.yaml"
    assert not [k for k in env if k.startswith("MOONCAKE_") or k in ("DSPARK_JOB_NAME", "DSPARK_JOB_NAMESPACE")]
    assert env["DSPARK_POD_INDEX"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert env["NCCL_IB_HCA"] == "mlx5_0"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8 and c["resources"]["limits"]["rdma/ib"] == 2
    assert c["resources"]["limits"]["memory"] == "512Gi" and c["resources"]["requests"]["cpu"] == 32
    assert c["securityContext"] == {
        "privileged": False, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    }
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["output"]["persistentVolumeClaim"] == {"claimName": "out"}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    assert vols["config"]["configMap"]["name"] == names.config


def test_scheduling_on_every_workload_and_no_kueue_label() -> None:
    children = build_children(make_ctx(PROD))
    for m in children:
        # A queued job is one Kueue Workload (dspark_operator.queueing); Kueue's pod integrations must not see it.
        assert "kueue.x-k8s.io/queue-name" not in m["metadata"]["labels"]
        if m["kind"] not in ("Deployment", "StatefulSet"):
            continue
        tmpl = m["spec"]["template"]
        assert "kueue.x-k8s.io/queue-name" not in tmpl["metadata"]["labels"]
        pod = tmpl["spec"]
        assert pod["nodeSelector"] == {"gpu": "h100"}
        assert pod["priorityClassName"] == "high" and pod["schedulerName"] == "volcano"
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_tcp_transport_and_cpu_only_trainer() -> None:
    ctx = make_ctx(
        {"transport": {"protocol": "tcp"}, "trainer": {"gpusPerNode": 0, "nodes": 1}, "inference": {"gpus": 0}}
    )
    children = build_children(ctx)
    for m in children:
        if m["kind"] in ("Deployment", "StatefulSet"):
            for c in m["spec"]["template"]["spec"]["containers"]:
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    assert "rdma/hca" not in res.get(part, {})
                    assert "nvidia.com/gpu" not in res.get(part, {})
                assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
                assert c["securityContext"]["privileged"] is False
    script = find(children, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "--nproc-per-node 1" in script


def test_scaled_down_children_have_zero_replicas() -> None:
    children = build_children(make_ctx(PROD), scaled_up=False)
    for m in children:
        if m["kind"] in ("Deployment", "StatefulSet"):
            assert m["spec"]["replicas"] == 0


def test_config_map_holds_a_valid_trainer_config() -> None:
    cm = find(build_children(make_ctx(PROD)), "ConfigMap")
    config = JobConfig.model_validate(yaml.safe_load(cm["data"]["job.yaml"]))
    assert config.target.model == "/models/q"
    assert config.dataset.path == "/data/x.jsonl"
    assert config.capture.endpoints == ["http://demo-inference.ns.svc:30000"]
    assert config.transport.master_address == "demo-mooncake.ns.svc:50051"
    assert config.transport.metadata_server == "http://demo-mooncake.ns.svc:8080/metadata"
    assert config.transport.protocol == "rdma"
    assert config.output_dir == "/output/draft" and config.checkpoint.dir == "/output/checkpoints"
    assert config.metrics.port == 9400


def test_rbac_allows_only_this_jobs_status() -> None:
    children = build_children(make_ctx(PROD))
    role = find(children, "Role")
    binding = find(children, "RoleBinding")
    sa = find(children, "ServiceAccount")
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["dspark.io"] and rule["resourceNames"] == ["demo"]
        assert "delete" not in rule["verbs"] and "update" not in rule["verbs"]
    status_rule = next(r for r in role["rules"] if r["resources"] == ["dsparktrainingjobs/status"])
    assert "patch" in status_rule["verbs"]
    spec_rule = next(r for r in role["rules"] if r["resources"] == ["dsparktrainingjobs"])
    assert spec_rule["verbs"] == ["get"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ns"}]


def test_builders_are_deterministic_and_needs_apply() -> None:
    a = build_children(make_ctx(PROD))
    b = build_children(make_ctx(PROD))
    assert a == b
    sts = find(a, "StatefulSet")
    assert needs_apply(sts, None)
    # As the API server returns it: what was applied, with defaults and fields of its own added.
    existing = copy.deepcopy(sts)
    existing["metadata"].update(uid="u", resourceVersion="7", annotations={**sts["metadata"]["annotations"], "x": "y"})
    existing["spec"]["revisionHistoryLimit"] = 10
    container = existing["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["env"][1]["valueFrom"]["fieldRef"]["apiVersion"] = "v1"
    assert not needs_apply(sts, existing)
    existing["spec"]["replicas"] = 0  # scaled down through /scale, then resumed
    assert needs_apply(sts, existing)
    existing["spec"]["replicas"] = sts["spec"]["replicas"]
    container["image"] = "edited/by-hand:1"  # a hand edit the hash annotation does not show
    assert needs_apply(sts, existing)
    changed = find(build_children(make_ctx({**PROD, "trainer": {**PROD["trainer"], "nodes": 4}})), "StatefulSet")
    assert (
        changed["metadata"]["annotations"][ANNOTATION_SPEC_HASH] != sts["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    )


def _trainer_script() -> str:
    sts = find(build_children(make_ctx(PROD)), "StatefulSet")
    command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    return str(command[2])


def _fake_torchrun(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "torchrun"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "DSPARK_POD_NAME": "demo-trainer-3", "OUT": str(tmp_path / "out")}


def test_trainer_pod_command_rank_and_exit_codes(tmp_path: Path) -> None:
    """The pod's shell entry point, run for real with a fake torchrun."""
    env = _fake_torchrun(tmp_path, 'echo "$@" > "$OUT"\nexit "${FAKE_RC:-0}"\n')
    failed = subprocess.run(["/bin/sh", "-c", _trainer_script()], env={**env, "FAKE_RC": "3"}, timeout=30)
    assert failed.returncode == 3  # a failed run exits non-zero (the operator then restarts the gang)
    args = (tmp_path / "out").read_text().split()
    assert args[args.index("--node-rank") + 1] == "3"  # from the pod name when the pod-index label is absent
    assert args[args.index("--nnodes") + 1] == "2"
    with_index = subprocess.run(
        ["/bin/sh", "-c", _trainer_script()], env={**env, "FAKE_RC": "1", "DSPARK_POD_INDEX": "1"}, timeout=30
    )
    assert with_index.returncode == 1
    args = (tmp_path / "out").read_text().split()
    assert args[args.index("--node-rank") + 1] == "1"


def test_trainer_pod_idles_after_success_and_forwards_sigterm(tmp_path: Path) -> None:
    env = _fake_torchrun(tmp_path, 'echo "$@" > "$OUT"\nexit 0\n')
    log = tmp_path / "stdout"
    with open(log, "w") as stdout:
        proc = subprocess.Popen(["/bin/sh", "-c", _trainer_script()], env=env, stdout=stdout)
    deadline = time.monotonic() + 20
    while "training finished" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "idle until the operator scales the trainer down" in log.read_text()
    assert proc.poll() is None, "a finished run must not exit (restartPolicy: Always would rerun it)"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0

    marker = tmp_path / "checkpointed"
    second = tmp_path / "second"
    second.mkdir()
    body = f"trap 'touch {marker}; exit 143' TERM\ntouch \"$OUT\"\nwhile :; do sleep 0.1; done\n"
    env = _fake_torchrun(second, body)
    proc = subprocess.Popen(["/bin/sh", "-c", _trainer_script()], env=env)
    while not Path(env["OUT"]).exists() and time.monotonic() < deadline + 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) != 0
    assert marker.exists(), "SIGTERM reaches torchrun (the trainer checkpoints on it)"
