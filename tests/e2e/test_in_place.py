"""In-place upgrades end to end on real Kong 3.4.2 -> 3.9.1, under steady load through HAProxy:
the same database, with a downtime the run measures (X stop began -> Y serves through the LB).
Faults are injected by real means: the smoke test's expectations, a taken port, a wrapper in front
of Y's kong, a PostgreSQL trigger."""

from __future__ import annotations

import socket

import pytest
import yaml
from ansible_runner import run_module
from e2e_helpers import (
    admin_version,
    assert_back_on_x,
    assert_reached_over_ssh_and_kong_unprivileged,
    assert_serving,
    echoed_headers,
    fast_gate,
    pg_args,
    read_report,
    run_playbook,
    run_under_load,
    sql,
    wrap_kong,
)
from labfixtures import running_lab

# 3.4.2 -> 3.9.1 skips minors, which Kong does not guarantee: the run needs the override.
X, Y = "3.4.2", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")


def _extra(lab, **more):
    return dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=True, **more)


def _report(lab):
    return read_report(lab, X, Y)


def _assert_restored_to_x(lab, run, phase, summary=None):
    """A failure after X stopped: the run says so and what to do; X's database is back from the
    backup (X's migrations, no freeze) and X serves all traffic again; Y is stopped."""
    assert run.rc != 0, run.explain()
    assert f"failed in phase '{phase}'" in run.stdout, run.explain()
    assert "X had been stopped" in run.stdout and "X started again True" in run.stdout, run.explain()
    assert "Fix the cause and run the playbook again" in run.stdout
    if summary is not None:
        # Requests failed only while no Kong served (the LB answers 503, or 502 for a node that went away).
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]
    assert_back_on_x(lab, X)
    report = _report(lab)
    assert report["status"] == "failed, rolled back to X"
    assert report["failure"]["phase"] == phase
    rollback = report["rollback"]
    assert rollback["database_restored"] is True and rollback["x_started"] is True, rollback
    assert rollback["traffic_on_x"] is True and rollback["y_stopped"] is True, rollback


def test_in_place_upgrade_downtime_is_the_recorded_window_and_is_idempotent(tmp_path):
    # Over SSH, as the unprivileged user that runs Kong (the LB host becomes root).
    with running_lab(*LAB, "--connection", "ssh", kong="real") as lab:
        extra = _extra(lab)
        first, summary = run_under_load(lab, "upgrade_in_place", extra, tmp_path)
        assert first.rc == 0, first.explain()

        report = _report(lab)
        assert (lab.run_dir / "reports" / f"kong-{X}-to-{Y}.md").is_file()
        assert report["status"] == "succeeded"
        downtime = report["downtime"]
        assert downtime and float(downtime["seconds"]) > 0, downtime
        # The clients saw no longer an outage than the window the run recorded (plus 1 s).
        assert summary["longest_failure_window_seconds"] <= float(downtime["seconds"]) + 1.0, (summary, downtime)
        # The window opens when the last X node stopped accepting connections, after the stop was launched;
        # the proof of the configuration and the smoke tests ran within start_y (each Y node smoke-tested in its
        # start job), and every phase of the window is named.
        assert float(downtime["x_stop_started_epoch"]) < float(downtime["x_stopped_answering_epoch"]), downtime
        assert downtime["phases"] == ["stop_x", "migrations_finished", "start_y", "switch_to_y"], downtime["phases"]
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]
        assert summary["ok_by_version"].get(X, 0) > 0 and summary["ok_by_version"].get(Y, 0) > 0, summary["by_version"]
        assert report["migrations"]["after"] == "up_to_date"
        assert report["freeze_lifted"] is True
        assert report["backup"]["checksum"]
        # The configuration Y serves is the one frozen on X: same entities, same keys, after the migrations.
        fingerprints = report["fingerprints"]
        assert fingerprints["verified"]["keys_hash"] == fingerprints["at_freeze"]["keys_hash"]
        assert fingerprints["verified"]["counts"] == fingerprints["at_freeze"]["counts"]

        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) == Y, name
        assert_serving(lab, Y, "kong_x")
        assert_reached_over_ssh_and_kong_unprivileged(lab)
        freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False
        # The seeded regex route still serves with its plugin on Y (rate-limiting's migration
        # rewrote the plugins' configuration in place).
        assert echoed_headers(lab.frontend, "/regex2/42").get("x-lab-route") == "svc2-regex"

        second = run_playbook("upgrade_in_place", lab.inventory_path, extra, tmp_path)
        assert second.rc == 0, second.explain()
        assert second.changed == 0, second.explain()


# extended (left out of `make test`, second cut): in-place without a load balancer; the node steps are the ones of the main in-place case.
@pytest.mark.extended
def test_in_place_without_a_load_balancer_upgrades_the_nodes(tmp_path):
    # In-place needs no load balancer (the clients may reach the nodes by DNS): every step that
    # reads or weights one is skipped. ansible-core 2.19 templates delegate_to before `when`, so
    # these steps failed with "Empty hostname produced from delegate_to" until they fell back to
    # localhost.
    with running_lab(*LAB, kong="real") as lab:
        inventory = yaml.safe_load(lab.inventory_path.read_text())
        del inventory["all"]["children"]["kong_lb"]
        no_lb = tmp_path / "inventory-no-lb.yml"
        no_lb.write_text(yaml.safe_dump(inventory), encoding="utf-8")
        run = run_playbook("upgrade_in_place", no_lb, _extra(lab), tmp_path)
        assert run.rc == 0, run.explain()
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) == Y, name
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) is None, name
        report = _report(lab)
        assert report["status"] == "succeeded" and report["freeze_lifted"] is True
        assert float(report["downtime"]["seconds"]) > 0
        again = run_playbook("upgrade_in_place", no_lb, _extra(lab), tmp_path)
        assert again.rc == 0 and again.changed == 0, again.explain()


