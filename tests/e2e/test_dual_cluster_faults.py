"""Dual-cluster faults: before the point of no return traffic returns to X by itself; past it,
the failure is reported, nothing is rolled back, and the next run completes the upgrade."""

from __future__ import annotations

import json
import urllib.request

import pytest
from ansible_runner import run_module
from e2e_helpers import admin_version, assert_serving, fast_gate, inject_proxy_5xx, pg_args, run_playbook, run_under_load, wrap_kong
from labfixtures import running_lab

from labctl.load import LoadGenerator

X, Y = "3.9.1", "3.10.0"

FAULTS = {
    # A Y node that fails to start: its proxy_listen is an address X's node x1 already holds.
    "y_fails_to_start": (lambda lab: {"kong_upgrade_y_conf_overrides": {"proxy_listen": lab.host("x1")["kong_proxy_listen"]}},
                         None, "start_y"),
    # A smoke test that fails: Y does not answer what the operator expects.
    "smoke_test_fails": ({"kong_upgrade_smoke_requests": [{"path": "/", "status": [418]}]}, None,
                         "smoke_test"),
    # Y answers 5xx from Kong itself for half its requests once it gets traffic (emulator fault file).
    "y_returns_5xx": ({}, {"proxy_5xx_rate": 0.5, "status": 503}, "shift_traffic"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_failure_before_point_of_no_return_returns_traffic_to_x(fault, tmp_path):
    extra_vars, fault_file, phase = FAULTS[fault]
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2") as lab:
        if fault_file:
            inject_proxy_5xx(lab, "kong_y", fault_file["proxy_5xx_rate"], fault_file["status"])
        extra = dict(fast_gate(lab.run_dir), **(extra_vars(lab) if callable(extra_vars) else extra_vars))
        run, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)

        assert run.rc != 0, run.explain()
        assert f"failed in phase '{phase}'" in run.stdout, run.explain()
        assert "Fix the cause and run the playbook again" in run.stdout
        if fault_file:
            # Only the injected answers failed, and only while Y had its 10 % share.
            assert set(summary["failed_by_reason"]) <= {"http_503"}, summary["failed_by_reason"]
            assert 0 < summary["failed"] < 0.1 * summary["requests"]
        else:
            assert summary["failed"] == 0, summary["failed_by_reason"]

        # Traffic is on X, Y is stopped, X's database is as X left it, the freeze is lifted.
        assert_serving(lab, X, "kong_y")
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == X, name
        freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False
        x1 = lab.host("x1")
        migrations = run_module("kong_migrations", {"kong_executable": x1["kong_executable"],
                                                    "conf": x1["kong_conf_path"], "state": "status"})
        assert migrations["state_before"]["state"] == "up_to_date"

        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert report["status"] == "failed, rolled back to X"
        assert report["failure"]["phase"] == phase
        assert report["rollback"]["traffic_on_x"] is True
        assert report["rollback"]["thawed"] is True and report["freeze_lifted"] is True


def test_failure_past_point_of_no_return_is_reported_and_the_next_run_completes(tmp_path):
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2") as lab:
        # x2's kong refuses `quit`/`stop` (a wrapper in front of the real binary), so decommissioning X
        # fails after all traffic went to Y: nothing may be rolled back any more.
        original = wrap_kong(lab, "x2", tmp_path, '[ "$1" = quit ] || [ "$1" = stop ]', "cannot stop")
        extra = fast_gate(lab.run_dir)
        run, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        assert run.rc != 0, run.explain()
        assert "failed past the point of no return, in phase 'decommission_x'" in run.stdout, run.explain()
        assert "Nothing was rolled back: Y serves all traffic" in run.stdout
        assert summary["failed"] == 0, summary["failed_by_reason"]
        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
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
        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert report["status"] == "succeeded"
        # Both runs' reports are kept: the failed one and the one that completed.
        history = sorted((lab.run_dir / "reports" / "history").glob(f"kong-{X}-to-{Y}-*.json"))
        statuses = sorted(json.loads(path.read_text())["status"] for path in history)
        assert statuses == ["failed after the point of no return", "succeeded"], history


def _admin(method, url, body=None):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback lab URL)
        return response.status, json.loads(response.read() or b"{}")


def test_writes_made_after_a_rollback_are_in_the_backup_and_on_y_after_the_next_run(tmp_path):
    """A failed run thaws X's database; admins write to it; the next run must not reuse the backup
    taken before those writes (restoring it would lose them): it takes a new one, keeps the old one,
    restores Y's database again from the new one, and Y serves what the admins wrote."""
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2") as lab:
        extra = fast_gate(lab.run_dir)
        failed = run_playbook("upgrade_dual_cluster", lab.inventory_path,
                              dict(extra, kong_upgrade_smoke_requests=[{"path": "/", "status": [418]}]), tmp_path)
        assert failed.rc != 0 and "failed in phase 'smoke_test'" in failed.stdout, failed.explain()
        first_backup = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())["backup"]

        x1_admin = lab.host("x1")["kong_admin_url"]
        status, created = _admin("POST", x1_admin + "/services",
                                 {"name": "added-after-the-rollback", "url": "http://127.0.0.1:9/"})
        assert status == 201, created

        again, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        assert again.rc == 0, again.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert "the database changed since backup" in again.stdout + again.stderr, again.explain()

        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert report["status"] == "succeeded"
        backup = report["backup"]
        assert backup["reused"] is False and backup["checksum"] != first_backup["checksum"]
        kept = lab.run_dir / "backups" / f"{backup['superseded']}.dump"
        assert backup["superseded"].startswith(f"kong-{X}-to-{Y}.superseded-") and kept.is_file()
        assert (lab.run_dir / "backups" / f"{backup['superseded']}.kong.yml").is_file()
        assert backup["row_counts"]["services"] == first_backup["row_counts"]["services"] + 1
        for name, host in lab.hosts("kong_y").items():
            status, service = _admin("GET", host["kong_admin_url"] + "/services/added-after-the-rollback")
            assert status == 200 and service["id"] == created["id"], name
