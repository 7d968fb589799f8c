"""The trainer-side status reporter (no cluster: a fake REST client records the patches)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dspark_trainer.config.job import JobIdentity
from dspark_trainer.config.progress import progress_patch
from dspark_trainer.status_reporter import StatusReporter


class FakeResponse:
    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self._raw = json.dumps(payload).encode()

    def read(self) -> bytes:
        return self._raw


class FakeClient:
    """Mimics the two kubernetes.client.ApiClient methods the reporter uses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        self.fail = 0
        self.request_id: str | None = None

    def param_serialize(
        self, *, method: str, resource_path: str, header_params: dict[str, str], body: Any, auth_settings: list[str]
    ) -> tuple[Any, ...]:
        return (method, resource_path, dict(header_params), body)

    def call_api(
        self, method: str, path: str, headers: dict[str, str], body: Any, _request_timeout: float
    ) -> FakeResponse:
        self.calls.append((method, path, headers, body))
        if self.fail:
            self.fail -= 1
            return FakeResponse(500, {"message": "boom"})
        status: dict[str, Any] = {}
        if self.request_id:
            status["checkpointRequest"] = {
                "id": self.request_id,
                "reason": "Suspend",
                "requestedTime": "2026-01-01T00:00:00Z",
            }
        return FakeResponse(200, {"metadata": {"name": "j"}, "status": status})


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake() -> tuple[StatusReporter, FakeClient, Clock]:
    client, clock = FakeClient(), Clock()
    return StatusReporter("j", "ns", min_interval=10, api_client=client, clock=clock), client, clock


def test_for_job() -> None:
    job = JobIdentity(name="j", namespace="ns")
    assert StatusReporter.for_job(None) is None
    assert StatusReporter.for_job(job, env={"RANK": "3"}) is None
    r = StatusReporter.for_job(job, min_interval=2.5, env={"RANK": "0"})
    assert r is not None and (r.name, r.namespace, r.min_interval) == ("j", "ns", 2.5)
    assert r.path == "/apis/dspark.io/v1alpha1/namespaces/ns/dsparktrainingjobs/j/status"


def test_progress_patch_types_and_unknown_keys() -> None:
    out = progress_patch(
        {
            "step": 3.0,
            "loss": float("nan"),
            "tau": "2.5",
            "accept_rate": [0.5, float("inf")],
            "tokens_per_second": 10,
            "bogus": 1,
            "state": "Dancing",
            "lastCheckpoint": "/c",
        }
    )
    assert out == {
        "step": 3,
        "loss": None,
        "tau": 2.5,
        "acceptRate": [0.5, 0.0],
        "tokensPerSecond": 10.0,
        "lastCheckpoint": "/c",
    }


def test_throttled_merge_patches(fake: tuple[StatusReporter, FakeClient, Clock]) -> None:
    reporter, client, clock = fake
    assert reporter.report({"step": 1, "state": "Running"})
    assert not reporter.report({"step": 2, "loss": 3.0})
    assert not reporter.report(step=3)
    clock.t = 10.0
    assert reporter.report({"tau": 2.0})
    assert len(client.calls) == 2
    method, path, headers, body = client.calls[-1]
    assert method == "PATCH" and path.endswith("/dsparktrainingjobs/j/status")
    assert headers["Content-Type"] == "application/merge-patch+json"
    progress = body["status"]["progress"]
    assert progress["step"] == 3 and progress["loss"] == 3.0 and progress["tau"] == 2.0
    assert set(body) == {"status"} and set(body["status"]) == {"progress"}
    assert progress["updatedTime"].endswith("Z")


def test_state_changes_are_sent_at_once_and_failures_do_not_raise(
    fake: tuple[StatusReporter, FakeClient, Clock],
) -> None:
    reporter, client, _ = fake
    assert reporter.report({"state": "Running"})
    client.fail = 1
    assert not reporter.report({"state": "Failed", "message": "x"})  # failed patch: kept pending
    assert reporter.flush()
    assert client.calls[-1][3]["status"]["progress"]["state"] == "Failed"


def test_checkpoint_handshake(fake: tuple[StatusReporter, FakeClient, Clock]) -> None:
    reporter, client, clock = fake
    assert reporter.checkpoint_request() is None  # GET of the job
    assert client.calls[-1][0] == "GET" and client.calls[-1][1].endswith("/dsparktrainingjobs/j")
    client.request_id = "suspend-2-1"
    clock.t = 100
    assert reporter.checkpoint_request() == "suspend-2-1"
    assert reporter.checkpointed("/output/checkpoints/step-40", step=40)
    progress = client.calls[-1][3]["status"]["progress"]
    assert progress == progress | {
        "state": "Checkpointed",
        "checkpointAck": "suspend-2-1",
        "lastCheckpoint": "/output/checkpoints/step-40",
        "lastCheckpointStep": 40,
    }


def test_completed_retries(fake: tuple[StatusReporter, FakeClient, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    reporter, client, _ = fake
    monkeypatch.setattr("time.sleep", lambda s: None)
    client.fail = 2
    assert reporter.completed("/output/draft", step=100)
    progress = client.calls[-1][3]["status"]["progress"]
    assert progress["state"] == "Completed" and progress["draftPath"] == "/output/draft" and progress["step"] == 100


def test_progress_patch_fits_the_status_schema() -> None:
    from dspark_operator.api.status import DSparkTrainingJobStatus

    out = progress_patch(
        {
            "state": "Completed",
            "tau": -1.0,  # refused by the schema (minimum 0): dropped, the rest is kept
            "message": "x" * 10_000,
            "checkpoint_ack": "a" * 500,
            "accept_rate": list(range(100)),
            "updatedTime": "now",  # stamped by the reporter only
            "evaluation": {"prompt_set": "mt-bench", "tau": float("nan"), "speedup": 2, "bogus": 1},
        }
    )
    assert out["state"] == "Completed" and "tau" not in out and "updatedTime" not in out
    assert len(out["message"]) == 4096 and len(out["checkpointAck"]) == 128 and len(out["acceptRate"]) == 64
    assert out["evaluation"] == {"promptSet": "mt-bench", "speedup": 2.0}
    status = DSparkTrainingJobStatus.model_validate({"progress": out})
    assert status.progress is not None and status.progress.to_wire() == out
    assert progress_patch({"draft_path": None}) == {"draftPath": None}  # a merge patch's null clears the key
