"""Leader election decisions (pure) and the operator's flags for it."""

from __future__ import annotations

import datetime as dt

from dspark_operator.leader import LeaseRecord, claimed, may_hold
from dspark_operator.main import build_parser, settings_from_args
from dspark_operator.settings import Settings

NOW = dt.datetime(2026, 12, 3, 12, 0, 0, tzinfo=dt.UTC)


def test_a_free_absent_or_own_lease_may_be_held() -> None:
    assert may_hold(None, "a", NOW)
    assert may_hold(LeaseRecord(None, None, 15), "a", NOW)
    assert may_hold(LeaseRecord("", NOW, 15), "a", NOW)
    assert may_hold(LeaseRecord("a", NOW - dt.timedelta(seconds=3), 15), "a", NOW)


def test_another_holders_lease_is_taken_only_once_expired() -> None:
    fresh = LeaseRecord("b", NOW - dt.timedelta(seconds=14), 15)
    stale = LeaseRecord("b", NOW - dt.timedelta(seconds=16), 15)
    assert not may_hold(fresh, "a", NOW)
    assert may_hold(stale, "a", NOW)


def test_claiming_counts_transitions_only_on_a_change_of_holder() -> None:
    first = claimed(None, "a", NOW, 15)
    assert first == LeaseRecord("a", NOW, 15, 1)
    renewed = claimed(first, "a", NOW + dt.timedelta(seconds=5), 15)
    assert renewed.transitions == 1 and renewed.renewed_at == NOW + dt.timedelta(seconds=5)
    taken = claimed(renewed, "b", NOW + dt.timedelta(seconds=30), 15)
    assert taken.holder == "b" and taken.transitions == 2


def test_leader_election_settings_from_env_and_flags() -> None:
    env = {"DSPARK_OPERATOR_LEADER_ELECTION": "true", "POD_NAMESPACE": "dspark-system",
           "DSPARK_OPERATOR_LEASE_NAME": "op", "DSPARK_OPERATOR_LEASE_DURATION_SECONDS": "20"}
    s = Settings.from_env(env)
    assert (s.leader_election, s.lease_namespace, s.lease_name, s.lease_duration_seconds) == (
        True, "dspark-system", "op", 20)
    assert not Settings.from_env({}).leader_election
    args = build_parser().parse_args(["--leader-election", "--lease-namespace", "ops", "--lease-duration-seconds", "6"])
    s = settings_from_args(args, Settings.from_env({}))
    assert (s.leader_election, s.lease_namespace, s.lease_duration_seconds) == (True, "ops", 6)