# extended (left out of `make test`): the same phase (start_y) and restore as
# test_in_place_y_node_that_fails_to_start_restores_the_database_and_x.
@pytest.mark.extended
def test_in_place_smoke_test_failing_after_x_stopped_restores_the_database_and_x(tmp_path):
    # The smoke test fails after X stopped and the migrations finished, so X's database must come
    # back from the backup.
    with running_lab(*LAB, kong="real") as lab:
        extra = _extra(lab, kong_upgrade_smoke_requests=[{"path": "/", "status": [418]}])
        run = run_playbook("upgrade_in_place", lab.inventory_path, extra, tmp_path)
        _assert_restored_to_x(lab, run, "start_y")  # each Y node is smoke-tested in its start job
        assert "is ready but fails its smoke test" in run.stdout and "Status code was 200 and not [418]" in run.stdout


def test_in_place_y_node_that_fails_to_start_restores_the_database_and_x(tmp_path):
    with running_lab(*LAB, kong="real") as lab, socket.socket() as taken:
        # Y's proxy_listen is an address another program holds: Y cannot start once X has stopped
        # and the migrations have finished, so X's database must come back from the backup.
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        extra = _extra(lab, kong_upgrade_y_conf_overrides={"proxy_listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        run, summary = run_under_load(lab, "upgrade_in_place", extra, tmp_path)
        _assert_restored_to_x(lab, run, "start_y", summary)


# extended (left out of `make test`): a half-migrated database restored from the backup is also
# test_in_place_migrations_up_failing_midway_restores_the_database_and_the_next_run_completes.
@pytest.mark.extended
def test_in_place_migrations_finish_failing_after_up_restores_the_database_and_x(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        # y1's kong (the one that runs the migrations) runs `migrations up` for real, then its
        # `migrations finish` fails: the database is half-migrated when the run must recover.
        wrap_kong(lab, "y1", tmp_path, '[ "$1" = migrations ] && [ "$2" = finish ]', "finish failed")
        run, summary = run_under_load(lab, "upgrade_in_place", _extra(lab), tmp_path)
        assert "injected fault: finish failed" in run.stdout, run.explain()
        _assert_restored_to_x(lab, run, "migrations_finished", summary)


# A trigger a DBA left on `plugins` that rejects one migration's `up`: real rate-limiting
# 006_350_to_360 moves the seeded rate-limiting plugin's redis_* settings into a `redis` record, the
# 8th of the nine migrations 3.4.2 -> 3.9.1 runs (core 021-024, acme 003, ai-proxy 001,
# opentelemetry 001, rate-limiting 006, response-ratelimiting 001; `kong migrations list`).
# `kong migrations up` really fails midway in PostgreSQL, after the seven before it were committed
# and recorded in schema_meta.
FAILING_MIGRATION_TRIGGER = """
CREATE FUNCTION e2e_reject_rate_limiting_migration() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF NEW.name = 'rate-limiting' AND NEW.config ? 'redis' AND NOT OLD.config ? 'redis' THEN
    RAISE EXCEPTION 'injected fault: a trigger rejects this update of plugins';
  END IF;
  RETURN NEW;
END
$fn$;
CREATE TRIGGER e2e_reject_rate_limiting_migration BEFORE UPDATE ON plugins
  FOR EACH ROW EXECUTE FUNCTION e2e_reject_rate_limiting_migration();
"""


# extended (left out of `make test`, second cut): `migrations up` failing midway in PostgreSQL; the restore of a half-migrated database is
# taken by test_crash_recovery.py::test_killed_with_the_database_half_migrated_the_backup_is_restored.
@pytest.mark.extended
def test_in_place_migrations_up_failing_midway_restores_the_database_and_the_next_run_completes(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        sql(lab, FAILING_MIGRATION_TRIGGER)
        before = sql(lab, "SELECT subsystem, executed, pending FROM schema_meta ORDER BY subsystem")
        run, summary = run_under_load(lab, "upgrade_in_place", _extra(lab), tmp_path)
        print(f"in-place, up fails midway: {summary['requests']} requests, {summary['failed']} failed, "
              f"longest outage {summary['longest_failure_window_seconds']} s")
        assert "failed to run migration '006_350_to_360' up" in run.stdout, run.explain()
        _assert_restored_to_x(lab, run, "migrations_finished", summary)
        # The database is X's again, as it was before the run: the half-run `up` is gone.
        assert sql(lab, "SELECT subsystem, executed, pending FROM schema_meta ORDER BY subsystem") == before

        # The DBA removes the trigger; the same playbook then completes the upgrade.
        sql(lab, "DROP TRIGGER e2e_reject_rate_limiting_migration ON plugins")
        again = run_playbook("upgrade_in_place", lab.inventory_path, _extra(lab), tmp_path)
        assert again.rc == 0, again.explain()
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) == Y, name
        assert_serving(lab, Y, "kong_x")
        report = _report(lab)
        assert report["status"] == "succeeded" and report["migrations"]["after"] == "up_to_date"
        assert report["fingerprints"]["verified"]["keys_hash"] == report["fingerprints"]["at_freeze"]["keys_hash"]
