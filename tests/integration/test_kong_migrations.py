"""kong_migrations on real Kong: 2.8.5 -> 3.4.2 -> 3.9.1 with the new binary against x1's kong.conf.

Each state runs four ways (check, real, check again, real again); check mode's plan must
be what the real run did. The migration counts are what real Kong does (2.8.5 -> 3.4.2:
15 new, `up` executes 11 and leaves 4 pending, the teardowns of core, http-log,
pre-function and post-function; 3.4.2 -> 3.9.1: 9 new, 4 executed, 5 pending). The tests
run in file order on one lab and build on each other (the database moves from 2.8.5 to
3.4.2 to 3.9.1), so run the file whole.
"""

from __future__ import annotations

import time

import pytest
from ansible_runner import four_ways, run_module, run_sequence
from itlab import http_request, http_status, in_background, lab_session, poll, strip_conditional, subcommands

X, Y, Z = "2.8.5", "3.4.2", "3.9.1"
OTHER_OWNER = "it-other-node-7f3a"
REGEX_ROUTE = "svc2-regex"  # the seed's /regex2/\d+$ (a regex path in 2.x, rewritten to ~/regex2/\d+$ by 3.0's up)


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "1", "--y-nodes", "1") as lab:
        lab.binaries = {X: lab.host("x1")["kong_executable"], Y: lab.host("y1")["kong_executable"], Z: lab.install(Z)}
        yield lab


def args(lab, version, state, **extra):
    return {"kong_executable": lab.binaries[version], "conf": lab.host("x1")["kong_conf_path"], "state": state,
            **extra}


def on_database(database, lab):
    """Options that point x1's kong.conf at another database of the same server."""
    return {"environment": {"pg_database": database}, "pg_password": lab.password}


def total(section):
    return sum(len(names) for names in section.values())


def assert_plan_was_the_outcome(check, real):
    definite, conditional = strip_conditional(check["planned"])
    ran = subcommands(real["commands"])
    assert ran[:len(definite)] == definite, (check["planned"], ran)
    assert ran[len(definite):] in ([], conditional), (check["planned"], ran)


def hold_lock(lab, database=None, seconds=120):
    lab.sql("INSERT INTO locks (key, owner, ttl) VALUES ('migrations', %s, now() + make_interval(secs => %s))",
            (OTHER_OWNER, seconds), database=database)


def release_lock(lab, database=None):
    lab.sql("DELETE FROM locks WHERE key = 'migrations' AND owner = %s", (OTHER_OWNER,), database=database)


def lock_rows(lab, database=None):
    return lab.sql("SELECT owner FROM locks WHERE key = 'migrations'", database=database)


def lock_reads(lab, database):
    """How often the locks table was read (PostgreSQL's scan counters). `kong migrations list` and
    `status` never read it; kong_migrations does, before it runs anything."""
    rows = lab.sql("SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                   "WHERE relname = 'locks'", database=database)
    return int(rows[0][0])


def served_by_regex_route(lab, node="x1"):
    """Whether node's proxy serves /regex2/42 through the seed's regex route (its request-transformer
    tags the upstream request), not through the root route `/`."""
    status, body = http_request(lab.host(node)["kong_proxy_url"] + "/regex2/42")
    return status == 200 and body["headers"].get("x-lab-route") == REGEX_ROUTE


def test_node_info_of_a_2_8_node_before_the_upgrade(lab):
    """kong_node_info against the 2.8.5 X node: no /status/ready before 3.3, so readiness is unknown."""
    x1 = lab.host("x1")
    node = run_module("kong_node_info", {"admin_url": x1["kong_admin_url"], "status_url": x1["kong_status_url"],
                                         "kong_executable": x1["kong_executable"], "expected_version": X})
    assert not node.failed, node.get("msg")
    facts = node["node"]
    assert facts["version"] == facts["cli_version"] == X and facts["edition"] == "community"
    assert (facts["mode"], facts["database"], facts["database_reachable"]) == ("traditional", "postgres", True)
    assert facts["ready"] is None


def test_status_reports_the_new_migrations_of_3_4_and_changes_nothing(lab):
    results = four_ways("kong_migrations", args(lab, Y, "status"), expect_change=False)
    state = results[1]["state_before"]
    assert state["state"] == "new" and not state["pending"]
    # kong-facts 3.4: 2.8.x -> 3.4 processes 15 migrations.
    assert total(state["new"]) == 15
    assert state["new"]["core"] == ["016_280_to_300", "017_300_to_310", "018_310_to_320", "019_320_to_330",
                                    "020_330_to_340"]
    assert results[1]["kong_version"] == Y and results[1]["planned"] == [] and results[1]["commands"] == []
    old = run_module("kong_migrations", args(lab, X, "status"))
    assert not old.failed and old["state_before"]["state"] == "up_to_date" and old["kong_version"] == X


def test_bootstrapped_changes_nothing_on_an_existing_cluster(lab):
    results = four_ways("kong_migrations", args(lab, Y, "bootstrapped"), expect_change=False)
    assert results[0]["planned"] == [] and results[1]["commands"] == []


def test_up_refuses_a_database_without_kong_schema(lab):
    lab.create_database("kong_empty")
    result = run_module("kong_migrations", args(lab, Y, "up", **on_database("kong_empty", lab)))
    assert result.failed
    assert "needs bootstrapping" in result["msg"] and "allow_bootstrap" in result["msg"]
    assert result["commands"] == []
    assert lab.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database="kong_empty") == [(0,)]


