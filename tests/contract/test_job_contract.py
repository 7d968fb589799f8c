"""The pod contract: a job rendered by the real operator builders, its ConfigMap handed to each role's own
loader exactly as its pod gets it (the ConfigMap volume + the env the operator sets), and every role must
see the same transport, master address, segment sizes, layer ids, batch shape and paths. Also: the CRD
spec, the rendered config and the loaders share their defaults."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from contract_helpers import containers, find, mount_config_map, render, rendered_config, write_target_config
from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_trainer.capture import sglang_plugin
from dspark_trainer.cli import build_parser
from dspark_trainer.commands import capture_server, mooncake_master
from dspark_trainer.config import (
    JOB_CONFIG_ENV,
    CaptureClientConfig,
    CheckpointConfig,
    DatasetConfig,
    DraftOptions,
    EvalConfig,
    InferenceConfig,
    JobConfig,
    MetricsConfig,
    OptimizerConfig,
    ScheduleConfig,
    TransportConfig,
    load_job_config,
)
from dspark_trainer.target_resolution import target_layer_ids
from pydantic import BaseModel


def job_spec(target: Path, engine: str, **transport: Any) -> dict[str, Any]:
    return {
        "target": {"model": str(target), "dtype": "bfloat16"},
        "draft": {"numTargetLayersCaptured": 4},
        "dataset": {"path": "/data/train.jsonl", "maxLength": 1024},
        "inference": {"engine": engine, "replicas": 2, "port": 31000},
        "trainer": {
            "nodes": 2, "gpusPerNode": 4,
            "schedule": {"microBatchSize": 2, "globalBatchSize": 64},
            "output": {"claimName": "out", "mountPath": "/work", "draftDir": "draft-v1", "checkpointDir": "ckpt"},
        },
        "transport": {"protocol": "tcp", "globalSegmentSize": 2 * 1024**3, "localBufferSize": 256 * 1024**2,
                      **transport},
    }


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def role_views(children: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Load the job config in every role the way its pod does, and return what each one sees."""
    pods = containers(children)
    views: dict[str, Any] = {}
    # Trainer pods: `torchrun ... -m dspark_trainer.cli train --config <path>`; the trainer's loader.
    trainer = pods["trainer"]
    env = mount_config_map(children, trainer, tmp_path / "trainer")
    script = trainer["command"][2]
    config_arg = shlex.split(script.split("train --config", 1)[1].split("&", 1)[0])[0]
    env_path = next(e["value"] for e in trainer["env"] if e["name"] == JOB_CONFIG_ENV)
    assert config_arg == "/etc/dspark/job.yaml" == env_path
    config = load_job_config(env[JOB_CONFIG_ENV])
    views["trainer"] = {
        "transport": config.transport, "layer_ids": target_layer_ids(config), "schedule": config.schedule,
        "paths": (config.checkpoint.dir, config.output_dir), "endpoints": config.capture.endpoints,
        "server_api": config.capture_server_api, "job": config.job,
    }
    # Capture-server pods: `dspark capture-server --config <path>`.
    capture = pods["inference"]
    env = mount_config_map(children, capture, tmp_path / "capture")
    assert capture["command"][:2] == ["dspark", "capture-server"]
    args = parse(["capture-server", *capture["command"][2:]])
    args.config = env[JOB_CONFIG_ENV]
    config = load_job_config(args.config)
    if config.inference.engine == "reference":
        plan = capture_server.plan_from_job(config, args)
        views["capture"] = {"transport": plan.transport, "layer_ids": plan.layer_ids, "port": plan.port,
                            "max_seq_len": plan.max_seq_len}
    else:
        command = capture_server.sglang_command(config)
        ids = command[command.index("--return-aux-hidden-state-layer-ids") + 1:]
        ids = ids[: next((i for i, a in enumerate(ids) if a.startswith("--")), len(ids))]
        # The plugin inside SGLang's schedulers reads $DSPARK_JOB_CONFIG (set by the capture server).
        sglang_env = capture_server.sglang_env(Path(env[JOB_CONFIG_ENV]), base={})
        monkeypatch.setenv(JOB_CONFIG_ENV, sglang_env[JOB_CONFIG_ENV])
        views["capture"] = {"transport": sglang_plugin.load_transport_config(), "layer_ids": [int(i) for i in ids],
                            "port": int(command[command.index("--port") + 1]),
                            "max_seq_len": int(command[command.index("--context-length") + 1])}
    # The Mooncake master pod: `dspark mooncake-master --config <path>`.
    master = pods["mooncake-master"]
    env = mount_config_map(children, master, tmp_path / "master")
    args = parse(["mooncake-master", *master["command"][2:]])
    monkeypatch.setattr("dspark_trainer.transport.master.find_master_binary", lambda: "mooncake_master")
    command = mooncake_master.master_command(env[JOB_CONFIG_ENV], args.host)
    flags = dict(a.removeprefix("--").split("=", 1) for a in command[1:])
    views["master"] = {"rpc_port": int(flags["rpc_port"]), "metadata_port": int(flags["http_metadata_server_port"]),
                       "ports": {p["name"]: p["containerPort"] for p in master["ports"]}}
    return views


