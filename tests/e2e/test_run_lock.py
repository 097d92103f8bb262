"""One run at a time, on real Kong (3.9.0 -> 3.9.1, dual-cluster, 2 X + 2 Y behind HAProxy).

A second run while the first shifts traffic is refused before it changes anything, naming the first
run; the first run is untouched (its freeze stays, it finishes with no failed request) and releases
the lock. A lock left by a run whose process is gone on this control node, or one whose heartbeat
expired, is taken over with a warning; a live one from another controller only with
kong_upgrade_break_run_lock.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from ansible_runner import run_module
from e2e_helpers import assert_upgraded, fast_gate, lab_snapshot, pg_args, run_playbook, run_under_load, sql
from labfixtures import running_lab

X, Y = "3.9.0", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")


def _plant_lock(lab, controller, pid, heartbeat_age_s=0, ttl=3600, run_id="kong-other-run"):
    """A lock row as another run's kong_run_lock would have written it."""
    sql(lab, "CREATE TABLE IF NOT EXISTS kongops_run_lock (key text PRIMARY KEY, token text NOT NULL, run_id text, "
             "controller text, pid integer, started_at timestamptz NOT NULL DEFAULT now(), "
             "heartbeat_at timestamptz NOT NULL DEFAULT now(), ttl_seconds integer NOT NULL)")
    sql(lab, "DELETE FROM kongops_run_lock")
    sql(lab, "INSERT INTO kongops_run_lock VALUES ('upgrade', 'planted-token', "
             f"'{run_id}', '{controller}', {int(pid)}, now() - make_interval(secs => {heartbeat_age_s + 60}), "
             f"now() - make_interval(secs => {heartbeat_age_s}), {int(ttl)})")


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock_rows(lab):
    if not sql(lab, "SELECT to_regclass('kongops_run_lock') IS NOT NULL")[0][0]:
        return []
    return sql(lab, "SELECT run_id, controller, pid FROM kongops_run_lock")


# extended (left out of `make test`, second cut): two runs at once on one lab; the lock module's take, renew, refuse and release are checked
# by tests/integration/test_kong_run_lock.py.
@pytest.mark.extended
def test_one_run_at_a_time(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_gate_min_duration=8)
        this_host = socket.gethostname()

        # A live run of another controller holds the lock: refused by name, nothing changed.
        _plant_lock(lab, "ops-controller-7", 4242)
        before = lab_snapshot(lab)
        refused = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path)
        said = " ".join(refused.stdout.split())
        assert refused.rc != 0 and refused.changed == 0, refused.explain()
        for words in ("Another upgrade run holds the run lock of database", "run kong-other-run from ops-controller-7",
                      "(pid 4242), started", "This run changed nothing", "kong_upgrade_break_run_lock=true"):
            assert words in said, f"{words!r} not said\n{refused.explain()}"
        assert lab_snapshot(lab) == before

        # The same lock, expired, or held by a process gone from this controller: a dry run says it would
        # be taken over (and changes nothing); with kong_upgrade_break_run_lock, even a live one.
        for planted, reason in [(("ops-controller-7", 4242, 7200, 3600), "its last heartbeat is older than its ttl"),
                                ((this_host, _dead_pid(), 0, 3600), "its process is gone")]:
            _plant_lock(lab, *planted[:2], heartbeat_age_s=planted[2], ttl=planted[3])
            before = lab_snapshot(lab)
            dry = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path, check=True)
            assert dry.rc == 0, dry.explain()
            told = " ".join((dry.stdout + dry.stderr).split())
            assert "Took over the run lock of database" in told and reason in told, dry.explain()
            assert lab_snapshot(lab) == before
        _plant_lock(lab, "ops-controller-7", 4242)
        forced = run_playbook("upgrade_dual_cluster", lab.inventory_path,
                              dict(extra, kong_upgrade_break_run_lock=True), tmp_path, check=True)
        assert forced.rc == 0 and "force=true" in forced.stdout + forced.stderr, forced.explain()
        sql(lab, "DELETE FROM kongops_run_lock")

        # Two real runs: the second starts while the first holds the lock and has frozen X's database.
        second = {}

        def start_second_when_the_first_is_frozen():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                rows = _lock_rows(lab)
                if rows and run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"]:
                    second["lock"] = rows
                    second["run"] = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path)
                    second["frozen_after"] = run_module("kong_config_freeze",
                                                        dict(pg_args(lab), state="status"))["frozen"]
                    return
                time.sleep(0.5)

        watcher = threading.Thread(target=start_second_when_the_first_is_frozen)
        watcher.start()
        first, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        watcher.join(timeout=600)
        assert first.rc == 0, first.explain()
        assert "run" in second, "the second run never started: the first run's lock or freeze was not seen"
        run_id, controller, pid = second["lock"][0]
        assert (run_id, controller) == (f"kong-{X}-to-{Y}", this_host) and pid > 0, second["lock"]
        refusal = " ".join(second["run"].stdout.split())
        assert second["run"].rc != 0 and second["run"].changed == 0, second["run"].explain()
        assert f"run kong-{X}-to-{Y} from {this_host} (pid {pid})" in refusal, second["run"].explain()
        assert second["frozen_after"] is True, "the refused run touched the first run's freeze"
        assert_upgraded(lab, summary, Y)
        assert _lock_rows(lab) == [], "the finished run released its lock"
        assert sql(lab, "SELECT count(*) FROM kongops_run_lock", f"kong_{Y.replace('.', '_')}")[0][0] == 0, \
            "the copy of the lock that the backup carried into Y's database was released too"
