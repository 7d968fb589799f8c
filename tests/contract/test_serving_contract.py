"""What a job must say for its draft to be servable: target layer -1 needs the reference capture engine
(SGLang neither captures nor serves it), and the export options reach the trainer's job config."""

from __future__ import annotations

import pytest
from contract_helpers import operator_helpers, render, rendered_config
from dspark_trainer.config import JobConfig
from dspark_trainer.config.training import ConfigError


def job(engine: str, layer_ids: list[int]) -> dict[str, object]:
    return {"target": {"model": "/models/t"}, "dataset": {"path": "/data/x.jsonl"},
            "draft": {"targetLayerIds": layer_ids}, "inference": {"engine": engine}}


def test_layer_minus_one_is_refused_with_the_sglang_engine() -> None:
    with pytest.raises(ConfigError, match=r"draft.targetLayerIds \[-1, 4\].*inference.engine: reference"):
        JobConfig.from_mapping(job("sglang", [-1, 4]))
    assert JobConfig.from_mapping(job("reference", [-1, 4])).draft.target_layer_ids == [-1, 4]
    assert JobConfig.from_mapping(job("sglang", [0, 4])).draft.target_layer_ids == [0, 4]


def test_the_operator_refuses_such_a_job_at_validation() -> None:
    operator_helpers.assert_invalid({"draft": {"targetLayerIds": [-1, 9, 17]}}, "spec", "embedding output (-1)")
    ok = operator_helpers.make_job({"draft": {"targetLayerIds": [-1, 9, 17]}, "inference": {"engine": "reference"}})
    assert ok.spec is not None, ok.invalid


def test_the_export_options_reach_the_trainer() -> None:
    default = rendered_config(render({}))
    assert JobConfig.from_mapping(default).export.model_dump(exclude_none=True) == {
        "dtype": "bfloat16", "include_frozen_weights": False}
    chosen = rendered_config(render({"trainer": {"export": {"dtype": "float32", "includeFrozenWeights": True}}}))
    assert chosen["export"] == {"dtype": "float32", "includeFrozenWeights": True}


def test_the_publish_destination_and_its_secret_reach_the_trainer() -> None:
    spec = {"trainer": {"export": {"destination": "s3://drafts/team-a", "s3EndpointUrl": "http://minio:9000",
                                   "credentialsSecret": "s3-creds"}}}
    manifests = render(spec)
    export = JobConfig.from_mapping(rendered_config(manifests)).export
    assert (export.destination, export.s3_endpoint_url) == ("s3://drafts/team-a", "http://minio:9000")
    assert export.credentials_dir == "/var/run/dspark/publish-credentials"
    (sts,) = [m for m in manifests if m["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    assert {"name": "publish-credentials", "secret": {"secretName": "s3-creds", "defaultMode": 0o440}} in pod["volumes"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "publish-credentials"]
    assert mount == {"name": "publish-credentials", "mountPath": export.credentials_dir, "readOnly": True}