def test_bootstrapped_creates_the_schema_of_an_empty_database_once(lab):
    results = four_ways("kong_migrations", args(lab, Y, "bootstrapped", **on_database("kong_empty", lab)))
    check, real = results[0], results[1]
    assert check["planned"] == ["migrations bootstrap"]
    assert_plan_was_the_outcome(check, real)
    assert real["state_before"]["needs_bootstrap"] and real["state_after"]["state"] == "up_to_date"


@pytest.mark.parametrize("state", ["up", "finished"])
def test_a_live_lock_is_reported_with_owner_and_expiry(lab, state):
    hold_lock(lab)
    try:
        started = time.monotonic()
        result, after = run_sequence("kong_migrations", [(args(lab, Y, state, lock_wait_timeout=2), False),
                                                         (args(lab, Y, "status"), False)])
        elapsed = time.monotonic() - started
    finally:
        rows = lock_rows(lab)
        release_lock(lab)
    assert result.failed
    assert OTHER_OWNER in result["msg"] and "until 20" in result["msg"] and "(live)" in result["msg"]
    assert "lock_wait_timeout=2" in result["msg"]
    assert rows == [(OTHER_OWNER,)], "the module must never delete another node's live lock"
    assert elapsed < 30, "lock_wait_timeout must bound the wait, not Kong's 60 s --lock-timeout"
    assert after["state_before"]["state"] == "new" and total(after["state_before"]["new"]) == 15
    # The read-only status reports the live lock (preflight refuses to start on it).
    assert after["lock"]["owner"] == OTHER_OWNER and after["lock"]["expired"] is False


def test_up_2_8_to_3_4_expands_and_x_keeps_serving(lab):
    assert served_by_regex_route(lab)
    results = four_ways("kong_migrations", args(lab, Y, "up"))
    check, real = results[0], results[1]
    assert check["planned"] == ["migrations up"]
    assert_plan_was_the_outcome(check, real)
    after = real["state_after"]
    # Real Kong: 15 processed, 11 executed, 4 pending (pre- and post-function have a teardown from 3.0 too;
    # kong-facts 3.4 said 13 and 2).
    assert after["state"] == "pending" and not after["new"]
    assert after["pending"] == {"core": ["016_280_to_300"], "http-log": ["001_280_to_300"],
                                "post-function": ["001_280_to_300"], "pre-function": ["001_280_to_300"]}
    assert total(after["executed"]) - total(real["state_before"]["executed"]) == 11
    assert real["waited_for_lock_seconds"] == 0
    assert "pending: 4" in real["diff"]["after"]
    assert http_status(lab.host("x1")["kong_proxy_url"] + "/") == 200, "X must keep serving after up (expand)"
    # 016_280_to_300 rewrote the regex path to 3.0's ~ form during up; 2.8.5 still routes it, even after its
    # router is rebuilt (a route written through its Admin API): 2.8 accepts the ~ prefix.
    assert lab.sql("SELECT paths FROM routes WHERE name = %s", (REGEX_ROUTE,)) == [(["~/regex2/\\d+$"],)]
    x_admin = lab.host("x1")["kong_admin_url"]
    status, _body = http_request(x_admin + "/services/echo/routes", "POST", {"name": "rebuild", "paths": ["/rebuild"]})
    assert status == 201
    try:
        poll(lambda: http_status(lab.host("x1")["kong_proxy_url"] + "/rebuild") == 200, 30, "x1's router rebuilt")
        assert served_by_regex_route(lab), "a 2.8.5 node lost the regex route that up rewrote to ~..."
    finally:
        assert http_request(x_admin + "/routes/rebuild", "DELETE")[0] == 204


