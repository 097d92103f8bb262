"""Crash recovery: the control node's run is killed (SIGKILL of ansible-playbook and its workers, as
a crash or a lost session would) right after a phase's record is written, and the same playbook is
run again. In-place on real Kong 3.4.2 -> 3.9.1, under steady load through HAProxy.

The kill comes from the collection's one test hook (``KONGOPS_TEST_KILL_AT_PHASE``, phase.yml).
Every re-run must end the outage the dead run left, by completing the upgrade or by starting X
again (``kong_upgrade_in_place_recover=auto``), say what it found and what it did, and lose no
configuration entity.
"""

from __future__ import annotations

import json
import signal

import pytest
from ansible_runner import run_module
from e2e_helpers import (
    admin_version,
    assert_back_on_x,
    assert_serving,
    entity_ids,
    fast_gate,
    pg_args,
    read_report,
    run_playbook,
    run_under_load,
    sql,
)
from labfixtures import running_lab

X, Y = "3.4.2", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")
IN_PLACE = "upgrade_in_place"


def _extra(lab):
    return dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=True)


def _killed_at(lab, phase, tmp_path):
    """The in-place playbook killed right after phase ``phase`` began; its run record is left behind."""
    run = run_playbook(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path,
                       env={"KONGOPS_TEST_KILL_AT_PHASE": phase})
    assert run.rc == -signal.SIGKILL, run.explain()
    record = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.state.json").read_text())
    assert record["phase"] == phase and record["ended"] is False, record
    lock = sql(lab, "SELECT phase, facts FROM kongops_run_lock")
    assert lock and lock[0][0] == phase, lock
    return record


def _assert_upgraded(lab, before):
    for name, host in lab.hosts("kong_y").items():
        assert admin_version(host["kong_admin_url"]) == Y, name
    assert_serving(lab, Y, "kong_x")
    freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
    assert not freeze.failed and freeze["frozen"] is False
    assert entity_ids(lab) == before, "an entity was lost or added"
    y1 = lab.host("y1")
    migrations = run_module("kong_migrations", {"kong_executable": y1["kong_executable"], "conf": y1["kong_conf_path"],
                                                "state": "status"})
    assert migrations["state_before"]["state"] == "up_to_date", migrations["state_before"]
    report = read_report(lab, X, Y)
    assert report["status"] == "succeeded", report["status"]
    return report


# extended (left out of `make test`): a run killed while the backup is written, taken over by the next run
# that upgrades, is test_crash_recovery_in_phase.py's test_in_place_killed_while_the_backup_is_written_takes_a_complete_backup.
@pytest.mark.extended
def test_killed_during_the_backup_the_next_run_takes_over_and_upgrades(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        before = entity_ids(lab)
        record = _killed_at(lab, "backup", tmp_path)
        assert record["x_stopped"] is False
        again, summary = run_under_load(lab, IN_PLACE, _extra(lab), tmp_path)
        assert again.rc == 0, again.explain()
        # Ansible prints a module's warnings on stderr.
        warned = again.stdout + again.stderr
        assert "Took over the run lock" in warned and "its process is gone" in warned, again.explain()
        assert "ended without finishing, in phase 'backup'" in again.stdout, again.explain()
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]
        _assert_upgraded(lab, before)


