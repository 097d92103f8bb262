"""Blue-green upgrades end to end on the lab, under steady load through HAProxy: Y on X's
database after `migrations up`, gated steps, a soak, then X retired and `migrations finish`."""

from __future__ import annotations

import json

import pytest
from ansible_runner import run_module
from e2e_helpers import admin_version, assert_serving, fast_gate, inject_proxy_5xx, pg_args, run_playbook, run_under_load, wrap_kong
from labfixtures import running_lab

X, Y = "3.6.0", "3.6.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")


# 3.6.0 -> 3.6.1 adds a migration with a teardown (finish has work to do); 3.4.0 -> 3.4.3 adds
# none (kong-facts 3.4), so `up` and `finish` find nothing to run and X and Y share the schema.
@pytest.mark.parametrize(("x_version", "y_version", "has_migrations"),
                         [("3.6.0", "3.6.1", True), ("3.4.0", "3.4.3", False)])
def test_blue_green_upgrade_serves_every_request_and_is_idempotent(x_version, y_version, has_migrations, tmp_path):
    lab_args = ("--x-version", x_version, "--y-version", y_version, "--x-nodes", "2", "--y-nodes", "2")
    with running_lab(*lab_args) as lab:
        # An Admin token (as for an RBAC-protected Admin API; the emulator ignores it) must never
        # show in the output or the reports.
        token = "kongtoken-e2e-" + x_version.replace(".", "")
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_blue_green_soak_seconds=3, kong_upgrade_admin_token=token)
        first, summary = run_under_load(lab, "upgrade_blue_green", extra, tmp_path)
        assert first.rc == 0, first.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert summary["requests"] > 1000
        assert summary["ok_by_version"].get(y_version, 0) > 0, summary["by_version"]
        assert token not in first.stdout + first.stderr
        assert not [path for path in (lab.run_dir / "reports").rglob("*") if path.is_file() and token in path.read_text()]

        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) == y_version, name
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still answers after decommission"

        report = json.loads((lab.run_dir / "reports" / f"kong-{x_version}-to-{y_version}.json").read_text())
        assert (lab.run_dir / "reports" / f"kong-{x_version}-to-{y_version}.md").is_file()
        assert report["status"] == "succeeded"
        assert report["database_in_use"] == lab.group_vars["kong_pg_database"]
        assert report["freeze_lifted"] is True
        # Four gated steps and the soak, all passed; finish ran last, nothing pending.
        assert [step["verdict"] for step in report["traffic_steps"]] == ["pass"] * 5
        assert report["traffic_steps"][-1].get("soak") is True
        ran = [command.split()[1:3] for command in report["migrations"]["commands"]]
        if has_migrations:
            assert ran[-1] == ["migrations", "finish"], ran
        else:
            assert ["migrations", "finish"] not in ran, ran
        assert report["migrations"]["after"] == "up_to_date"
        fingerprints = report["fingerprints"]
        assert fingerprints["verified"]["counts"] == fingerprints["at_freeze"]["counts"]
        assert fingerprints["verified"]["keys_hash"] == fingerprints["at_freeze"]["keys_hash"]
        freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False

        second = run_playbook("upgrade_blue_green", lab.inventory_path, extra, tmp_path)
        assert second.rc == 0, second.explain()
        assert second.changed == 0, second.explain()


FAULTS = {
    # Y's proxy_listen is an address X's node x1 already holds: Y cannot start.
    "y_fails_to_start": (lambda lab: {"kong_upgrade_y_conf_overrides": {"proxy_listen": lab.host("x1")["kong_proxy_listen"]}},
                         False, "start_y"),
    # Y does not answer what the operator expects.
    "smoke_test_fails": (lambda lab: {"kong_upgrade_smoke_requests": [{"path": "/", "status": [418]}]}, False, "smoke_test"),
    # Y answers 5xx from Kong itself for half its requests once it gets its 10 % (emulator fault file).
    "y_returns_5xx_at_10_percent": (lambda lab: {}, True, "shift_traffic"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_blue_green_failure_before_finish_returns_traffic_to_x(fault, tmp_path):
    extra_vars, answers_5xx, phase = FAULTS[fault]
    with running_lab(*LAB) as lab:
        if answers_5xx:
            inject_proxy_5xx(lab, "kong_y")
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_blue_green_soak_seconds=3, **extra_vars(lab))
        run, summary = run_under_load(lab, "upgrade_blue_green", extra, tmp_path)
        print(f"blue-green fault {fault}: {summary['requests']} requests, {summary['failed']} failed "
              f"{summary['failed_by_reason']}")

        assert run.rc != 0, run.explain()
        assert f"failed in phase '{phase}'" in run.stdout, run.explain()
        assert "only migrations up ran, never finish" in run.stdout
        assert "Fix the cause and run the playbook again" in run.stdout
        if answers_5xx:
            # Only the injected answers failed, and only while Y had its 10 % share.
            assert set(summary["failed_by_reason"]) <= {"http_503"}, summary["failed_by_reason"]
            assert 0 < summary["failed"] < 0.1 * summary["requests"]
        else:
            assert summary["failed"] == 0, summary["failed_by_reason"]

        # Traffic on X; X still serves on the database that saw `migrations up` only.
        assert_serving(lab, X, "kong_y")
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == X, name
        x1 = lab.host("x1")
        migrations = run_module("kong_migrations", {"kong_executable": x1["kong_executable"],
                                                    "conf": x1["kong_conf_path"], "state": "status"})
        assert migrations["state_before"]["state"] in ("up_to_date", "pending"), migrations["state_before"]
        freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False

        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert report["status"] == "failed, rolled back to X"
        assert report["failure"]["phase"] == phase
        assert report["rollback"]["traffic_on_x"] is True and report["rollback"]["thawed"] is True
        assert not [cmd for cmd in report["migrations"]["commands"] if "migrations finish" in cmd], report["migrations"]


def test_blue_green_x_node_that_cannot_stop_restarts_x_before_finish(tmp_path):
    with running_lab(*LAB) as lab:
        # x2's kong refuses `quit`/`stop` (a wrapper in front of the real binary), so retiring X
        # fails after x1 stopped and before `migrations finish`.
        wrap_kong(lab, "x2", tmp_path, '[ "$1" = quit ] || [ "$1" = stop ]', "cannot stop")
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_blue_green_soak_seconds=3)
        run, summary = run_under_load(lab, "upgrade_blue_green", extra, tmp_path)

        assert run.rc != 0, run.explain()
        assert "failed in phase 'decommission_x'" in run.stdout, run.explain()
        assert "X was started again" in run.stdout
        assert summary["failed"] == 0, summary["failed_by_reason"]
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == X, name
        assert_serving(lab, X, "kong_y")
        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert report["status"] == "failed, rolled back to X"
        assert report["failure"]["phase"] == "decommission_x"
        assert not [cmd for cmd in report["migrations"]["commands"] if "migrations finish" in cmd], report["migrations"]
