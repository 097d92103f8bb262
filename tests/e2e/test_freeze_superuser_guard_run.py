"""With a superuser connection the freeze cannot be lifted by Kong's role (real Kong, dual-cluster).

Dual-cluster 3.9.0 -> 3.9.1 under load with kong_upgrade_pg_superuser set: while traffic moves, the kong
role tries what tests/e2e/test_freeze_bypass.py does (disable the guard trigger on services and write).
Here the superuser guard refuses it, nothing is written, and the run completes: Y's database is thawed,
X's keeps its freeze with the superuser guard as the retired copy, and the superuser's password appears in
no output of the run.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg2
import pytest
from e2e_helpers import _haproxy_servers, assert_upgraded, fast_gate, read_report, run_under_load, sql
from labfixtures import running_lab

from labctl.pg import ADMIN_USER

X, Y = "3.9.0", "3.9.1"


# extended (left out of `make test`, second cut): a dual-cluster run with the superuser guard; the guard itself is checked on real Kong by
# tests/integration/test_freeze_superuser_guard.py.
@pytest.mark.extended
def test_with_the_superuser_guard_kong_cannot_write_past_the_freeze_and_the_run_completes(tmp_path):
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2", kong="real") as lab:
        password = json.loads((lab.run_dir / "secrets.json").read_text())["pg_admin_password"]
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_pg_superuser=ADMIN_USER,
                     kong_upgrade_pg_superuser_password=password)
        tried = {}

        def try_to_write_past_the_freeze_once_y_gets_traffic():
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                weights = {name: int(weight) for name, _state, weight in _haproxy_servers(lab)}
                if any(weights.get(name, 0) > 0 for name in ("y1", "y2")):
                    try:
                        sql(lab, "BEGIN; ALTER TABLE services DISABLE TRIGGER kongops_freeze_guard; "
                                 "UPDATE services SET retries = retries + 1 WHERE id = (SELECT id FROM services "
                                 "ORDER BY id LIMIT 1); ALTER TABLE services ENABLE TRIGGER kongops_freeze_guard; "
                                 "COMMIT")
                        tried["error"] = None
                    except psycopg2.Error as exc:
                        tried["error"] = str(exc)
                    return
                time.sleep(0.3)

        watcher = threading.Thread(target=try_to_write_past_the_freeze_once_y_gets_traffic)
        watcher.start()
        run, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        watcher.join(timeout=60)
        assert "error" in tried, "Y never got traffic"
        assert tried["error"] and "its superuser guard refuses ALTER TABLE by role kong" in tried["error"], tried
        assert run.rc == 0, run.explain()
        assert_upgraded(lab, summary, Y)
        report = read_report(lab, X, Y)
        assert report["status"] == "succeeded" and report["freeze_lifted"] is True
        y_database = report["database_in_use"]
        assert y_database != "kong"
        # X's database, the retired copy, keeps its freeze and its superuser guard; Y's holds neither.
        assert {name for (name,) in sql(lab, "SELECT evtname FROM pg_event_trigger")} == \
            {"kongops_freeze_ddl", "kongops_freeze_drop"}
        assert sql(lab, "SELECT count(*) FROM kongops_freeze") == [(1,)]
        assert sql(lab, "SELECT count(*) FROM pg_event_trigger", database=y_database) == [(0,)]
        assert sql(lab, "SELECT to_regclass('kongops_freeze') IS NULL", database=y_database) == [(True,)]
        assert password not in run.stdout and password not in run.stderr
