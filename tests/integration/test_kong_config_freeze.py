"""kong_config_freeze on real Kong: every writer is rejected while frozen (the Admin API of a 3.4.2 X
node and of a 3.9.1 Y node: creates, updates and deletes of services, routes, consumers,
credentials and plugins; direct SQL), real `kong migrations up` and `finish` from 3.4.2 to 3.9.1
still run on the frozen database, the freeze travels inside a dump, and thaw opens writes
again. The tests run in order on one lab and build on each other.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psycopg2
import pytest
from ansible_runner import four_ways, run_module, run_sequence, run_tasks
from itlab import http_request, lab_session, poll

X, Y = "3.4.2", "3.9.1"
RUN = "it-upgrade-42"
REASON = "integration test upgrade"
FROZEN_MESSAGE = "Kong configuration is frozen for an upgrade"


def insert_service(name):
    return ("INSERT INTO services (id, ws_id, name, host, port, protocol) SELECT gen_random_uuid(), id, "
            f"'{name}', 'example.test', 80, 'http' FROM workspaces LIMIT 1")


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "1", "--y-nodes", "1",
                     "--seed-size", "200") as lab:
        yield lab


@pytest.fixture(scope="module")
def seen():
    """Values a test hands to the next one (fingerprints)."""
    return {}


def freeze_args(lab, state, database=None, **extra):
    return {**lab.pg_args(database), "state": state, "run_id": RUN, "reason": REASON, **extra}


def admin(lab, node):
    return lab.host(node)["kong_admin_url"]


def assert_admin_write_rejected(lab, node, name):
    """Real Kong answers 500 to each write the freeze's trigger refuses, and logs the trigger's message."""
    url = admin(lab, node)
    writes = [("POST", "/services", {"name": name, "url": "http://127.0.0.1:9"}),
              ("DELETE", "/services/svc1", None),
              ("PATCH", "/routes/svc1-path", {"paths": [f"/{name}"]}),
              ("POST", "/consumers", {"username": name}),
              ("POST", "/consumers/consumer1/key-auth", {"key": f"{name}-key"}),
              ("POST", "/plugins", {"name": "cors"})]
    for method, path, body in writes:
        status, answer = http_request(url + path, method, body)
        assert status == 500, (node, method, path, status, answer)
    assert http_request(url + f"/services/{name}")[0] == 404
    assert http_request(url + "/services/svc1")[0] == 200
    assert http_request(url + "/routes/svc1-path")[1]["paths"] == ["/svc1"]
    assert http_request(url + f"/consumers/{name}")[0] == 404
    assert not [p for p in http_request(url + "/plugins?size=1000")[1]["data"] if p["name"] == "cors"]
    log = Path(lab.host(node)["kong_prefix"]) / "logs" / "error.log"
    poll(lambda: FROZEN_MESSAGE in log.read_text(encoding="utf-8") and RUN in log.read_text(encoding="utf-8"),
         5, f"the freeze message in {node}'s error.log")


def assert_sql_rejected(lab, statement, database=None):
    with pytest.raises(psycopg2.Error) as info:
        lab.sql(statement, database=database)
    assert info.value.pgcode == "25006"  # read_only_sql_transaction
    assert FROZEN_MESSAGE in str(info.value) and f"by run {RUN}" in str(info.value)
    assert REASON in (info.value.diag.message_hint or "")


def test_freeze_four_ways(lab, seen):
    results = four_ways("kong_config_freeze", freeze_args(lab, "frozen"))
    check, real = results[0], results[1]
    assert check["frozen"] and real["frozen"] and real["enforced"]
    assert real["run_id"] == RUN and real["frozen_at"].endswith("Z")
    assert {"services", "routes", "consumers", "plugins", "keyauth_credentials"} <= set(real["guarded_tables"])
    assert not {"locks", "schema_meta", "cluster_events"} & set(real["guarded_tables"])
    assert real["newly_guarded"] == real["guarded_tables"] and results[3]["newly_guarded"] == []
    assert real["fingerprint"]["counts"]["services"] > 0
    assert results[3]["fingerprint"] == real["fingerprint"]
    assert "frozen: True" in real["diff"]["after"]
    seen["first"] = real["fingerprint"]


def test_another_run_cannot_take_over_or_lift_the_freeze(lab):
    *refused, status = run_sequence("kong_config_freeze", [
        ({**freeze_args(lab, "frozen"), "run_id": "someone-else"}, False),
        ({**freeze_args(lab, "thawed"), "run_id": "someone-else"}, False),
        (freeze_args(lab, "status"), False)])
    for result in refused:
        assert result.failed and not result.changed
        assert f"frozen by run {RUN}" in result["msg"] and "force=true" in result["msg"]
    assert status["frozen"] and status["run_id"] == RUN


def test_admin_api_writes_of_an_x_node_are_rejected(lab):
    assert_admin_write_rejected(lab, "x1", "frozen-by-x")


def test_direct_sql_writes_are_rejected_and_runtime_tables_stay_writable(lab):
    assert_sql_rejected(lab, insert_service("sql-write"))
    assert_sql_rejected(lab, "UPDATE routes SET name = name")
    assert_sql_rejected(lab, "DELETE FROM consumers")
    assert_sql_rejected(lab, "TRUNCATE plugins CASCADE")
    lab.sql("INSERT INTO cluster_events (id, node_id, at, expire_at, channel, data) "
            "VALUES (gen_random_uuid(), gen_random_uuid(), now(), now() + interval '1 hour', 'it', 'runtime write')")
    lab.sql("DELETE FROM cluster_events WHERE channel = 'it'")


def test_migrations_up_runs_while_frozen_and_y_node_writes_are_rejected(lab):
    y1 = lab.host("y1")
    up = run_module("kong_migrations", {"kong_executable": y1["kong_executable"],
                                        "conf": lab.host("x1")["kong_conf_path"], "state": "up"})
    assert not up.failed, up.get("msg")
    assert up.changed and up["state_after"]["state"] in ("pending", "up_to_date")
    lab.start_node("y1")
    status, body = http_request(admin(lab, "y1") + "/")
    assert status == 200 and body["version"] == Y
    assert_admin_write_rejected(lab, "y1", "frozen-by-y")


def test_verified_after_up_proves_nothing_changed(lab, seen):
    result = run_module("kong_config_freeze", freeze_args(lab, "verified"))
    assert not result.failed, result.get("msg")
    assert result["unchanged"]["unchanged"] and result["differences"] == {}
    assert result["fingerprint"]["keys_hash"] == seen["first"]["keys_hash"]
    assert set(result["guarded_tables"]) >= set(result["newly_guarded"])
    seen["verified"] = result


def test_verified_in_the_background_is_the_same_proof_collected_later(lab, seen, tmp_path):
    """background=true (in-place proves the configuration while Y starts): the module returns a job id at
    once, the proof's outcome waits in a private file without the password, and collecting it returns
    what the foreground proof returned, or fails as it fails; a job is collected once."""
    jobs = tmp_path / "jobs"
    started, failing = run_tasks([
        ("kong_config_freeze", freeze_args(lab, "verified", background=True, job_dir=str(jobs)), False),
        ("kong_config_freeze", freeze_args(lab, "verified", background=True, job_dir=str(jobs),
                                           expected_fingerprint="0" * 64), False)])
    for result in (started, failing):
        assert not result.failed and not result.changed, result.get("msg")
        assert set(result) >= {"job_id", "job_dir"} and "fingerprint" not in result, result
    outcome = jobs / (started["job_id"] + ".json")
    poll(outcome.exists, 60, "the background proof's outcome")
    assert jobs.stat().st_mode & 0o777 == 0o700 and outcome.stat().st_mode & 0o777 == 0o600
    assert lab.password.encode() not in outcome.read_bytes()

    collected, refused, again = run_tasks([
        ("kong_config_freeze", {"job_id": started["job_id"], "job_dir": str(jobs)}, False),
        ("kong_config_freeze", {"job_id": failing["job_id"], "job_dir": str(jobs)}, False),
        ("kong_config_freeze", {"job_id": started["job_id"], "job_dir": str(jobs)}, False)])
    assert not collected.failed, collected.get("msg")
    for key in ("unchanged", "differences", "fingerprint", "frozen", "run_id"):
        assert collected[key] == seen["verified"][key], key
    assert refused.failed and "changed since it was frozen" in refused["msg"], refused.get("msg")
    assert refused["unchanged"]["unchanged"] is False
    assert again.failed and "there is no job" in again["msg"], again.get("msg")
    assert list(jobs.iterdir()) == []


def test_a_background_proof_that_hangs_times_out_and_one_that_is_killed_says_so(tmp_path):
    """A psql that never ends (a stand-in in pg_bin_dir): a collect with a shorter wait says the job is still
    at work; killed, the job is named as dead."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    psql_pid = tmp_path / "psql.pid"
    (bin_dir / "psql").write_text(f"#!/bin/sh\necho $$ > {psql_pid}\nexec sleep 300\n")
    (bin_dir / "psql").chmod(0o755)
    jobs = tmp_path / "jobs"
    args = {"pg_bin_dir": str(bin_dir), "pg_password": "never-shown-4c1", "state": "verified", "background": True,
            "job_dir": str(jobs)}
    started = run_module("kong_config_freeze", args)
    assert not started.failed, started.get("msg")
    try:
        poll(psql_pid.exists, 60, "the background proof to run psql")
        waited = run_module("kong_config_freeze", {"job_id": started["job_id"], "job_dir": str(jobs),
                                                   "wait_timeout": 1})
        assert waited.failed and "is still at work after 1 s" in waited["msg"], waited.get("msg")
        os.kill(int((jobs / (started["job_id"] + ".pid")).read_text()), signal.SIGKILL)
        dead = run_module("kong_config_freeze", {"job_id": started["job_id"], "job_dir": str(jobs)})
        assert dead.failed and "ended without an outcome" in dead["msg"], dead.get("msg")
    finally:
        if psql_pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(psql_pid.read_text()), signal.SIGKILL)


