"""A write that gets past the freeze is caught before the point of no return (real Kong).

Dual-cluster 3.9.0 -> 3.9.1 under load: while traffic moves, X's database is written with the
guard trigger disabled (what the kong role, which owns Kong's tables, can do). The check right
before the point of no return finds X's configuration changed since the freeze, the run fails
there, and all traffic is back on X with no failed request.
"""

from __future__ import annotations

import threading
import time

from e2e_helpers import _haproxy_servers, assert_back_on_x, fast_gate, read_report, run_under_load, sql
from labfixtures import running_lab

X, Y = "3.9.0", "3.9.1"


def test_a_write_past_the_freeze_stops_the_run_before_the_point_of_no_return(tmp_path):
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2", kong="real") as lab:
        wrote = {}

        def write_past_the_freeze_once_y_gets_traffic():
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                weights = {name: int(weight) for name, _state, weight in _haproxy_servers(lab)}
                if any(weights.get(name, 0) > 0 for name in ("y1", "y2")):
                    sql(lab, "BEGIN; ALTER TABLE services DISABLE TRIGGER kongops_freeze_guard; "
                             "UPDATE services SET retries = retries + 1 WHERE id = (SELECT id FROM services "
                             "ORDER BY id LIMIT 1); ALTER TABLE services ENABLE TRIGGER kongops_freeze_guard; COMMIT")
                    wrote["at"] = time.monotonic()
                    return
                time.sleep(0.3)

        watcher = threading.Thread(target=write_past_the_freeze_once_y_gets_traffic)
        watcher.start()
        run, summary = run_under_load(lab, "upgrade_dual_cluster", fast_gate(lab.run_dir), tmp_path)
        watcher.join(timeout=60)
        assert "at" in wrote, "Y never got traffic"
        assert run.rc != 0, run.explain()
        assert "failed in phase 'verify_before_point_of_no_return'" in run.stdout, run.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        report = read_report(lab, X, Y)
        assert report["rollback"]["traffic_on_x"] is True, report["rollback"]
        assert_back_on_x(lab, X)
