"""kong_run_lock against the lab's PostgreSQL (next to a real Kong node's database): take, renew,
refuse another run by name, release; each change four ways (check, real, check again, real again)."""

from __future__ import annotations

import pytest
from ansible_runner import four_ways, run_module
from itlab import lab_session


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-nodes", "1", "--y-nodes", "0") as lab:
        yield lab


def test_take_renew_refuse_and_release(lab):
    pg = lab.pg_args()
    mine = {**pg, "token": "run-a", "run_id": "kong-a", "controller": "ops1", "pid": 11, "ttl": 600}
    taken = four_ways("kong_run_lock", {**mine, "state": "acquired"})
    assert taken[1]["acquired"] and taken[1]["holder"]["run_id"] == "kong-a" and not taken[1]["holder"]["expired"]

    other = run_module("kong_run_lock", {**pg, "state": "acquired", "token": "run-b", "run_id": "kong-b",
                                         "controller": "ops2", "pid": 22})
    assert other.failed
    assert "run kong-a from ops1 (pid 11)" in other["msg"] and "This run changed nothing" in other["msg"]
    assert run_module("kong_run_lock", {**pg, "state": "status"})["holder"]["run_id"] == "kong-a"

    # the run's record: kept by heartbeats, given back to the run that takes over, never inherited
    run_module("kong_run_lock", {**mine, "state": "acquired", "phase": "stop_x", "facts": {"x_stopped": True}})
    run_module("kong_run_lock", {**mine, "state": "acquired"})
    held = run_module("kong_run_lock", {**pg, "state": "status"})["holder"]
    assert held["phase"] == "stop_x" and held["facts"] == {"x_stopped": True}, held
    refused = run_module("kong_run_lock", {**pg, "state": "acquired", "token": "run-c", "pid": 33})
    assert refused.failed and "in phase 'stop_x'" in refused["msg"]
    taken = run_module("kong_run_lock", {**pg, "state": "acquired", "token": "run-c", "run_id": "kong-c",
                                         "take_over": "run-a", "phase": "preflight"})
    assert taken["taken_over"]["facts"] == {"x_stopped": True} and taken["holder"]["facts"] is None, taken
    run_module("kong_run_lock", {**pg, "state": "acquired", "token": "run-a", "run_id": "kong-a",
                                 "controller": "ops1", "pid": 11, "force": True})

    # another run's token releases nothing; the holder's releases, four ways
    assert not run_module("kong_run_lock", {**pg, "state": "released", "token": "run-b"}).changed
    four_ways("kong_run_lock", {**pg, "state": "released", "token": "run-a"})
    assert run_module("kong_run_lock", {**pg, "state": "status"})["holder"] is None