def test_thaw_four_ways_then_every_writer_is_accepted(lab):
    results = four_ways("kong_config_freeze", freeze_args(lab, "thawed"))
    assert not results[1]["frozen"] and results[1]["guarded_tables"] == []
    for node in ("x1", "y1"):
        status, body = http_request(admin(lab, node) + "/services", "POST",
                                    {"name": f"after-thaw-{node}", "url": "http://127.0.0.1:9"})
        assert status == 201, (node, status, body)
    lab.sql("UPDATE services SET retries = 4 WHERE name = 'after-thaw-x1'")
    assert lab.sql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'kongops_freeze%'") == [(0,)]
    assert lab.sql("SELECT to_regclass('kongops_freeze') IS NULL") == [(True,)]


def test_a_write_made_before_the_next_freeze_changes_the_fingerprint(lab, seen):
    result = run_module("kong_config_freeze", freeze_args(lab, "frozen"))
    assert not result.failed and result.changed
    second = result["fingerprint"]
    assert second["hash"] != seen["first"]["hash"] and second["keys_hash"] != seen["first"]["keys_hash"]
    assert second["counts"]["services"] == seen["first"]["counts"]["services"] + 2
    seen["second"] = second


def test_migrations_finish_runs_while_frozen(lab, seen):
    finish, verified = run_tasks([
        ("kong_migrations", {"kong_executable": lab.host("y1")["kong_executable"],
                             "conf": lab.host("x1")["kong_conf_path"], "state": "finished"}, False),
        ("kong_config_freeze", freeze_args(lab, "verified"), False)])
    assert not finish.failed, finish.get("msg")
    assert finish["state_after"]["state"] == "up_to_date"
    assert not verified.failed and verified["unchanged"]["unchanged"], verified.get("msg")
    assert verified["fingerprint"]["keys_hash"] == seen["second"]["keys_hash"]
    assert_sql_rejected(lab, "DELETE FROM routes")


