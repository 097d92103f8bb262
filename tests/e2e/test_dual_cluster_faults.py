"""Dual-cluster faults: before the point of no return traffic returns to X by itself; past it,
the failure is reported, nothing is rolled back, and the next run completes the upgrade."""

from __future__ import annotations

import json

import pytest
from ansible_runner import run_module
from e2e_helpers import admin_version, fast_gate, run_playbook
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
            for host in lab.hosts("kong_y").values():
                prefix = lab.run_dir / "nodes" / host["kong_lb_server_name"]
                prefix.mkdir(parents=True, exist_ok=True)
                (prefix / "emulator_faults.json").write_text(json.dumps(fault_file))
        extra = dict(fast_gate(lab.run_dir), **(extra_vars(lab) if callable(extra_vars) else extra_vars))
        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            run = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path)
        finally:
            load.stop()
        summary = load.summary()

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
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {X}, after["by_version"]
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == X, name
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still runs after the rollback"
        pg = {k: lab.group_vars[f"kong_{k}"] for k in ("pg_host", "pg_port", "pg_user", "pg_password", "pg_database")}
        freeze = run_module("kong_config_freeze", dict(pg, state="status"))
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
        x2 = lab.host("x2")
        wrapper = tmp_path / "kong-that-cannot-stop"
        wrapper.write_text('#!/bin/sh\nif [ "$1" = quit ] || [ "$1" = stop ]; then\n'
                           '  echo "Error: injected fault: cannot stop" >&2; exit 1\nfi\n'
                           f'exec {x2["kong_executable"]} "$@"\n')
        wrapper.chmod(0o755)
        original = lab.inventory_path.read_text()
        line = f"kong_executable: {x2['kong_executable']}"
        lines = original.splitlines(keepends=True)
        start = next(i for i, text in enumerate(lines) if text.strip() == "x2:")
        index = next(i for i in range(start, len(lines)) if line in lines[i])
        lines[index] = lines[index].replace(line, f"kong_executable: {wrapper}")
        lab.inventory_path.write_text("".join(lines))

        extra = fast_gate(lab.run_dir)
        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            run = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path)
        finally:
            load.stop()
        summary = load.summary()
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
        pg = {k: lab.group_vars[f"kong_{k}"] for k in ("pg_host", "pg_port", "pg_user", "pg_password", "pg_database")}
        target = dict(pg, pg_database=report["database_in_use"])
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
