"""The target is resolved in one place (``dspark_trainer.target_resolution``) for the operator's checks and every
role of the trainer, with ``target.revision`` pinned. Offline: the hub download is a fake that records what it
was asked for and serves a config of the target's published depth."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import yaml
from contract_helpers import REPO, render, rendered_config, write_target_config
from dspark_operator.api import parse_job
from dspark_operator.api.checks import check_target_layers
from dspark_operator.status import Observed, decide
from dspark_trainer.config import ConfigError, JobConfig, TargetConfig
from dspark_trainer.target_resolution import KNOWN_TARGET_LAYERS, resolve_target_dir, target_layer_ids
from operator_helpers import NOW, job_body

Calls = list[tuple[str, str | None]]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls: Calls = []
    depth = {"qwen/qwen3-8b@odd": 40}

    def snapshot_download(*, repo_id: str, revision: str | None = None, **_: object) -> str:
        calls.append((repo_id, revision))
        if revision == "missing":
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"no cached {repo_id} at {revision} (offline)")
        key = repo_id.lower()
        layers = depth.get(f"{key}@{revision}", KNOWN_TARGET_LAYERS.get(key, 8))
        return str(write_target_config(tmp_path / "hub" / key.replace("/", "--") / (revision or "main"), layers))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def minimal_spec(revision: str | None) -> dict[str, object]:
    body = yaml.safe_load((REPO / "examples" / "minimal-job.yaml").read_text())
    spec: dict[str, object] = body["spec"]
    if revision is not None:
        spec["target"] = {**body["spec"]["target"], "revision": revision}
    return spec


@pytest.mark.parametrize("revision", [None, "0123abcd"])
def test_minimal_example_resolves_the_same_in_the_operator_and_the_trainer(hub: Calls, revision: str | None) -> None:
    spec = minimal_spec(revision)
    config = JobConfig.model_validate(rendered_config(render(spec)))
    assert (config.target.model, config.target.revision) == ("Qwen/Qwen3-8B", revision)
    ids = target_layer_ids(config)  # what the trainer's preflight and build and the capture servers use
    assert hub == [("Qwen/Qwen3-8B", revision)]  # the hub id, at the spec's revision
    job = parse_job(job_body(spec))
    assert job.spec is not None and check_target_layers(job.spec) is None
    checked = next(c for c in decide(job, Observed(), NOW).status.conditions if c.type == "TargetLayersChecked")
    assert checked.status == "True" and f"target layers {ids} fit" in checked.message


def test_the_trainer_builds_from_the_directory_it_resolved(hub: Calls) -> None:
    target = TargetConfig(model="acme/tiny", revision="v2")
    directory = resolve_target_dir(target)
    assert hub == [("acme/tiny", "v2")] and Path(directory, "config.json").is_file()
    assert resolve_target_dir(TargetConfig(model=directory, revision="v2")) == directory  # a directory is itself


def test_unresolvable_targets_name_the_fields(hub: Calls) -> None:
    with pytest.raises(ConfigError, match=r"target\.model: cannot resolve acme/tiny at target\.revision missing: "
                                          r"LocalEntryNotFoundError.*spec\.target\.model / spec\.target\.revision"):
        resolve_target_dir(TargetConfig(model="acme/tiny", revision="missing"))
    with pytest.raises(ConfigError, match=r"target\.model: /models/nope is neither a directory"):
        resolve_target_dir(TargetConfig(model="/models/nope"))
    assert hub == [("acme/tiny", "missing")]


def test_a_revision_deeper_than_the_operator_checked_is_refused(hub: Calls) -> None:
    config = JobConfig.model_validate(rendered_config(render(minimal_spec("odd"))))
    with pytest.raises(ConfigError, match=r"target\.revision: Qwen/Qwen3-8B@odd has 40 layers, not the 36"):
        target_layer_ids(config)