def test_the_freeze_travels_into_a_restored_database_with_the_same_fingerprint(lab, seen):
    backup = {**lab.pg_args(), "backup_dir": str(lab.run_dir / "backups" / "freeze"), "label": "frozen"}
    taken, restored, status = run_tasks([
        ("pg_backup", backup, False),
        ("pg_backup", {**backup, "state": "restored", "target_database": "kong_y"}, False),
        ("kong_config_freeze", freeze_args(lab, "status", database="kong_y", compare_database="kong"), False)])
    assert not taken.failed and taken["verified"], taken.get("msg")
    assert not restored.failed and restored.changed, restored.get("msg")
    assert not status.failed, status.get("msg")
    assert status["frozen"] and status["run_id"] == RUN
    assert status["differences"] == {}
    assert status["fingerprint"]["hash"] == status["compare_fingerprint"]["hash"]
    # finish ran since the second freeze: the schema part of the fingerprint moved, the entities did not.
    assert status["fingerprint"]["keys_hash"] == seen["second"]["keys_hash"]
    assert_sql_rejected(lab, "DELETE FROM services", database="kong_y")


def test_a_write_into_one_database_shows_in_the_comparison(lab):
    thawed = run_module("kong_config_freeze", freeze_args(lab, "thawed", database="kong_y"))
    assert not thawed.failed and thawed.changed and not thawed["frozen"]
    lab.sql(insert_service("only-in-y"), database="kong_y")
    compared, thawed = run_sequence("kong_config_freeze", [
        (freeze_args(lab, "status", database="kong_y", compare_database="kong"), False),
        (freeze_args(lab, "thawed"), False)])
    assert compared.failed and "do not hold the same configuration" in compared["msg"]
    assert "services" in compared["differences"]
    assert not thawed.failed and not thawed["frozen"]
    for database in ("kong", "kong_y"):
        assert lab.sql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'kongops_freeze%'",
                       database=database) == [(0,)]
        assert lab.sql("SELECT count(*) FROM pg_proc WHERE proname = 'kongops_freeze_guard'",
                       database=database) == [(0,)]