def test_up_of_the_next_version_refuses_while_the_previous_upgrade_is_pending(lab):
    result = run_module("kong_migrations", args(lab, Z, "up"))
    assert result.failed and result["commands"] == []
    assert "pending migrations from an earlier upgrade" in result["msg"] and "state=finished" in result["msg"]


def test_finished_2_8_to_3_4_contracts(lab):
    results = four_ways("kong_migrations", args(lab, Y, "finished"))
    check, real = results[0], results[1]
    assert check["planned"] == ["migrations finish"]
    assert_plan_was_the_outcome(check, real)
    assert real["state_after"]["state"] == "up_to_date" and not real["state_after"]["pending"]


def test_up_3_4_to_3_9(lab):
    results = four_ways("kong_migrations", args(lab, Z, "up"))
    check, real = results[0], results[1]
    assert check["planned"] == ["migrations up"]
    assert_plan_was_the_outcome(check, real)
    after = real["state_after"]
    # Real Kong (as kong-facts 3.4 says): 3.4 -> 3.9 processes 9, executes 4 and leaves 5 pending.
    assert after["pending"] == {"acme": ["003_350_to_360"], "ai-proxy": ["001_360_to_370"],
                                "opentelemetry": ["001_331_to_332"], "rate-limiting": ["006_350_to_360"],
                                "response-ratelimiting": ["001_350_to_360"]}
    assert total(after["executed"]) - total(real["state_before"]["executed"]) == 4


def test_finished_3_4_to_3_9(lab):
    results = four_ways("kong_migrations", args(lab, Z, "finished"))
    check, real = results[0], results[1]
    assert check["planned"] == ["migrations finish"]
    assert_plan_was_the_outcome(check, real)
    assert real["state_after"]["state"] == "up_to_date"


def test_a_lock_released_by_the_other_node_is_waited_for(lab):
    """kong_empty was bootstrapped by 3.4.2: 3.9.1's up waits for the other node, then runs.

    The lock is released once the module has read it twice (PostgreSQL's scan counters of the locks
    table): once for its result, once right before it would run `up`, after which it has decided to
    wait (it re-reads every 2 s). So it has waited, whatever the machine's speed."""
    hold_lock(lab, database="kong_empty")
    reads = lock_reads(lab, "kong_empty")
    running = in_background(lambda: run_module("kong_migrations", args(
        lab, Z, "up", lock_wait_timeout=120, **on_database("kong_empty", lab))))
    poll(lambda: lock_reads(lab, "kong_empty") >= reads + 2 or running.done(), 120,
         "kong_migrations to find the lock held", interval=0.1)
    assert not running.done(), f"kong_migrations did not wait for the lock: {running.result()}"
    release_lock(lab, database="kong_empty")
    real = running.result(timeout=180)
    assert not real.failed, real.get("msg")
    assert real.changed and real["waited_for_lock_seconds"] >= 1
    assert subcommands(real["commands"]) == ["migrations up"]
    assert real["state_after"]["state"] == "pending"
    again = run_module("kong_migrations", args(lab, Z, "up", **on_database("kong_empty", lab)), check=True)
    assert not again.failed and not again.changed


def test_finished_straight_from_2_8_runs_up_then_the_predicted_finish(lab):
    """The in-place path: one state=finished from 2.8.5 to 3.4.2; check mode marks the finish conditional."""
    lab.create_database("kong_inplace")
    boot = run_module("kong_migrations", args(lab, X, "bootstrapped", **on_database("kong_inplace", lab)))
    assert not boot.failed and boot.changed
    results = four_ways("kong_migrations", args(lab, Y, "finished", **on_database("kong_inplace", lab)))
    check, real = results[0], results[1]
    assert check["planned"] == ["migrations up", "migrations finish (if up leaves migrations pending)"]
    assert subcommands(real["commands"]) == ["migrations up", "migrations finish"]
    assert real["state_after"]["state"] == "up_to_date"
