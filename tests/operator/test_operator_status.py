"""Pure status computation: phases, conditions, gang restarts, suspend, deadline, TTL, completion."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dspark_operator.api import parse_job
from dspark_operator.reconcile import status_patch
from dspark_operator.status import Decision, Observed, Workloads, decide, pod_info
from operator_helpers import NOW, job_body, make_job, observed_up, pod


def step(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    observed: Observed | None = None,
    now: dt.datetime = NOW,
    generation: int = 1,
) -> Decision:
    job = make_job(spec, status=status, generation=generation)
    return decide(job, observed or Observed(), now)


def wire(decision: Decision) -> dict[str, Any]:
    return decision.status.to_wire()


def cond(decision: Decision, ctype: str) -> dict[str, Any]:
    for c in wire(decision)["conditions"]:
        if c["type"] == ctype:
            return dict(c)
    raise AssertionError(f"no condition {ctype} in {wire(decision)['conditions']}")


def run(
    spec: dict[str, Any] | None, observed: Observed, status: dict[str, Any] | None = None, now: dt.datetime = NOW
) -> tuple[Decision, dict[str, Any]]:
    d = step(spec, status, observed, now)
    return d, wire(d)


def running_status(nodes: int = 1, **extra: Any) -> dict[str, Any]:
    """The status after the gang of `nodes` pods came up."""
    spec = {"trainer": {"nodes": nodes, "gpusPerNode": 8, "schedule": {"globalBatchSize": 8 * nodes}}}
    _, st = run(spec, observed_up(nodes))
    st.update(extra)
    return st


def test_new_job_creates_children_and_is_pending() -> None:
    d, st = run(None, Observed())
    assert d.workloads is Workloads.UP
    assert st["phase"] == "Pending"
    assert st["startTime"] == "2026-01-01T12:00:00Z"
    assert st["observedGeneration"] == 1
    assert cond(d, "Created")["status"] == "True"
    assert cond(d, "Running")["status"] == "False"
    assert cond(d, "TrainerReady")["reason"] == "WaitingForGang"
    assert d.requeue_after is not None
    # OutputPersistent=False (no output claim: an emptyDir) is a Warning from the start.
    assert sorted(e.reason for e in d.events) == ["ChildrenApplied", "EmptyDir", "PhasePending"]
    assert [e.type for e in d.events if e.reason == "EmptyDir"] == ["Warning"]


def test_everything_up_is_running_with_the_gang_recorded() -> None:
    d, st = run(None, observed_up(1))
    assert st["phase"] == "Running"
    for ctype in ("Created", "InferenceReady", "TransportReady", "TrainerReady", "Running"):
        assert cond(d, ctype)["status"] == "True", ctype
        assert cond(d, ctype)["observedGeneration"] == 1
    assert st["gang"]["members"] == [{"name": "demo-trainer-0", "uid": "uid-0", "restartCount": 0}]
    assert st["restarts"] == 0
    assert d.delete_pods == []


def test_inference_not_ready_keeps_starting() -> None:
    obs = observed_up(1)
    obs = Observed(mooncake=obs.mooncake, inference=None, trainer=obs.trainer, trainer_pods=obs.trainer_pods)
    d, st = run({"inference": {"replicas": 2}}, obs)
    assert st["phase"] == "Starting"
    assert cond(d, "InferenceReady") | {"lastTransitionTime": ""} == {
        "type": "InferenceReady",
        "status": "False",
        "reason": "WaitingForReplicas",
        "message": "0/2 inference replicas ready",
        "lastTransitionTime": "",
        "observedGeneration": 1,
    }


def test_gang_not_recorded_until_every_pod_runs() -> None:
    spec = {"trainer": {"nodes": 2, "gpusPerNode": 8, "schedule": {"globalBatchSize": 16}}}
    obs = observed_up(2, pods=(pod(0), pod(1, phase="Pending", ready=False)))
    d, st = run(spec, obs)
    assert st["gang"]["members"] == []
    assert cond(d, "TrainerReady")["message"] == "1/2 trainer pods running"
    assert st["phase"] == "Starting"


def test_deleted_trainer_pod_restarts_the_whole_gang() -> None:
    spec = {"trainer": {"nodes": 2, "gpusPerNode": 8, "schedule": {"globalBatchSize": 16}}}
    status = running_status(2)
    # Pod 1 was deleted and the StatefulSet already made a new one (new uid).
    obs = observed_up(2, pods=(pod(0), pod(1, uid="uid-new")))
    d, st = run(spec, obs, status)
    assert d.gang_restart
    assert st["restarts"] == 1
    assert sorted(d.delete_pods) == [("demo-trainer-0", "uid-0"), ("demo-trainer-1", "uid-new")]
    assert sorted(st["gang"]["terminating"]) == ["uid-0", "uid-new"]
    assert st["gang"]["members"] == []
    restarting = cond(d, "Restarting")
    assert restarting["status"] == "True" and restarting["reason"] == "GangRestart"
    assert "demo-trainer-1 was replaced" in restarting["message"]
    assert st["phase"] == "Starting"
    assert any(e.type == "Warning" and e.reason == "GangRestart" for e in d.events)

    # Next pass: the old pods are still terminating, new ones not there yet: nothing new is counted.
    obs2 = observed_up(2, pods=(pod(0, deleting=True), pod(1, uid="uid-new", deleting=True)))
    d2, st2 = run(spec, obs2, st)
    assert st2["restarts"] == 1 and d2.delete_pods == [] and not d2.gang_restart
    # Then the fresh gang comes up: Restarting goes False, Running again.
    obs3 = observed_up(2, pods=(pod(0, uid="a"), pod(1, uid="b")))
    d3, st3 = run(spec, obs3, st2)
    assert st3["phase"] == "Running"
    assert cond(d3, "Restarting")["status"] == "False"
    assert st3["gang"]["terminating"] == [] and len(st3["gang"]["members"]) == 2
    assert st3["restarts"] == 1


def test_container_restart_and_missing_pod_are_failures() -> None:
    status = running_status(1)
    d, st = run(None, observed_up(1, pods=(pod(0, restarts=1),)), status)
    assert st["restarts"] == 1 and "restarted" in cond(d, "Restarting")["message"]
    d, st = run(None, observed_up(1, pods=()), status)
    assert st["restarts"] == 1 and "disappeared" in cond(d, "Restarting")["message"]
    # A crash before the gang ever ran counts too.
    d, st = run(None, observed_up(1, pods=(pod(0, restarts=2),)))
    assert st["restarts"] == 1 and d.gang_restart


def test_pod_deleted_by_us_but_still_there_is_deleted_again() -> None:
    status = running_status(1)
    status["gang"] = {"members": [], "terminating": ["uid-0"]}
    d, st = run(None, observed_up(1, pods=(pod(0),)), status)
    assert d.delete_pods == [("demo-trainer-0", "uid-0")]
    assert st["restarts"] == 0 and st["gang"]["members"] == []


def test_backoff_limit_exceeded_fails_and_scales_down() -> None:
    status = running_status(1, restarts=2)
    d, st = run({"runPolicy": {"backoffLimit": 2}}, observed_up(1, pods=(pod(0, uid="other"),)), status)
    assert st["phase"] == "Failed"
    assert d.workloads is Workloads.DOWN
    failed = cond(d, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "backoffLimit=2" in failed["message"]
    assert st["completionTime"] == "2026-01-01T12:00:00Z"
    assert cond(d, "Running")["status"] == "False"


def test_terminal_phases_are_sticky() -> None:
    status = running_status(1, restarts=2)
    _failed, st = run({"runPolicy": {"backoffLimit": 2}}, observed_up(1, pods=(pod(0, uid="x"),)), status)
    again, st2 = run({"runPolicy": {"backoffLimit": 2}}, Observed(), st, now=NOW + dt.timedelta(hours=1))
    assert again.workloads is Workloads.DOWN
    assert st2["phase"] == "Failed" and st2["completionTime"] == st["completionTime"]
    assert again.delete_pods == [] and again.events == []


def test_completion_succeeds_and_scales_down() -> None:
    status = running_status(1, progress={"state": "Completed", "step": 100, "draftPath": "/output/d"})
    d, st = run(None, observed_up(1), status)
    assert st["phase"] == "Succeeded"
    assert st["draftPath"] == "/output/d" and st["completionTime"] == "2026-01-01T12:00:00Z"
    assert d.workloads is Workloads.DOWN
    assert cond(d, "Succeeded")["status"] == "True"
    assert cond(d, "Running")["status"] == "False"
    # Without a path from the trainer, the configured output directory is used.
    status["progress"] = {"state": "Completed"}
    _, st = run(None, observed_up(1), status)
    assert st["draftPath"] == "/output/draft"


def test_completion_wins_over_a_restart_seen_at_the_same_time() -> None:
    status = running_status(1, progress={"state": "Completed"})
    d, st = run(None, observed_up(1, pods=(pod(0, restarts=1),)), status)
    assert st["phase"] == "Succeeded" and st["restarts"] == 0 and d.delete_pods == []


def test_trainer_reported_failure_fails_without_restart() -> None:
    status = running_status(1, progress={"state": "Failed", "message": "dataset is empty"})
    d, st = run(None, observed_up(1), status)
    assert st["phase"] == "Failed" and cond(d, "Failed")["reason"] == "TrainerFailed"
    assert "dataset is empty" in cond(d, "Failed")["message"]


def test_suspend_asks_for_a_checkpoint_then_scales_down() -> None:
    spec = {"runPolicy": {"suspend": True, "suspendTimeoutSeconds": 300}}
    status = running_status(1)
    d, st = run(spec, observed_up(1), status)
    assert d.workloads is Workloads.NONE
    req = st["checkpointRequest"]
    assert req["reason"] == "Suspend" and req["id"]
    assert cond(d, "Suspended")["status"] == "False" and cond(d, "Suspended")["reason"] == "CheckpointRequested"
    assert st["phase"] == "Running"
    # Still waiting (no ack): nothing changes.
    d2, st2 = run(spec, observed_up(1), st, now=NOW + dt.timedelta(seconds=30))
    assert d2.workloads is Workloads.NONE and st2["checkpointRequest"] == req
    # The trainer acknowledges: suspended, scaled down.
    st2["progress"] = {"state": "Checkpointed", "checkpointAck": req["id"], "lastCheckpoint": "/output/c/10"}
    d3, st3 = run(spec, observed_up(1), st2, now=NOW + dt.timedelta(seconds=40))
    assert d3.workloads is Workloads.DOWN and st3["phase"] == "Suspended"
    assert cond(d3, "Suspended") | {"lastTransitionTime": ""} == {
        "type": "Suspended",
        "status": "True",
        "reason": "Checkpointed",
        "lastTransitionTime": "",
        "message": "trainer checkpointed to /output/c/10; scaled down",
        "observedGeneration": 1,
    }
    assert "checkpointRequest" not in st3 and st3["gang"]["members"] == []
    # Suspended stays suspended.
    d4, st4 = run(spec, Observed(), st3, now=NOW + dt.timedelta(hours=5))
    assert d4.workloads is Workloads.DOWN and st4["phase"] == "Suspended"


def test_suspend_times_out_or_is_immediate_without_a_running_trainer() -> None:
    spec = {"runPolicy": {"suspend": True, "suspendTimeoutSeconds": 60}}
    _, st = run(spec, observed_up(1), running_status(1))
    d, st2 = run(spec, observed_up(1), st, now=NOW + dt.timedelta(seconds=61))
    assert st2["phase"] == "Suspended" and cond(d, "Suspended")["reason"] == "CheckpointTimeout"
    d, st3 = run(spec, observed_up(1, pods=()), running_status(1))
    assert st3["phase"] == "Suspended" and d.workloads is Workloads.DOWN


def test_resume_scales_up_and_resets_the_start_time() -> None:
    spec = {"runPolicy": {"suspend": True}}
    _, suspended = run(spec, observed_up(1, pods=()), running_status(1))
    later = NOW + dt.timedelta(hours=2)
    d, st = run(None, Observed(), suspended, now=later)
    assert d.workloads is Workloads.UP
    assert st["startTime"] == "2026-01-01T14:00:00Z"
    assert cond(d, "Suspended")["status"] == "False" and cond(d, "Suspended")["reason"] == "Resumed"
    assert st["phase"] in ("Starting", "Pending")


def test_active_deadline() -> None:
    spec = {"runPolicy": {"activeDeadlineSeconds": 3600}}
    status = running_status(1)
    d, _ = run(spec, observed_up(1), status, now=NOW + dt.timedelta(seconds=1800))
    assert d.requeue_after is not None and d.requeue_after <= 1800
    d, st = run(spec, observed_up(1), status, now=NOW + dt.timedelta(seconds=3601))
    assert st["phase"] == "Failed" and cond(d, "Failed")["reason"] == "DeadlineExceeded"
    assert d.workloads is Workloads.DOWN


def test_ttl_after_finished_deletes_the_job() -> None:
    spec = {"runPolicy": {"ttlSecondsAfterFinished": 600}}
    status = running_status(1, progress={"state": "Completed"})
    d, st = run(spec, observed_up(1), status)
    assert not d.delete_job and d.requeue_after == 600
    d2, _ = run(spec, Observed(), st, now=NOW + dt.timedelta(seconds=599))
    assert not d2.delete_job and d2.requeue_after is not None and d2.requeue_after <= 1
    d3, _ = run(spec, Observed(), st, now=NOW + dt.timedelta(seconds=600))
    assert d3.delete_job


def test_invalid_spec_fails_without_creating_anything() -> None:
    spec = {"trainer": {"nodes": 3, "gpusPerNode": 8}}  # 512 is not a multiple of 24
    d, st = run(spec, Observed())
    assert d.workloads is Workloads.DOWN and d.result == "invalid"
    failed = cond(d, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.trainer.schedule.globalBatchSize:")
    assert st["phase"] == "Failed"
    assert "Created" not in [c["type"] for c in st["conditions"]]


def test_pod_template_change_rolls_the_gang_without_counting() -> None:
    status = running_status(1)
    obs = observed_up(1)
    obs = Observed(
        mooncake=obs.mooncake,
        inference=obs.inference,
        trainer=obs.trainer.__class__("demo-trainer", 1, 1, update_revision="rev2"),
        trainer_pods=obs.trainer_pods,
    )
    d, st = run(
        None,
        obs,
        status,
    )
    assert st["restarts"] == 0 and not d.gang_restart
    assert d.delete_pods == [("demo-trainer-0", "uid-0")]
    assert cond(d, "Restarting")["reason"] == "SpecChanged"


def test_condition_transition_time_only_changes_with_the_status() -> None:
    _d1, st1 = run(None, observed_up(1))
    d2, st2 = run(None, observed_up(1), st1, now=NOW + dt.timedelta(minutes=5))
    assert st2["conditions"] == st1["conditions"] and d2.events == []
    assert status_patch(st1, d2.status) is None


def test_status_patch_touches_only_operator_fields() -> None:
    st = running_status(1, progress={"step": 5}, draftPath="/x")
    job = parse_job(job_body(status=st))
    d = decide(job, observed_up(1), NOW)
    d.status.draft_path = None
    d.status.progress = None
    patch = status_patch(st, d.status)
    assert patch == {"draftPath": None}


def test_pod_info_from_a_pod_object() -> None:
    info = pod_info(
        {
            "metadata": {
                "name": "p",
                "uid": "u",
                "labels": {"controller-revision-hash": "r"},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
            },
        }
    )
    assert (
        info.name,
        info.uid,
        info.phase,
        info.ready,
        info.restart_count,
        info.deleting,
        info.revision,
        info.reason,
    ) == ("p", "u", "Running", True, 2, True, "r", "CrashLoopBackOff")
    assert not info.running
