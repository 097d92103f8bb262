"""Dual-cluster faults on real Kong 3.4.2 -> 3.9.1: before the point of no return traffic returns
to X by itself; past it, the failure is reported, nothing is rolled back, and the next run
completes the upgrade. Every fault is injected by real means (kong.conf values, Kong's injected
nginx directives, a wrapper in front of the kong binary)."""

from __future__ import annotations

import json
import os

import pytest
from ansible_runner import run_module
from e2e_helpers import (
    admin_call,
    admin_version,
    assert_back_on_x,
    fast_gate,
    pg_args,
    read_report,
    run_playbook,
    run_under_load,
    wrap_kong,
    y_overload_fault,
)
from labfixtures import running_lab

from labctl.load import LoadGenerator

X, Y = "3.4.2", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")


def _extra(lab, **more):
    # 3.4 -> 3.9 skips minors, which Kong does not guarantee: the run needs the override.
    return dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=True, **more)


def _report(lab):
    return read_report(lab, X, Y)


def _locked_directory(tmp_path):
    """A directory only root may enter (mode 0700): nginx's workers, which run as nobody, cannot."""
    locked = tmp_path / "workers-cannot-enter"
    locked.mkdir()
    locked.chmod(0o700)
    return str(locked)


FAULTS = {
    # Y's proxy_listen is an address X's node x1 already holds: `kong start` fails (bind, rc 1).
    "y_port_taken": (lambda lab, tmp: {"kong_upgrade_y_conf_overrides": {"proxy_listen": lab.host("x1")["kong_proxy_listen"]}},
                     "start_y", "Address already in use"),
    # Y's nginx workers cannot enter their working directory (Kong's injected nginx_main_* directive):
    # `kong start` prints "Kong started" and exits 0, the workers exit at once and are never respawned.
    # Judged by readiness, the node fails to start, and the message quotes its error log.
    "y_workers_die": (lambda lab, tmp: {"kong_upgrade_y_conf_overrides": {"nginx_main_working_directory": _locked_directory(tmp)}},
                      "start_y", "cannot be respawned"),
    # Y's proxy answers 503 from Kong itself once it takes steady traffic (an nginx limit_req through
    # Kong's injected nginx_http_*/nginx_proxy_* directives, on Y only): the smoke test passes, the
    # 10 % step does not.
    "y_returns_5xx": (lambda lab, tmp: {"kong_upgrade_y_conf_overrides": y_overload_fault()}, "shift_traffic",
                      "Y against X"),
}
# Left out of `make test` (marker extended; `make test-all` runs them): Y failing to start (start_y) is
# also the fault of rolling and in-place, with the same return to X before the point of no return;
# y_returns_5xx keeps dual-cluster's own rollback, from the traffic shift, in `make test`.
EXTENDED_FAULTS = {"y_port_taken", "y_workers_die"}


def _assert_rolled_back(lab, run, phase, said):
    """The run failed in ``phase`` and says so, what happened and what to do; traffic is on X, Y is
    stopped, X's database is as X left it, the freeze is lifted, the report says how it was undone."""
    assert run.rc != 0, run.explain()
    assert f"failed in phase '{phase}'" in run.stdout, run.explain()
    assert said in run.stdout, run.explain()
    assert "Fix the cause and run the playbook again" in run.stdout
    assert_back_on_x(lab, X)
    report = _report(lab)
    assert report["status"] == "failed, rolled back to X"
    assert report["failure"]["phase"] == phase
    assert report["rollback"]["traffic_on_x"] is True and report["rollback"]["y_stopped"] is True
    assert report["rollback"]["thawed"] is True and report["freeze_lifted"] is True


@pytest.mark.parametrize("fault", [pytest.param(f, marks=pytest.mark.extended) if f in EXTENDED_FAULTS else f
                                   for f in sorted(FAULTS)])
def test_failure_before_point_of_no_return_returns_traffic_to_x(fault, tmp_path):
    make_vars, phase, said = FAULTS[fault]
    with running_lab(*LAB, kong="real") as lab:
        run, summary = run_under_load(lab, "upgrade_dual_cluster", _extra(lab, **make_vars(lab, tmp_path)), tmp_path)
        _assert_rolled_back(lab, run, phase, said)
        if fault == "y_returns_5xx":
            # Only Kong's own 503s failed, and only while Y had its 10 % share.
            assert set(summary["failed_by_reason"]) == {"http_503"}, summary["failed_by_reason"]
            assert 0 < summary["failed"] < 0.1 * summary["requests"], summary
            assert _report(lab)["traffic_steps"][0]["verdict"] == "fail", _report(lab)["traffic_steps"]
        else:
            assert summary["failed"] == 0, summary["failed_by_reason"]


