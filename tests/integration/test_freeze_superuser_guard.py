"""kong_config_freeze with a superuser connection, on the lab's PostgreSQL 15 and real Kong 2.8.5 -> 3.4.2:
Kong's role (`kong`, owner of Kong's tables) cannot lift the freeze by hand (disable, rename, replace or drop a
guard trigger, replace or drop the guard function, drop the freeze table, delete the freeze record), each refused
with the guard's message; real `kong migrations up` and `finish` still run on the guarded database and the tables
they create get guarded; a thaw without the superuser is refused and changes nothing; pg_backup of the guarded
database restores as `kong` into another database and into the same one (force), each holding the freeze without
the superuser guard, as the modules' docs say; a thaw with the superuser removes everything.

The lab's superuser is `lab_admin` (labctl.pg, password in the lab's secrets.json). The tests run in order on
one lab and build on each other.
"""

from __future__ import annotations

import subprocess

import psycopg2
import pytest
from ansible_runner import four_ways, run_module, run_sequence, run_tasks
from itlab import lab_session

from labctl.pg import ADMIN_USER
from labctl.proc import clean_env

X, Y = "2.8.5", "3.4.2"
RUN = "it-superuser-guard"
GUARD_REFUSES = "its superuser guard refuses"
FROZEN_MESSAGE = "Kong configuration is frozen for an upgrade"
EVENT_TRIGGERS = {"kongops_freeze_ddl", "kongops_freeze_drop"}


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "1", "--y-nodes", "1",
                     "--seed-size", "100") as lab:
        yield lab


def superuser(lab):
    return {"superuser_pg_user": ADMIN_USER, "superuser_pg_password": lab.secrets["pg_admin_password"]}


def freeze_args(lab, state, database=None, with_superuser=True, **extra):
    return {**lab.pg_args(database), "state": state, "run_id": RUN, **(superuser(lab) if with_superuser else {}),
            **extra}