@pytest.fixture(scope="module")
def dbless_lab():
    with lab_session("--mode", "dbless", "--x-version", X, "--y-version", Y, "--x-nodes", "1",
                     "--y-nodes", "0") as lab:
        yield lab


def test_a_dbless_node_gets_a_fingerprint_but_no_enforcement(dbless_lab):
    x1 = dbless_lab.host("x1")
    args = {"mode": "dbless", "admin_url": x1["kong_admin_url"], "state": "frozen"}
    results = four_ways("kong_config_freeze", args, expect_change=False)
    real = results[1]
    assert real["enforced"] is False and real["frozen"] is False
    _status, node_status = http_request(x1["kong_admin_url"] + "/status")
    assert real["fingerprint"]["hash"] == node_status["configuration_hash"]
    verified = run_module("kong_config_freeze", {"mode": "dbless", "admin_url": x1["kong_admin_url"],
                                                 "state": "verified",
                                                 "expected_fingerprint": real["fingerprint"]["hash"]})
    assert not verified.failed and verified["unchanged"]["unchanged"]
    # Nothing stops a DB-less node from taking a new configuration; verified notices it.
    status, body = http_request(x1["kong_admin_url"] + "/config", "POST", {
        "_format_version": "3.0", "services": [{"name": "changed", "url": "http://127.0.0.1:9"}]})
    assert status == 201, body
    changed = run_module("kong_config_freeze", {"mode": "dbless", "admin_url": x1["kong_admin_url"],
                                                "state": "verified",
                                                "expected_fingerprint": real["fingerprint"]["hash"]})
    assert changed.failed and "changed" in changed["msg"]
    assert changed["fingerprint"]["hash"] != real["fingerprint"]["hash"]
    # Only hashes were compared: the difference is the fingerprint, expected against current.
    assert changed["differences"] == {"fingerprint": {"expected": real["fingerprint"]["hash"],
                                                      "hash": changed["fingerprint"]["hash"],
                                                      "keys_hash": changed["fingerprint"]["keys_hash"]}}