# extended (left out of `make test`): X started again on its untouched database after a kill once X
# stopped is test_crash_recovery_in_phase.py's test_in_place_killed_while_x_stops_starts_x_again_untouched.
@pytest.mark.extended
def test_killed_after_x_stopped_before_any_migration_x_starts_again_untouched(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        before = entity_ids(lab)
        record = _killed_at(lab, "migrations_finished", tmp_path)
        assert record["x_stopped"] is True and record["backup"]["checksum"], record
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still serves after the stop"

        recovered, summary = run_under_load(lab, IN_PLACE, _extra(lab), tmp_path)
        assert recovered.rc != 0, recovered.explain()
        assert "none of Y's migrations had run, so X was started again on its untouched database" in recovered.stdout, \
            recovered.explain()
        assert "run the playbook again to upgrade" in recovered.stdout
        assert_back_on_x(lab, X)
        assert entity_ids(lab) == before
        report = read_report(lab, X, Y)
        assert report["status"] == "recovered, rolled back to X"
        assert report["recovery"]["action"] == "start_x" and report["recovery"]["dead_run"]["phase"] == "migrations_finished"
        assert report["rollback"]["database_restored"] is False and report["rollback"]["x_started"] is True

        third = run_playbook(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path)
        assert third.rc == 0, third.explain()
        _assert_upgraded(lab, before)


def test_killed_with_the_database_half_migrated_the_backup_is_restored(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        before = entity_ids(lab)
        schema_before = sql(lab, "SELECT subsystem, executed, pending FROM schema_meta ORDER BY subsystem")
        _killed_at(lab, "migrations_finished", tmp_path)
        # What a kill in the middle of the migrations leaves: Y's `up` done, its `finish` not.
        y1 = lab.host("y1")
        up = run_module("kong_migrations", {"kong_executable": y1["kong_executable"], "conf": y1["kong_conf_path"],
                                            "state": "up"})
        assert not up.failed and up["state_after"]["state"] == "pending", up

        recovered, _summary = run_under_load(lab, IN_PLACE, _extra(lab), tmp_path)
        assert recovered.rc != 0, recovered.explain()
        assert "some of Y's migrations had run (pending), so the database was restored from" in recovered.stdout, \
            recovered.explain()
        assert_back_on_x(lab, X)
        assert sql(lab, "SELECT subsystem, executed, pending FROM schema_meta ORDER BY subsystem") == schema_before
        assert entity_ids(lab) == before
        report = read_report(lab, X, Y)
        assert report["recovery"]["action"] == "restore" and report["rollback"]["database_restored"] is True


# extended (left out of `make test`): an in-place run that completes what a dead run left after the
# migrations is test_killed_before_the_thaw_the_next_run_resumes_there.
@pytest.mark.extended
def test_killed_before_the_switch_to_y_the_next_run_completes_the_upgrade(tmp_path):
    # Y runs, smoke-tested in its start jobs, every migration ran; the load balancer still sends to X.
    with running_lab(*LAB, kong="real") as lab:
        before = entity_ids(lab)
        dead = _killed_at(lab, "switch_to_y", tmp_path)
        completed, summary = run_under_load(lab, IN_PLACE, _extra(lab), tmp_path)
        assert completed.rc == 0, completed.explain()
        assert "Doing (kong_upgrade_in_place_recover=auto): complete the upgrade" in completed.stdout, completed.explain()
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]
        report = _assert_upgraded(lab, before)
        assert report["recovery"]["action"] == "complete" and report["recovery"]["dead_run"]["phase"] == "switch_to_y"
        # The downtime is counted from the dead run's stop of X, and its backup is the one kept.
        assert report["downtime"]["x_stop_started"] == dead["x_stop_started"], (report["downtime"], dead)
        assert report["backup"]["checksum"] == dead["backup"]["checksum"]
        settled = run_playbook(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path)
        assert settled.rc == 0 and settled.changed == 0, settled.explain()


# extended (left out of `make test`): a run resumed past the point of no return is
# test_crash_recovery_traffic.py's test_blue_green_killed_while_x_is_retired_goes_on_retiring_x_then_finishes.
@pytest.mark.extended
def test_killed_before_the_thaw_the_next_run_resumes_there(tmp_path):
    # Y serves all traffic: past the point of no return, the re-run only proves the configuration
    # unchanged and thaws (it never goes back).
    with running_lab(*LAB, kong="real") as lab:
        before = entity_ids(lab)
        _killed_at(lab, "thaw", tmp_path)
        resumed, summary = run_under_load(lab, IN_PLACE, _extra(lab), tmp_path)
        assert resumed.rc == 0, resumed.explain()
        assert "a previous run stopped past the point of no return" in resumed.stdout, resumed.explain()
        assert "ended without finishing, in phase 'thaw'" in resumed.stdout, resumed.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        _assert_upgraded(lab, before)
        settled = run_playbook(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path)
        assert settled.rc == 0 and settled.changed == 0, settled.explain()