@pytest.mark.parametrize("engine", ["reference", "sglang"])
def test_every_role_sees_the_same_job(engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_target_config(tmp_path / "target", num_layers=28)
    children = render(job_spec(target, engine, deviceNames="mlx5_0", keyTtlSeconds=120))
    views = role_views(children, tmp_path, monkeypatch)
    trainer, capture, master = views["trainer"], views["capture"], views["master"]

    # Transport: the same master address, protocol, devices and sizes in both Mooncake clients.
    assert trainer["transport"] == capture["transport"]
    t: TransportConfig = trainer["transport"]
    assert t.master_address == "demo-mooncake.ns.svc:50051"
    assert t.metadata_server == "http://demo-mooncake.ns.svc:8080/metadata"
    assert (t.protocol, t.device_names, t.key_ttl_seconds) == ("tcp", "mlx5_0", 120)
    assert (t.global_segment_size, t.local_buffer_size) == (2 * 1024**3, 256 * 1024**2)
    # The master listens exactly where the clients connect, and its container and Service expose those ports.
    assert master["rpc_port"] == t.master_rpc_port == master["ports"]["rpc"]
    assert master["metadata_port"] == t.master_metadata_port == master["ports"]["http-metadata"]
    svc = find(children, "Service", "mooncake-master")
    assert {p["port"] for p in svc["spec"]["ports"]} == set(master["ports"].values())

    # Layer ids: the trainer trains on the layers the capture server captures (default rule, 4 of 28).
    assert trainer["layer_ids"] == capture["layer_ids"] == [1, 9, 17, 25]
    # Capture endpoint and HTTP contract: the inference Service on the server's port, in its engine's API.
    inference_svc = find(children, "Service", "inference")
    assert trainer["endpoints"] == [f"http://demo-inference.ns.svc:{inference_svc['spec']['ports'][0]['port']}"]
    assert capture["port"] == 31000 == inference_svc["spec"]["ports"][0]["port"]
    assert trainer["server_api"] == ("sglang" if engine == "sglang" else "dspark")
    # Batch shape and sequence length: what the trainer sends fits what the servers accept.
    s = trainer["schedule"]
    assert (s.micro_batch_size, s.global_batch_size) == (2, 64)
    assert capture["max_seq_len"] == 1024 + 1
    # Paths on the output volume, and the job the trainer reports to.
    assert trainer["paths"] == ("/work/ckpt", "/work/draft-v1")
    assert (trainer["job"].name, trainer["job"].namespace) == ("demo", "ns")


def test_pods_get_only_the_contract_env(tmp_path: Path) -> None:
    """One env var names the job config; nothing else of the job travels in the environment."""
    target = write_target_config(tmp_path / "target")
    for engine in ("reference", "sglang"):
        for component, c in containers(render(job_spec(target, engine))).items():
            names = {e["name"] for e in c.get("env", [])}
            assert JOB_CONFIG_ENV in names, component
            leftovers = {n for n in names if n.startswith("MOONCAKE_") or n in ("DSPARK_CONFIG", "POD_IP")}
            assert not leftovers, (component, leftovers)
            assert names <= {JOB_CONFIG_ENV, "DSPARK_POD_IP", "DSPARK_POD_NAME", "DSPARK_POD_INDEX", "HF_TOKEN"}, names


def _field_defaults(model: type[BaseModel]) -> dict[str, Any]:
    out = {}
    for name, info in model.model_fields.items():
        value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
        out[name] = value.model_dump() if isinstance(value, BaseModel) else value
    return out


SHARED_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("draft", DraftOptions),
    ("dataset", DatasetConfig),
    ("inference", InferenceConfig),
    ("transport", TransportConfig),
    ("trainer.optimizer", OptimizerConfig),
    ("trainer.schedule", ScheduleConfig),
    ("trainer.eval", EvalConfig),
    ("trainer.capture", CaptureClientConfig),
    ("trainer.checkpoint", CheckpointConfig),
    ("metrics", MetricsConfig),
]


