"""The DSparkTrainingJob API: spec/status models, the generated CRD and spec checks."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dspark_operator import crdgen
from dspark_operator.api import parse_job
from dspark_operator.api.job import parse_spec
from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_operator.api.status import DSparkTrainingJobStatus
from operator_helpers import assert_invalid, job_body, make_job

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / crdgen.CRD_FILE_NAME


def _walk(schema: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}.*")


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.build_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crdgen.render(), "run: python -m dspark_operator.crdgen --write"
    assert crdgen.main(["--check", "--output", str(CRD_FILE)]) == 0


def test_crd_names_scope_and_subresources(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "dsparktrainingjobs.dspark.io"
    assert spec["group"] == "dspark.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "DSparkTrainingJob"
    assert spec["names"]["plural"] == "dsparktrainingjobs"
    assert spec["names"]["shortNames"] == ["dsj"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Step"]["jsonPath"] == ".status.progress.step"
    assert columns["Loss"]["jsonPath"] == ".status.progress.loss"
    assert columns["Tau"]["jsonPath"] == ".status.progress.tau"
    assert columns["Age"]["type"] == "date"


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, f"{path}: anyOf only for int-or-string"
        if path not in ("", "metadata"):
            assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            # Free-form: template variables, a copy of a spec, and the Pod API objects of the pod templates
            # (checked by the API server's dry run).
            free_form = path in ("spec.dataset.chatTemplateKwargs", "status.acceptedSpec") or path.endswith(
                ("odTemplate.spec.affinity", "odTemplate.spec.volumes[]")
            )
            assert free_form, f"{path}: unknown fields kept"
        assert "exclusiveMinimum" not in node or isinstance(node["exclusiveMinimum"], bool), path


def test_every_field_is_documented(schema: dict[str, Any]) -> None:
    assert crdgen.check_descriptions(schema) == []
    draft = schema["properties"]["spec"]["properties"]["draft"]["properties"]
    assert "Tokens drafted per block" in draft["blockSize"]["description"]


def test_spec_sections_required_fields_defaults_enums_and_ranges(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    assert set(spec["properties"]) == {
        "target",
        "draft",
        "dataset",
        "inference",
        "trainer",
        "transport",
        "runPolicy",
        "scheduling",
        "metrics",
        "evaluation",
    }
    assert set(spec["required"]) == {"target", "dataset"}
    props = spec["properties"]
    assert props["target"]["required"] == ["model"]
    assert props["draft"]["properties"]["blockSize"]["default"] == 7
    assert props["transport"]["properties"]["protocol"]["enum"] == ["auto", "rdma", "tcp"]
    assert props["transport"]["properties"]["protocol"]["default"] == "auto"
    assert props["trainer"]["properties"]["nodes"]["minimum"] == 1
    assert props["runPolicy"]["properties"]["backoffLimit"]["minimum"] == 0
    # Nested sections default to their fully defaulted object (so CEL rules see every field).
    assert props["draft"]["default"]["markovRank"] == 256
    assert props["trainer"]["default"]["nodes"] == 1
    assert props["trainer"]["properties"]["optimizer"]["default"]["learningRate"] == pytest.approx(6e-4)
    quantity = props["inference"]["properties"]["shmSize"]
    assert quantity["x-kubernetes-int-or-string"] is True and "pattern" in quantity


def test_immutable_fields_have_transition_rules(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert {"rule": "self == oldSelf", "message": "target.model is immutable"} in spec["target"]["properties"]["model"][
        "x-kubernetes-validations"
    ]
    for field in ("blockSize", "numDraftLayers", "markovRank", "markovHeadType"):
        rules = spec["draft"]["properties"][field]["x-kubernetes-validations"]
        assert any(r["rule"] == "self == oldSelf" for r in rules), field
    draft_rules = [r["rule"] for r in spec["draft"]["x-kubernetes-validations"]]
    assert any("oldSelf.targetLayerIds" in r for r in draft_rules)
    assert any("isSorted" in r for r in draft_rules)
    assert spec["draft"]["properties"]["targetLayerIds"]["x-kubernetes-list-type"] == "set"
    # trainer.nodes may change (the operator restarts the gang on the new template).
    assert "x-kubernetes-validations" not in spec["trainer"]["properties"]["nodes"]


def test_status_schema(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [
        "Pending",
        "Queued",
        "Starting",
        "Regenerating",
        "Running",
        "Suspended",
        "Succeeded",
        "Failed",
    ]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    progress = status["progress"]["properties"]
    for field in (
        "step",
        "total",
        "epoch",
        "samples",
        "loss",
        "tau",
        "acceptRate",
        "lastCheckpoint",
        "throughput",
        "updatedTime",
        "state",
        "checkpointAck",
        "draftPath",
    ):
        assert field in progress, field
    assert progress["state"]["enum"] == ["Starting", "Running", "Checkpointed", "Completed", "Failed"]
    for key in ("observedGeneration", "startTime", "completionTime", "restarts", "draftPath"):
        assert key in status
    assert all("default" not in node for _, node in _walk(schema["properties"]["status"]))


def test_committed_examples_validate() -> None:
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            job = parse_job(doc)
            assert job.invalid is None, f"{path.name}: {job.invalid}"


def test_minimal_spec_defaults() -> None:
    spec = DSparkTrainingJobSpec.model_validate(job_body()["spec"])
    assert spec.trainer.nodes == 1 and spec.trainer.gpus_per_node == 8
    assert spec.inference.replicas == 1 and spec.transport.protocol == "auto"
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.suspend is False
    assert spec.draft.block_size == 7


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (
            {"trainer": {"nodes": 2, "gpusPerNode": 8, "schedule": {"globalBatchSize": 24}}},
            "spec.trainer.schedule.globalBatchSize",
            "multiple",
        ),
        ({"inference": {"extraArgs": ["--tp-size=4"]}}, "spec.inference.extraArgs[0]", "set by the operator"),
        ({"trainer": {"env": [{"name": "MOONCAKE_MASTER", "value": "x"}]}}, "spec.trainer.env[0].name", "reserved"),
        ({"draft": {"targetLayerIds": [3, 2]}}, "spec.draft.targetLayerIds", "strictly increasing"),
        ({"trainer": {"nodes": 0}}, "spec.trainer.nodes", "greater than or equal to 1"),
        ({"transport": {"protocol": "carrier-pigeon"}}, "spec.transport.protocol", "rdma"),
        ({"inference": {"resources": {"limits": {"memory": "lots"}}}}, "spec.inference.resources.limits", "quantity"),
        ({"trainer": {"output": {"draftDir": "x", "checkpointDir": "x"}}}, "spec.trainer.output.draftDir", "inside"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    assert_invalid(spec, field, words)


def test_invalid_name_and_missing_spec() -> None:
    job = make_job(name="x" * 41)
    assert job.invalid is not None and job.invalid.field == "metadata.name"
    spec, invalid = parse_spec("ok", None)
    assert spec is None and invalid is not None and invalid.field == "spec"


def test_unreadable_status_is_dropped_not_fatal() -> None:
    body = job_body(status={"phase": "Running", "restarts": "many", "conditions": "nope", "progress": {"step": 3}})
    job = parse_job(body)
    assert job.status.phase == "Running"
    assert job.status.restarts == 0 and job.status.conditions == []
    assert job.status.progress is not None and job.status.progress.step == 3
    assert DSparkTrainingJobStatus.model_validate({"phase": "Running", "future": 1}).phase == "Running"


def test_operator_cli_help() -> None:
    from harness.operator_process import operator_command

    out = subprocess.run([*operator_command(), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--namespace" in out and "--metrics-port" in out
