"""Crash recovery from kills inside a phase, not at its start: the test runs ansible-playbook itself
and SIGKILLs it and all its descendants (``run_playbook_killed_when``: by pid, from /proc) the moment
an outside observation says so, with no help from the collection. In-place on real Kong 3.4.2 ->
3.9.1 (unsupported path, with the override, as test_in_place.py), 2 X and 2 Y nodes, under steady
load through HAProxy.

- Killed while X stops (the first X node no longer answers its Admin API): the next run finds X
  stopped by a run that died and, since no migration ran, starts X again on its untouched database.
  The nodes' `kong quit` jobs run detached from the controller (Ansible's async jobs), as commands on
  real nodes outlive a dead controller, so X ends up stopped whatever answered at the kill.
- Killed while pg_backup writes the dump (its partial file appears in the backup directory; 1.5
  million rate-limiting counters make pg_dump last about a second): what the dead run left is never
  taken for a backup; the next run takes a complete one and upgrades.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time

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
    run_playbook_killed_when,
    said,
    sql,
)
from labfixtures import running_lab

from labctl.load import LoadGenerator

X, Y = "3.4.2", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")
IN_PLACE = "upgrade_in_place"
LABEL = f"kong-{X}-to-{Y}"


def _extra(lab):
    return dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=True)


def _record(lab):
    return json.loads((lab.run_dir / "reports" / f"{LABEL}.state.json").read_text())


# extended (left out of `make test`, second cut): an in-place run killed while X stops; test_crash_recovery.py's half-migrated database stays.
@pytest.mark.extended
def test_in_place_killed_while_x_stops_starts_x_again_untouched(tmp_path):
    began = time.monotonic()
    with running_lab(*LAB, kong="real") as lab:
        before = entity_ids(lab)
        x_nodes = lab.hosts("kong_x")

        def first_x_node_down():
            answering = {name: admin_version(host["kong_admin_url"]) == X for name, host in x_nodes.items()}
            return answering if not all(answering.values()) else None

        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            killed, answering = run_playbook_killed_when(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path,
                                                         first_x_node_down, what="the first X node stops answering")
            killed_at = time.monotonic()
            assert killed.rc == -signal.SIGKILL, killed.explain()
            record = _record(lab)
            assert record["phase"] == "stop_x" and record["x_stopped"] is True and record["ended"] is False, record
            recovered = run_playbook(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path)
        finally:
            load.stop()
        summary = load.summary()
        print(f"in-place killed while X stops (X answering at the kill: {answering}): {summary['requests']} requests, "
              f"{summary['failed']} failed {summary['failed_by_reason']}, longest failure window "
              f"{summary['longest_failure_window_seconds']} s; recovery run {time.monotonic() - killed_at:.0f} s")

        print("the re-run said:", *said(recovered, "ended without finishing", "Recovering in-place run",
                                        "Recovered in-place run"), sep="\n  ")
        assert recovered.rc != 0, recovered.explain()
        assert "ended without finishing, in phase 'stop_x'" in recovered.stdout, recovered.explain()
        assert "which died in phase 'stop_x' after stopping X" in recovered.stdout, recovered.explain()
        assert "none of Y's migrations had run, so X was started again on its untouched database" in recovered.stdout, \
            recovered.explain()
        assert "run the playbook again to upgrade" in recovered.stdout
        # Only the outage of X's stop failed requests: the load balancer's own 503s, no Kong error.
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]
        assert_back_on_x(lab, X)
        assert entity_ids(lab) == before
        report = read_report(lab, X, Y)
        assert report["status"] == "recovered, rolled back to X"
        assert report["recovery"]["action"] == "start_x" and report["recovery"]["dead_run"]["phase"] == "stop_x"
        assert report["rollback"]["database_restored"] is False and report["rollback"]["x_started"] is True
    print(f"in-place killed while X stops: {time.monotonic() - began:.0f} s")


# extended (left out of `make test`, second cut): an in-place run killed while the backup is written; pg_backup's own integration tests check
# that a partial backup is never taken for a complete one.
@pytest.mark.extended
def test_in_place_killed_while_the_backup_is_written_takes_a_complete_backup(tmp_path):
    began = time.monotonic()
    with running_lab(*LAB, kong="real") as lab:
        before = entity_ids(lab)
        # A database as a busy gateway's: the rate-limiting plugin's cluster counters (a runtime table,
        # which the freeze leaves writable) make most of it, and pg_dump writes for about a second, long
        # enough to be seen between two polls.
        sql(lab, "INSERT INTO ratelimiting_metrics (identifier, period, period_date, value, ttl) "
                 "SELECT '10.0.' || (g % 65536) || '.' || (g / 65536), 'second', to_timestamp(1796000000 + g), 1, "
                 "now() + interval '1 day' FROM generate_series(1, 1500000) g")
        backups = lab.run_dir / "backups"
        partial, dump = backups / f"{LABEL}.dump.partial", backups / f"{LABEL}.dump"

        def dump_being_written():
            return partial.exists() and sorted(path.name for path in backups.iterdir())

        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            killed, left = run_playbook_killed_when(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path,
                                                    dump_being_written, what="pg_dump writes the dump")
            assert killed.rc == -signal.SIGKILL, killed.explain()
            record = _record(lab)
            assert record["phase"] == "backup" and record["x_stopped"] is False, record
            # What the dead run left: the partial dump and the marker of its take, no backup.
            assert f"{LABEL}.taking" in left and not dump.exists(), left
            upgraded = run_playbook(IN_PLACE, lab.inventory_path, _extra(lab), tmp_path)
        finally:
            load.stop()
        summary = load.summary()
        print(f"in-place killed during the backup (left: {left}): {summary['requests']} requests, "
              f"{summary['failed']} failed {summary['failed_by_reason']}")

        print("the re-run said:", *said(upgraded, "ended without finishing"),
              *[line.strip() for line in upgraded.stderr.splitlines() if "interrupted while it took backup" in line],
              sep="\n  ")
        assert upgraded.rc == 0, upgraded.explain()
        assert "ended without finishing, in phase 'backup'" in upgraded.stdout, upgraded.explain()
        # Ansible prints a module's warnings on stderr.
        assert "was interrupted while it took backup" in upgraded.stderr and f"{LABEL}.dump.partial" in upgraded.stderr, \
            upgraded.explain()
        report = read_report(lab, X, Y)
        assert report["status"] == "succeeded" and report["backup"]["reused"] is False, report["backup"]
        assert sorted(path.name for path in backups.iterdir() if path.name.startswith(LABEL)) == \
            [f"{LABEL}.dump", f"{LABEL}.kong.yml", f"{LABEL}.meta.json", f"{LABEL}.sha256"]
        verified = run_module("pg_backup", dict(pg_args(lab), backup_dir=str(backups), label=LABEL, state="verified"))
        assert verified["verified"] and verified["checksum"] == report["backup"]["checksum"] == \
            hashlib.sha256(dump.read_bytes()).hexdigest()
        assert {table: verified["metadata"]["row_counts"][table] for table in before} == \
            {table: len(ids) for table, ids in before.items()}
        assert set(summary["failed_by_reason"]) <= {"http_503", "http_502"}, summary["failed_by_reason"]
        assert_serving(lab, Y, "kong_x")
        assert entity_ids(lab) == before
        freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) == Y, name
    print(f"in-place killed during the backup: {time.monotonic() - began:.0f} s")