@pytest.mark.parametrize(("path", "config_model"), SHARED_SECTIONS, ids=[p for p, _ in SHARED_SECTIONS])
def test_crd_and_job_config_share_defaults(path: str, config_model: type[BaseModel]) -> None:
    """Every field the CRD section and the job config section both have has one default."""
    spec_model: Any = DSparkTrainingJobSpec
    for part in path.split("."):
        annotation = spec_model.model_fields[part].annotation
        spec_model = annotation
    spec_defaults, config_defaults = _field_defaults(spec_model), _field_defaults(config_model)
    shared = set(spec_defaults) & set(config_defaults) - {"path", "dir"}
    assert shared, path
    differ = {k: (spec_defaults[k], config_defaults[k]) for k in shared if spec_defaults[k] != config_defaults[k]}
    assert not differ, f"spec.{path} vs {config_model.__name__}: {differ}"


def test_committed_crd_defaults_are_the_job_configs(tmp_path: Path) -> None:
    """The defaults the API server fills in (the committed CRD) are the job config's own."""
    crd_file = Path(__file__).resolve().parents[2] / "crds" / "dsparktrainingjobs.dspark.io.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    spec_props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    checks = {
        ("transport", "protocol"): TransportConfig.model_fields["protocol"].default,
        ("transport", "globalSegmentSize"): TransportConfig.model_fields["global_segment_size"].default,
        ("transport", "localBufferSize"): TransportConfig.model_fields["local_buffer_size"].default,
        ("transport", "keyTtlSeconds"): TransportConfig.model_fields["key_ttl_seconds"].default,
        ("inference", "engine"): InferenceConfig.model_fields["engine"].default,
        ("inference", "port"): InferenceConfig.model_fields["port"].default,
    }
    for (section, field), want in checks.items():
        assert spec_props[section]["properties"][field]["default"] == want, (section, field)
    # A minimal job renders the job config's defaults for everything the user did not set.
    target = write_target_config(tmp_path / "t")
    rendered = JobConfig.from_mapping(rendered_config(render({"target": {"model": str(target)}})))
    default = JobConfig(target=rendered.target, dataset=rendered.dataset)
    for section in ("draft", "optimizer", "schedule", "eval"):
        assert getattr(rendered, section) == getattr(default, section), section
    for field in ("global_segment_size", "local_buffer_size", "key_ttl_seconds", "device_names"):
        assert getattr(rendered.transport, field) == getattr(default.transport, field), field
    assert rendered.transport.protocol == "tcp"  # auto, decided by the operator: no RDMA resources known