def admin_sql(lab, statement, database="kong"):
    """One statement as the superuser (to inspect what `kong` may not see or change)."""
    conn = psycopg2.connect(host=lab.vars["kong_pg_host"], port=int(lab.vars["kong_pg_port"]), user=ADMIN_USER,
                            password=lab.secrets["pg_admin_password"], dbname=database, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def guard_state(lab, database="kong"):
    """What the database holds of the freeze and of its superuser guard, read as the superuser."""
    return {
        "event_triggers": dict(admin_sql(lab, "SELECT evtname, evtenabled FROM pg_event_trigger", database)),
        "guard_schema_owner": admin_sql(lab, "SELECT nspowner::regrole::text FROM pg_namespace "
                                             "WHERE nspname = 'kongops_guard'", database),
        "protect_triggers": sorted(r[0] for r in admin_sql(
            lab, "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'kongops_freeze_protect%'", database)),
        "guard_triggers": admin_sql(lab, "SELECT count(*) FILTER (WHERE tgenabled = 'O'), count(*) FROM pg_trigger "
                                         "WHERE tgname IN ('kongops_freeze_guard', 'kongops_freeze_guard_truncate')",
                                    database)[0],
        "freeze_rows": (admin_sql(lab, "SELECT count(*) FROM kongops_freeze", database)[0][0]
                        if admin_sql(lab, "SELECT to_regclass('kongops_freeze') IS NOT NULL", database)[0][0] else -1),
        "guard_function": admin_sql(lab, "SELECT to_regprocedure('kongops_freeze_guard()') IS NOT NULL",
                                    database)[0][0],
    }


SUPERUSER_GUARD = {"event_triggers": {"kongops_freeze_ddl": "A", "kongops_freeze_drop": "A"},
                   "guard_schema_owner": [(ADMIN_USER,)],
                   "protect_triggers": ["kongops_freeze_protect", "kongops_freeze_protect_truncate"]}
NO_SUPERUSER_GUARD = {"event_triggers": {}, "guard_schema_owner": [], "protect_triggers": []}


def assert_guarded_by_superuser(state):
    assert {k: state[k] for k in SUPERUSER_GUARD} == SUPERUSER_GUARD
    enabled, total = state["guard_triggers"]
    assert total > 30 and enabled == total and state["freeze_rows"] == 1 and state["guard_function"]


def assert_plain_freeze(state):
    """The freeze without the superuser guard: its record and every guard trigger, nothing else."""
    assert {k: state[k] for k in NO_SUPERUSER_GUARD} == NO_SUPERUSER_GUARD
    enabled, total = state["guard_triggers"]
    assert total > 30 and enabled == total and state["freeze_rows"] == 1 and state["guard_function"]


def test_freeze_with_the_superuser_guard_four_ways(lab):
    results = four_ways("kong_config_freeze", freeze_args(lab, "frozen"))
    check, real = results[0], results[1]
    assert check["superuser_guard"] and real["superuser_guard"] and results[3]["superuser_guard"]
    assert real["frozen"] and real["run_id"] == RUN and {"services", "routes", "plugins"} <= set(real["guarded_tables"])
    assert "superuser guard: False" in real["diff"]["before"] and "superuser guard: True" in real["diff"]["after"]
    assert_guarded_by_superuser(guard_state(lab))


# What `kong` could do to lift the freeze without the guard, and what the guard says it would do.
REFUSED = [
    ("ALTER TABLE services DISABLE TRIGGER kongops_freeze_guard", "leave a guard trigger disabled"),
    ("ALTER TABLE routes DISABLE TRIGGER USER", "leave a guard trigger disabled"),
    ("ALTER TABLE plugins ENABLE REPLICA TRIGGER kongops_freeze_guard", "leave a guard trigger disabled"),
    ("ALTER TRIGGER kongops_freeze_guard ON services RENAME TO renamed", "renamed"),
    ("CREATE OR REPLACE TRIGGER kongops_freeze_guard BEFORE INSERT ON services FOR EACH ROW WHEN (false) "
     "EXECUTE FUNCTION kongops_freeze_guard()", "changed: kongops_freeze_guard on public.services"),
    ("DROP TRIGGER kongops_freeze_guard ON services", "drop the guard trigger kongops_freeze_guard on public.services"),
    ("DROP TRIGGER kongops_freeze_guard_truncate ON consumers", "drop the guard trigger kongops_freeze_guard_truncate"),
    ("CREATE OR REPLACE FUNCTION kongops_freeze_guard() RETURNS trigger LANGUAGE plpgsql AS "
     "$$ BEGIN RETURN COALESCE(NEW, OLD); END $$", "change public.kongops_freeze_guard()"),
    ("ALTER FUNCTION kongops_freeze_guard() RENAME TO renamed", "rename or remove the guard function"),
    ("DROP FUNCTION kongops_freeze_guard() CASCADE", "drop the guard function public.kongops_freeze_guard()"),
    ("ALTER TABLE kongops_freeze RENAME TO renamed", "rename or remove the freeze table"),
    ("ALTER TABLE kongops_freeze DISABLE TRIGGER kongops_freeze_protect", "change public.kongops_freeze"),
    ("DROP TRIGGER kongops_freeze_protect ON kongops_freeze", "drop the trigger kongops_freeze_protect"),
    ("DROP TABLE kongops_freeze", "drop the freeze table public.kongops_freeze"),
    ("DROP TABLE routes CASCADE", "drop the guarded table public.routes"),
    ("DROP SCHEMA public CASCADE", "drop the freeze table public.kongops_freeze"),
    ("DELETE FROM kongops_freeze", "DELETE on public.kongops_freeze by role kong: it would lift the freeze"),
    ("UPDATE kongops_freeze SET run_id = 'someone-else'", "UPDATE on public.kongops_freeze by role kong"),
    ("TRUNCATE kongops_freeze", "TRUNCATE on public.kongops_freeze by role kong: it would lift the freeze"),
]


@pytest.mark.parametrize(("statement", "would"), REFUSED, ids=[
    "disable-guard", "disable-user-triggers", "guard-replica-only", "rename-guard", "replace-guard-trigger",
    "drop-guard", "drop-truncate-guard", "replace-guard-function", "rename-guard-function", "drop-guard-function",
    "rename-freeze-table", "disable-protect", "drop-protect", "drop-freeze-table", "drop-guarded-table",
    "drop-schema-public", "delete-freeze-row", "update-freeze-row", "truncate-freeze-table"])
def test_kong_cannot_lift_the_freeze_by_hand(lab, statement, would):
    with pytest.raises(psycopg2.Error) as info:
        lab.sql(statement)
    message = str(info.value)
    assert info.value.pgcode == "42501", message  # insufficient_privilege
    assert GUARD_REFUSES in message, message
    assert f"by run {RUN}" in message or '"public"."kongops_freeze" is gone' in message, message
    assert would in message, message
    assert "superuser_pg_user" in (info.value.diag.message_hint or "")
    assert_guarded_by_superuser(guard_state(lab))


def test_what_only_a_superuser_may_do_stays_refused_to_kong(lab):
    """PostgreSQL's own refusals: the guard's event triggers, its schema and session_replication_role."""
    for statement, refusal in (("DROP EVENT TRIGGER kongops_freeze_ddl", "must be owner of event trigger"),
                               ("ALTER EVENT TRIGGER kongops_freeze_drop DISABLE", "must be owner of event trigger"),
                               ("DROP SCHEMA kongops_guard CASCADE", "must be owner of schema kongops_guard"),
                               ("SET session_replication_role = replica", "permission denied to set parameter")):
        with pytest.raises(psycopg2.Error) as info:
            lab.sql(statement)
        assert refusal in str(info.value), (statement, str(info.value))
    assert_guarded_by_superuser(guard_state(lab))


def test_a_temporary_table_does_not_shadow_the_freeze(lab):
    """The guard names its tables with their schema: a session's own `kongops_freeze` or `locks` (pg_temp is
    searched first) changes nothing."""
    for shadow in ("CREATE TEMP TABLE kongops_freeze (frozen_at timestamptz, run_id text, reason text)",
                   "CREATE TEMP TABLE locks (key text, owner text, ttl timestamptz); "
                   "INSERT INTO locks VALUES ('migrations', NULL, now() + interval '1 hour')"):
        with pytest.raises(psycopg2.Error) as info:
            lab.sql(f"{shadow}; UPDATE services SET retries = retries + 1")
        assert FROZEN_MESSAGE in str(info.value) and info.value.pgcode == "25006", str(info.value)


def test_real_kong_migrations_run_on_the_guarded_database(lab):
    """2.8.5 -> 3.4.2 creates tables and alters others as `kong`; the tables it creates are guarded by the
    next verified, run as `kong` without the superuser (as the roles' verify steps do)."""
    y1, x1 = lab.host("y1"), lab.host("x1")
    migrations = {"kong_executable": y1["kong_executable"], "conf": x1["kong_conf_path"]}
    guarded_before = guarded_tables(lab)
    up, verified = run_tasks([("kong_migrations", {**migrations, "state": "up"}, False),
                              ("kong_config_freeze", freeze_args(lab, "verified", with_superuser=False), False)])
    assert not up.failed and up.changed, up.get("msg")
    assert not verified.failed and verified["unchanged"]["unchanged"], verified.get("msg")
    assert verified["newly_guarded"], "2.8.5 -> 3.4.2 creates configuration tables; none was guarded"
    assert set(verified["newly_guarded"]) <= set(verified["guarded_tables"]) and verified["superuser_guard"]
    finish, verified_again = run_tasks([
        ("kong_migrations", {**migrations, "state": "finished"}, False),
        ("kong_config_freeze", freeze_args(lab, "verified", with_superuser=False), False)])
    assert not finish.failed and finish["state_after"]["state"] == "up_to_date", finish.get("msg")
    assert not verified_again.failed and verified_again["unchanged"]["unchanged"], verified_again.get("msg")
    assert_guarded_by_superuser(guard_state(lab))
    # Kong's migrations dropped guarded tables of 2.8 (`vaults_beta` at 3.0's finish, `ttls` at 3.4's up)
    # while they held their lock; the guard let them.
    dropped = set(guarded_before) - set(guarded_tables(lab))
    assert "vaults_beta" in dropped, (dropped, guarded_before)
    for table in verified["newly_guarded"]:  # empty so far: a TRUNCATE guard fires whatever the rows
        with pytest.raises(psycopg2.Error) as info:
            lab.sql(f'TRUNCATE "{table}" CASCADE')
        assert FROZEN_MESSAGE in str(info.value), (table, str(info.value))


def guarded_tables(lab):
    return sorted(r[0] for r in lab.sql("SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                        "WHERE t.tgname = 'kongops_freeze_guard'"))


def test_the_freeze_warns_when_kong_may_turn_the_guards_off(lab):
    """PostgreSQL 15 can grant SET on session_replication_role; with replica, the guard triggers (ENABLE
    ORIGIN, as Kong's own triggers) do not fire. The freeze says so; the write below shows why."""
    admin_sql(lab, "GRANT SET ON PARAMETER session_replication_role TO kong")
    try:
        verified = run_module("kong_config_freeze", freeze_args(lab, "verified"))
        assert not verified.failed and not verified.changed, verified.get("msg")
        assert any("may SET session_replication_role" in w and "REVOKE SET ON PARAMETER" in w
                   for w in verified.get("warnings", [])), verified.get("warnings")
        conn = lab.connect()
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                cur.execute("SET LOCAL session_replication_role = replica")
                cur.execute("UPDATE services SET retries = retries + 1")
                assert cur.rowcount > 0  # the write went through; it is rolled back below
        finally:
            conn.rollback()
            conn.close()
    finally:
        admin_sql(lab, "REVOKE SET ON PARAMETER session_replication_role FROM kong")
    quiet = run_module("kong_config_freeze", freeze_args(lab, "verified"))
    assert not quiet.failed and not quiet.get("warnings"), quiet.get("warnings")


def test_a_new_table_can_be_created_and_guarded_by_kong(lab):
    lab.sql("CREATE TABLE kongops_it_entities (id uuid PRIMARY KEY, name text)")
    guarded = run_module("kong_config_freeze", freeze_args(lab, "verified", with_superuser=False))
    assert not guarded.failed and guarded.changed and guarded["newly_guarded"] == ["kongops_it_entities"], \
        guarded.get("msg")
    with pytest.raises(psycopg2.Error) as info:
        lab.sql("INSERT INTO kongops_it_entities VALUES (gen_random_uuid(), 'x')")
    assert FROZEN_MESSAGE in str(info.value)
    with pytest.raises(psycopg2.Error) as info:
        lab.sql("DROP TABLE kongops_it_entities")
    assert "drop the guarded table public.kongops_it_entities" in str(info.value)


def test_thaw_without_the_superuser_is_refused_and_changes_nothing(lab):
    before = guard_state(lab)
    for result in run_sequence("kong_config_freeze", [(freeze_args(lab, "thawed", with_superuser=False), True),
                                                      (freeze_args(lab, "thawed", with_superuser=False), False)]):
        assert result.failed and not result.changed
        assert "made with a superuser guard" in result["msg"] and "superuser_pg_user" in result["msg"]
        assert "kongops_freeze_ddl" in result["msg"] and "Nothing was changed" in result["msg"]
    assert guard_state(lab) == before


def test_a_superuser_connection_that_is_not_a_superuser_is_refused_first(lab):
    before = guard_state(lab)
    result = run_module("kong_config_freeze", {**freeze_args(lab, "thawed", with_superuser=False),
                                               "superuser_pg_user": lab.vars["kong_pg_user"],
                                               "superuser_pg_password": lab.password})
    assert result.failed and not result.changed
    assert "is not a superuser" in result["msg"] and "Nothing was changed" in result["msg"]
    assert guard_state(lab) == before


def test_a_backup_of_the_guarded_database_restores_as_kong_without_the_superuser_guard(lab):
    backup = {**lab.pg_args(), "backup_dir": str(lab.run_dir / "backups" / "guarded"), "label": "guarded"}
    taken, restored, status = run_tasks([
        ("pg_backup", backup, False),
        ("pg_backup", {**backup, "state": "restored", "target_database": "kong_copy"}, False),
        ("kong_config_freeze", freeze_args(lab, "status", database="kong_copy", with_superuser=False), False)])
    assert not taken.failed and taken["verified"], taken.get("msg")
    assert not restored.failed and restored.changed, restored.get("msg")
    assert {"EVENT TRIGGER - kongops_freeze_ddl lab_admin", "EVENT TRIGGER - kongops_freeze_drop lab_admin",
            "SCHEMA - kongops_guard lab_admin", "TRIGGER public kongops_freeze kongops_freeze_protect kong"} \
        <= set(restored["left_out"])
    assert status["frozen"] and status["run_id"] == RUN and status["superuser_guard"] is False
    assert_plain_freeze(guard_state(lab, "kong_copy"))
    with pytest.raises(psycopg2.Error) as info:
        lab.sql("DELETE FROM services", database="kong_copy")
    assert FROZEN_MESSAGE in str(info.value)

    # Into the same database with force (the in-place restore): its own superuser guard goes with the
    # dropped database, and the restore is again the plain freeze.
    lab.stop_node("x1")
    same = run_module("pg_backup", {**backup, "state": "restored", "target_database": "kong", "force": True})
    assert not same.failed and same.changed and same["replaced"], same.get("msg")
    assert "EVENT TRIGGER - kongops_freeze_ddl lab_admin" in same["left_out"]
    assert_plain_freeze(guard_state(lab))


def test_a_restore_by_hand_leaves_a_half_guard_that_kong_thaws(lab):
    """Plain `pg_restore` as `kong` (no --exit-on-error) restores all but the event triggers: the guard's
    schema and triggers, now Kong's own, without what enforces them. Kong's role thaws that (no superuser
    needed: nothing in it is a superuser's) and nothing of it is left."""
    lab.create_database("kong_by_hand")
    env = {**clean_env(), "PGPASSWORD": lab.password, "PGHOST": lab.vars["kong_pg_host"],
           "PGPORT": str(lab.vars["kong_pg_port"]), "PGUSER": lab.vars["kong_pg_user"]}
    dump = lab.run_dir / "backups" / "guarded" / "guarded.dump"
    restored = subprocess.run(["pg_restore", "--no-owner", "-d", "kong_by_hand", str(dump)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    assert restored.returncode == 1 and "permission denied to create event trigger" in restored.stderr, \
        restored.stderr
    half = guard_state(lab, "kong_by_hand")
    assert half["event_triggers"] == {} and half["guard_schema_owner"] == [("kong",)], half
    status, thawed = run_sequence("kong_config_freeze", [
        (freeze_args(lab, "status", database="kong_by_hand", with_superuser=False), False),
        (freeze_args(lab, "thawed", database="kong_by_hand", with_superuser=False), False)])
    assert not status.failed and status["frozen"] and status["superuser_guard"] is False, status.get("msg")
    assert not thawed.failed and thawed.changed and not thawed["frozen"], thawed.get("msg")
    state = guard_state(lab, "kong_by_hand")
    assert {k: state[k] for k in NO_SUPERUSER_GUARD} == NO_SUPERUSER_GUARD
    assert state["guard_triggers"] == (0, 0) and state["freeze_rows"] == -1 and not state["guard_function"]


def test_a_restored_database_is_guarded_again_then_thawed_with_the_superuser(lab):
    guarded = run_module("kong_config_freeze", freeze_args(lab, "frozen"))
    assert not guarded.failed and guarded.changed and guarded["superuser_guard"], guarded.get("msg")
    assert guarded["newly_guarded"] == []
    assert_guarded_by_superuser(guard_state(lab))

    results = four_ways("kong_config_freeze", freeze_args(lab, "thawed"))
    assert not results[1]["frozen"] and results[1]["superuser_guard"] is False and results[1]["guarded_tables"] == []
    state = guard_state(lab)
    assert {k: state[k] for k in NO_SUPERUSER_GUARD} == NO_SUPERUSER_GUARD
    assert state["guard_triggers"] == (0, 0) and state["freeze_rows"] == -1 and not state["guard_function"]
    assert admin_sql(lab, "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                          "WHERE n.nspname = 'kongops_guard'") == [(0,)]
    lab.sql("UPDATE services SET retries = retries + 1")
    lab.sql("DROP TABLE kongops_it_entities")


def test_a_copy_without_the_superuser_guard_is_thawed_by_kong(lab):
    thawed = run_module("kong_config_freeze", freeze_args(lab, "thawed", database="kong_copy", with_superuser=False))
    assert not thawed.failed and thawed.changed and not thawed["frozen"], thawed.get("msg")
    state = guard_state(lab, "kong_copy")
    assert state["guard_triggers"] == (0, 0) and state["freeze_rows"] == -1
    lab.sql("UPDATE services SET retries = retries + 1", database="kong_copy")