def test_failure_past_point_of_no_return_is_reported_and_the_next_run_completes(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        # x2's kong refuses `quit`/`stop` (a wrapper in front of the real binary), so decommissioning X
        # fails after all traffic went to Y: nothing may be rolled back any more.
        original = wrap_kong(lab, "x2", tmp_path, '[ "$1" = quit ] || [ "$1" = stop ]', "cannot stop")
        extra = _extra(lab)
        run, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        assert run.rc != 0, run.explain()
        assert "failed past the point of no return, in phase 'decommission_x'" in run.stdout, run.explain()
        assert "Nothing was rolled back: Y serves all traffic" in run.stdout
        assert "injected fault: cannot stop" in run.stdout, run.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        report = _report(lab)
        assert report["status"] == "failed after the point of no return"
        assert report["failure"]["phase"] == "decommission_x"
        # Y keeps all the traffic; the configuration stays frozen until the run completes.
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {Y}, after["by_version"]
        target = dict(pg_args(lab), pg_database=report["database_in_use"])
        assert run_module("kong_config_freeze", dict(target, state="status"))["frozen"] is True

        # The operator fixes x2 (the real binary again) and runs the same playbook: it completes.
        lab.inventory_path.write_text(original)
        again = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path)
        assert again.rc == 0, again.explain()
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still answers after the second run"
        assert run_module("kong_config_freeze", dict(target, state="status"))["frozen"] is False
        report = _report(lab)
        assert report["status"] == "succeeded"
        # Both runs' reports are kept: the failed one and the one that completed.
        history = sorted((lab.run_dir / "reports" / "history").glob(f"kong-{X}-to-{Y}-*.json"))
        statuses = sorted(json.loads(path.read_text())["status"] for path in history)
        assert statuses == ["failed after the point of no return", "succeeded"], history


# extended (left out of `make test`, second cut): a rollback then admin writes before the next run (a new backup); the rollback itself is taken
# by test_failure_before_point_of_no_return_returns_traffic_to_x.
@pytest.mark.extended
def test_a_failing_smoke_test_rolls_back_and_writes_made_after_it_reach_y_through_a_new_backup(tmp_path):
    """A smoke test that fails (Y does not answer what the operator expects) returns traffic to X and
    thaws X's database; admins write to it; the next run must not reuse the backup taken before
    those writes (restoring it would lose them): it takes a new one, keeps the old one, restores Y's
    database again from the new one, and Y serves what the admins wrote."""
    with running_lab(*LAB, kong="real") as lab:
        extra = _extra(lab)
        failed, summary = run_under_load(lab, "upgrade_dual_cluster",
                                         dict(extra, kong_upgrade_smoke_requests=[{"path": "/", "status": [418]}]), tmp_path)
        _assert_rolled_back(lab, failed, "smoke_test", "Status code was 200 and not [418]")
        assert summary["failed"] == 0, summary["failed_by_reason"]
        first_backup = _report(lab)["backup"]

        x1_admin = lab.host("x1")["kong_admin_url"]
        status, created = admin_call("POST", x1_admin + "/services",
                                     {"name": "added-after-the-rollback", "url": "http://127.0.0.1:9/"})
        assert status == 201, created

        again, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        assert again.rc == 0, again.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert "the database changed since backup" in again.stdout + again.stderr, again.explain()

        report = _report(lab)
        assert report["status"] == "succeeded"
        backup = report["backup"]
        assert backup["reused"] is False and backup["checksum"] != first_backup["checksum"]
        kept = lab.run_dir / "backups" / f"{backup['superseded']}.dump"
        assert backup["superseded"].startswith(f"kong-{X}-to-{Y}.superseded-") and kept.is_file()
        assert (lab.run_dir / "backups" / f"{backup['superseded']}.kong.yml").is_file()
        assert backup["row_counts"]["services"] == first_backup["row_counts"]["services"] + 1
        for name, host in lab.hosts("kong_y").items():
            status, service = admin_call("GET", host["kong_admin_url"] + "/services/added-after-the-rollback")
            assert status == 200 and service["id"] == created["id"], name
        assert os.path.isfile(lab.run_dir / "reports" / f"kong-{X}-to-{Y}.md")
