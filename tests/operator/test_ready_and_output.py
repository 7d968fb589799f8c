"""The Ready condition (a pure summary of the others) and the output volume rule (a claim, or ephemeral: true)."""

from __future__ import annotations

from dspark_operator.api.status import DSparkTrainingJobStatus
from dspark_operator.status import Observed, decide, readiness
from operator_helpers import NOW, assert_invalid, make_job, observed_up


def _ready(decision_status: DSparkTrainingJobStatus) -> tuple[str, str]:
    cond = decision_status.condition("Ready")
    assert cond is not None
    return cond.status, cond.reason


def test_ready_when_everything_runs() -> None:
    d = decide(make_job(), observed_up(1), NOW)
    assert _ready(d.status) == ("True", "AllReady")
    assert not [e for e in d.events if e.reason == "AllReady"], "Ready is a summary: no events of its own"


def test_not_ready_names_the_first_missing_part() -> None:
    up = observed_up(1)
    d = decide(make_job(), Observed(), NOW)
    assert _ready(d.status) == ("False", "TransportNotReady")
    no_inference = Observed(mooncake=up.mooncake, inference=None, trainer=up.trainer, trainer_pods=up.trainer_pods)
    d = decide(make_job(), no_inference, NOW)
    assert _ready(d.status) == ("False", "InferenceNotReady")
    assert "0/1 inference replicas ready" in (d.status.condition("Ready").message or "")  # type: ignore[union-attr]


def test_not_ready_when_suspended_finished_or_rejected() -> None:
    status = DSparkTrainingJobStatus.model_validate({"phase": "Succeeded"})
    assert readiness(status)[:2] == (False, "Succeeded")
    running = decide(make_job(), observed_up(1), NOW).status
    assert readiness(running)[:2] == (True, "AllReady")
    rejected = running.model_copy(deep=True)
    rejected.conditions.append(rejected.conditions[0].model_copy(update={"type": "SpecRejected", "status": "True"}))
    assert readiness(rejected)[:2] == (False, "SpecRejected")
    d = decide(make_job({"runPolicy": {"suspend": True}}), Observed(), NOW)
    assert _ready(d.status)[0] == "False"


def test_output_needs_a_claim_or_ephemeral() -> None:
    assert_invalid({"trainer": {"output": {"ephemeral": False}}}, "spec.trainer.output.claimName", "ephemeral: true")
    assert_invalid(
        {"trainer": {"output": {"ephemeral": True, "claimName": "out"}}}, "spec.trainer.output.ephemeral", "drop one"
    )
    d = decide(make_job({"trainer": {"output": {"ephemeral": True}}}), observed_up(1), NOW)
    cond = d.status.condition("OutputPersistent")
    assert cond is not None and cond.status == "False" and "ephemeral is true" in cond.message
    assert any(e.type == "Warning" and e.reason == "EmptyDir" for e in d.events)
    claimed = decide(make_job({"trainer": {"output": {"claimName": "out"}}}), observed_up(1), NOW)
    assert claimed.status.condition("OutputPersistent").status == "True"  # type: ignore[union-attr]
