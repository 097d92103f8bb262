"""In-place upgrades end to end on the lab, under steady load through HAProxy: the same
database, with a downtime the run measures (X stop began -> Y serves through the LB)."""

from __future__ import annotations

import json

from ansible_runner import run_module
from e2e_helpers import admin_version, fast_gate, run_playbook
from labfixtures import running_lab

from labctl.load import LoadGenerator

# 3.4.3 -> 3.9.1 skips minors, which Kong does not guarantee: the run needs the override.
X, Y = "3.4.3", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")


def _pg(lab):
    return {k: lab.group_vars[f"kong_{k}"] for k in ("pg_host", "pg_port", "pg_user", "pg_password", "pg_database")}


def _extra(lab, **more):
    return dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=True, **more)


def test_in_place_upgrade_downtime_is_the_recorded_window_and_is_idempotent(tmp_path):
    with running_lab(*LAB) as lab:
        extra = _extra(lab)
        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            first = run_playbook("upgrade_in_place", lab.inventory_path, extra, tmp_path)
        finally:
            load.stop()
        summary = load.summary()
        assert first.rc == 0, first.explain()

        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert (lab.run_dir / "reports" / f"kong-{X}-to-{Y}.md").is_file()
        assert report["status"] == "succeeded"
        downtime = report["downtime"]
        assert downtime and float(downtime["seconds"]) > 0, downtime
        # The clients saw no longer an outage than the window the run recorded (plus 1 s).
        assert summary["longest_failure_window_seconds"] <= float(downtime["seconds"]) + 1.0, (summary, downtime)
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]
        assert summary["ok_by_version"].get(X, 0) > 0 and summary["ok_by_version"].get(Y, 0) > 0, summary["by_version"]
        assert report["migrations"]["after"] == "up_to_date"
        assert report["freeze_lifted"] is True
        assert report["backup"]["checksum"]

        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) == Y, name
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still answers after the upgrade"
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {Y}, after["by_version"]
        freeze = run_module("kong_config_freeze", dict(_pg(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False

        second = run_playbook("upgrade_in_place", lab.inventory_path, extra, tmp_path)
        assert second.rc == 0, second.explain()
        assert second.changed == 0, second.explain()


def test_in_place_failure_after_x_stopped_restores_the_database_and_x(tmp_path):
    # Not a migration failing midway (the emulator cannot inject that): the smoke test fails
    # after X stopped and the migrations finished, so X's database must come back from the backup.
    with running_lab(*LAB) as lab:
        extra = _extra(lab, kong_upgrade_smoke_requests=[{"path": "/", "status": [418]}])
        run = run_playbook("upgrade_in_place", lab.inventory_path, extra, tmp_path)

        assert run.rc != 0, run.explain()
        assert "failed in phase 'smoke_test'" in run.stdout, run.explain()
        assert "X had been stopped" in run.stdout
        assert "Fix the cause and run the playbook again" in run.stdout

        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {X}, after["by_version"]
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == X, name
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still runs after the restore"
        x1 = lab.host("x1")
        migrations = run_module("kong_migrations", {"kong_executable": x1["kong_executable"],
                                                    "conf": x1["kong_conf_path"], "state": "status"})
        assert migrations["state_before"]["state"] == "up_to_date", migrations["state_before"]
        assert migrations["kong_version"].startswith(X) if migrations.get("kong_version") else True
        freeze = run_module("kong_config_freeze", dict(_pg(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False

        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert report["status"] == "failed, rolled back to X"
        assert report["failure"]["phase"] == "smoke_test"
        assert report["rollback"]["database_restored"] is True
        assert report["rollback"]["x_started"] is True
        assert report["rollback"]["traffic_on_x"] is True


def test_in_place_migration_failing_midway_restores_the_database_and_x(tmp_path):
    with running_lab(*LAB) as lab:
        # y1's kong (the one that runs the migrations) runs `migrations up` for real, then its
        # `migrations finish` fails: the database is half-migrated when the run must recover.
        y1 = lab.host("y1")
        wrapper = tmp_path / "kong-finish-fails"
        wrapper.write_text('#!/bin/sh\nif [ "$1" = migrations ] && [ "$2" = finish ]; then\n'
                           '  echo "Error: injected fault: finish failed midway" >&2; exit 1\nfi\n'
                           f'exec {y1["kong_executable"]} "$@"\n')
        wrapper.chmod(0o755)
        lines = lab.inventory_path.read_text().splitlines(keepends=True)
        line = f"kong_executable: {y1['kong_executable']}"
        start = next(i for i, text in enumerate(lines) if text.strip() == "y1:")
        index = next(i for i in range(start, len(lines)) if line in lines[i])
        lines[index] = lines[index].replace(line, f"kong_executable: {wrapper}")
        lab.inventory_path.write_text("".join(lines))

        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            run = run_playbook("upgrade_in_place", lab.inventory_path, _extra(lab), tmp_path)
        finally:
            load.stop()
        summary = load.summary()

        assert run.rc != 0, run.explain()
        assert "failed in phase 'migrations_finished'" in run.stdout, run.explain()
        assert "injected fault" in run.stdout
        assert "X had been stopped" in run.stdout
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]

        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {X}, after["by_version"]
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == X, name
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still runs after the restore"
        x1 = lab.host("x1")
        migrations = run_module("kong_migrations", {"kong_executable": x1["kong_executable"],
                                                    "conf": x1["kong_conf_path"], "state": "status"})
        assert migrations["state_before"]["state"] == "up_to_date", migrations["state_before"]
        freeze = run_module("kong_config_freeze", dict(_pg(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False

        report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
        assert report["status"] == "failed, rolled back to X"
        assert report["failure"]["phase"] == "migrations_finished"
        assert report["rollback"]["database_restored"] is True
        assert report["rollback"]["x_started"] is True
