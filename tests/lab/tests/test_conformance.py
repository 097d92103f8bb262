"""Conformance of the emulated `kong migrations` with kong-facts 2, 3 and 4, per version pair.

Each pair walks one fresh database through every state of kong-facts 2.4 with the
installed `kong` launchers (the executables the collection runs): needs bootstrap (3),
up to date (0), new migrations for the newer binary (5), pending after `up` (4) where
the pair has teardowns, up to date after `finish` (0). The expand/contract effect is
checked on the entity store of the older release: it keeps working after `up` and
fails after `finish` where the pair has teardowns (kong-facts 4.4).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest
from conftest import KongDb, KongRunner

from kongemu import pg, schema, versions

NEEDS_BOOTSTRAP = "Database needs bootstrapping or is older than Kong 1.0."
PENDING_ERROR = "Error: Database has pending migrations; run 'kong migrations finish'"
ABORTED = "aborted: another node is performing database changes"


@dataclass(frozen=True)
class Pair:
    old: str
    new: str
    processed: int
    executed: int
    pending: int

    @property
    def id(self) -> str:
        return f"{self.old}->{self.new}"


# Counts from kong-facts 3.4 (worked examples and the per-release table).
PAIRS = [
    Pair("2.8.4", "3.4.3", 15, 13, 2),
    Pair("3.4.3", "3.9.1", 9, 4, 5),
    Pair("3.6.0", "3.6.1", 1, 0, 1),
    Pair("3.9.1", "3.10.0", 2, 2, 0),
    Pair("3.4.0", "3.4.3", 0, 0, 0),
]


def _store(kong_db: KongDb, version: str) -> schema.EntityStore:
    return schema.EntityStore(pg.connect(kong_db.conf(version)), versions.get(version))


def _seed(store: schema.EntityStore, tag: str) -> None:
    service = store.insert("services", {"name": f"svc-{tag}", "url": "http://127.0.0.1:9/echo"})
    store.insert("routes", {"name": f"route-{tag}", "paths": [f"/{tag}"], "service": {"id": service["id"]}})
    consumer = store.insert("consumers", {"username": f"user-{tag}"})
    store.insert("keyauth_credentials", {"key": f"key-{tag}"}, parent=("consumers", consumer["id"]))
    store.insert("plugins", {"name": "key-auth", "service": {"id": service["id"]}})


def _run_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line]


@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_upgrade_walk(kong: KongRunner, kong_db: KongDb, pair: Pair) -> None:
    env = kong_db.env

    res = kong(pair.old, "migrations", "list", env=env)
    assert res.returncode == 3, res
    assert NEEDS_BOOTSTRAP in res.stdout

    res = kong(pair.old, "migrations", "bootstrap", env=env)
    assert res.returncode == 0, res
    lines = _run_lines(res.stdout)
    assert lines[0] == "Bootstrapping database..."
    assert lines[1] == f"migrating core on database '{kong_db.name}'..."
    total = sum(len(m) for m in versions.get(pair.old).subsystems.values())
    assert f"{total} migrations processed" in lines
    assert f"{total} executed" in lines
    assert lines[-1] == "Database is up-to-date"
    assert not any(line.endswith("pending") for line in lines)

    res = kong(pair.old, "migrations", "list", env=env)
    assert res.returncode == 0, res
    assert res.stdout.startswith("Executed migrations:\n")

    old_store = _store(kong_db, pair.old)
    _seed(old_store, "before")

    res = kong(pair.new, "migrations", "list", env=env)
    if pair.processed:
        assert res.returncode == 5, res
        assert "\n\nNew migrations available:\n" in res.stdout
        assert res.stdout.rstrip().endswith("Run 'kong migrations up' to proceed")
    else:
        assert res.returncode == 0, res

    res = kong(pair.new, "migrations", "up", env=env)
    assert res.returncode == 0, res
    if not pair.processed:
        assert res.out == "Database is already up-to-date"
    else:
        lines = _run_lines(res.stdout)
        noun = "migrations" if pair.processed > 1 else "migration"
        assert f"{pair.processed} {noun} processed" in lines
        assert (f"{pair.executed} executed" in lines) == (pair.executed > 0)
        if pair.executed:
            assert f"{pair.executed} executed" in lines
        assert (f"{pair.pending} pending" in lines) == (pair.pending > 0)
        if pair.pending:
            assert lines[-1] == "Database has pending migrations; run 'kong migrations finish' when ready"
            assert "\n\nDatabase has pending migrations; run 'kong migrations finish' when ready" in res.stdout
            assert sum(1 for line in lines if line.endswith("(pending)")) == pair.pending

    res = kong(pair.new, "migrations", "list", env=env)
    if pair.pending:
        assert res.returncode == 4, res
        assert "\n\nPending migrations:\n" in res.stdout
        assert res.stdout.rstrip().endswith("Run 'kong migrations finish' when ready")
    else:
        assert res.returncode == 0, res

    res = kong(pair.new, "migrations", "up", env=env)
    if pair.pending:
        assert res.returncode == 1, res
        assert res.stderr.startswith(PENDING_ERROR + "\n"), res
        assert "Run with --v (verbose) or --vv (debug) for more details" in res.stderr
    else:
        assert res.returncode == 0, res
        assert res.out == "Database is already up-to-date"

    # kong-facts 4.4: the older binary sees only its own (executed) migrations.
    assert kong(pair.old, "migrations", "list", env=env).returncode == 0
    res = kong(pair.old, "migrations", "up", env=env)
    assert (res.returncode, res.out) == (0, "Database is already up-to-date")

    # Expand: the older release keeps reading and writing; the newer one sees its rows.
    assert old_store.load_config().count() == 5
    _seed(old_store, "during")
    new_store = _store(kong_db, pair.new)
    assert len(new_store.load_config().routes) == 2
    _seed(new_store, "new")
    assert len(old_store.load_config().routes) == 3

    res = kong(pair.new, "migrations", "finish", env=env)
    assert res.returncode == 0, res
    lines = _run_lines(res.stdout)
    assert lines[-1] == "No pending migrations to finish"
    if pair.pending:
        assert lines[0].startswith("migrating ") and lines[0].endswith(f" on database '{kong_db.name}'...")
        assert f"{pair.pending} {'migrations' if pair.pending > 1 else 'migration'} processed" in lines
        assert f"{pair.pending} executed" in lines
        assert sum(1 for line in lines if line.endswith("(executed)")) == pair.pending
    else:
        assert lines == ["No pending migrations to finish"]

    res = kong(pair.new, "migrations", "list", env=env)
    assert res.returncode == 0, res
    res = kong(pair.new, "migrations", "finish", env=env)
    assert (res.returncode, res.out) == (0, "No pending migrations to finish")

    # Contract: after finish the older release fails every entity read where the pair has teardowns.
    if pair.pending:
        with pytest.raises(schema.IncompatibleSchema):
            old_store.load_config()
        with pytest.raises(schema.IncompatibleSchema):
            old_store.page("consumers")
        with pytest.raises(schema.IncompatibleSchema):
            old_store.probe()
    else:
        assert len(old_store.load_config().routes) == 3
    assert kong(pair.old, "migrations", "list", env=env).returncode == 0
    res = kong(pair.old, "migrations", "finish", env=env)
    assert (res.returncode, res.out) == (0, "No pending migrations to finish")
    assert len(new_store.load_config().routes) == 3
    old_store.close()
    new_store.close()

    if versions.get(pair.new).has_migrations_status:
        res = kong(pair.new, "migrations", "status", env=env)
        assert res.returncode == 0, res
        state = json.loads(res.stdout)
        assert state["needs_bootstrap"] is False
        assert set(state) == {"needs_bootstrap", "executed_migrations"}
        assert state["executed_migrations"][0] == {
            "subsystem": "core", "namespace": "kong.db.migrations.core",
            "migrations": [m.name for m in versions.get(pair.new).subsystems["core"]]}


def test_status_json_while_pending(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    res = kong("3.4.3", "migrations", "status", env=env)
    state = json.loads(res.stdout)
    assert res.returncode == 0
    assert set(state) == {"needs_bootstrap", "new_migrations"} and state["needs_bootstrap"] is True
    assert kong("3.4.3", "migrations", "bootstrap", env=env).returncode == 0
    assert kong("3.9.1", "migrations", "up", env=env).returncode == 0
    res = kong("3.9.1", "migrations", "status", "-q", env=env)
    state = json.loads(res.stdout)
    assert set(state) == {"needs_bootstrap", "executed_migrations", "pending_migrations"}
    pending = {s["subsystem"]: s["migrations"] for s in state["pending_migrations"]}
    assert pending == {"acme": ["003_350_to_360"], "ai-proxy": ["001_360_to_370"],
                       "opentelemetry": ["001_331_to_332"], "rate-limiting": ["006_350_to_360"],
                       "response-ratelimiting": ["001_350_to_360"]}
    assert state["pending_migrations"][0]["namespace"] == "kong.plugins.acme.migrations"


def test_pending_and_new_lists_all_three_and_warns(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("2.8.4", "migrations", "bootstrap", env=env).returncode == 0
    assert kong("3.4.3", "migrations", "up", env=env).returncode == 0
    res = kong("3.9.1", "migrations", "list", env=env)
    assert res.returncode == 4, res
    assert "Executed migrations:" in res.stdout
    assert "\n\nPending migrations:\n    core: 016_280_to_300\nhttp-log: 001_280_to_300\n" in res.stdout
    assert "\n\nNew migrations available:\n" in res.stdout
    assert re.search(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[warn\] Database has pending migrations from a previous "
                     r"upgrade, and new migrations from this upgrade \(version 3\.9\.1\)$", res.stderr, re.M), res
    assert res.stdout.rstrip().endswith(
        "Run 'kong migrations finish' when ready to complete pending migrations "
        "(postgres database will be incompatible with the previous Kong version)")
    res = kong("3.9.1", "migrations", "up", env=env)
    assert res.returncode == 1 and res.stderr.startswith(PENDING_ERROR)
    # A newer binary's finish completes the pending migrations of the older upgrade (kong-facts 4.4).
    res = kong("3.9.1", "migrations", "finish", env=env)
    assert res.returncode == 0, res
    assert res.stdout.endswith("\n\nNew migrations available; run 'kong migrations up' to proceed\n")
    assert "No pending migrations to finish" not in res.stdout
    assert kong("3.9.1", "migrations", "list", env=env).returncode == 5


# ---------------------------------------------------------------------------
# The cluster mutex (kong-facts 2.6)


def _hold_lock(kong_db: KongDb, ttl_seconds: float, owner: str = "other-node") -> None:
    kong_db.query("CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, owner TEXT, ttl TIMESTAMPTZ)")
    kong_db.query("INSERT INTO locks (key, owner, ttl) VALUES ('migrations', %s, now() + make_interval(secs => %s)) "
                  "ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, ttl = EXCLUDED.ttl",
                  (owner, ttl_seconds))


def test_bootstrap_aborts_at_once_when_another_node_holds_the_lock(kong: KongRunner, kong_db: KongDb) -> None:
    _hold_lock(kong_db, 60)
    started = time.monotonic()
    res = kong("3.4.3", "migrations", "bootstrap", "--lock-timeout", "30", env=kong_db.env)
    assert time.monotonic() - started < 10
    assert res.returncode == 0, res
    assert res.stdout.splitlines() == ["Bootstrapping database...", ABORTED]


def test_finish_aborts_at_once_and_reset_fails_when_locked(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("3.6.0", "migrations", "bootstrap", env=env).returncode == 0
    assert kong("3.6.1", "migrations", "up", env=env).returncode == 0
    _hold_lock(kong_db, 60)
    started = time.monotonic()
    res = kong("3.6.1", "migrations", "finish", "--lock-timeout", "30", env=env)
    assert time.monotonic() - started < 10
    assert (res.returncode, res.out) == (0, ABORTED)
    assert kong("3.6.1", "migrations", "list", env=env).returncode == 4
    res = kong("3.6.1", "migrations", "reset", "--yes", env=env)
    assert (res.returncode, res.out) == (1, ABORTED)


def test_up_waits_for_the_lock_then_aborts_when_released(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("3.4.3", "migrations", "bootstrap", env=env).returncode == 0
    _hold_lock(kong_db, 60)
    proc = kong.popen("3.9.1", "migrations", "up", "--lock-timeout", "20", env=env)
    time.sleep(1.5)
    assert proc.poll() is None, "up must wait for the lock"
    kong_db.query("DELETE FROM locks WHERE owner = 'other-node'")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err)
    assert out.strip() == ABORTED
    # It did not run anything: the newer binary still has new migrations.
    assert kong("3.9.1", "migrations", "list", env=env).returncode == 5


def test_up_times_out_when_the_lock_is_never_released(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("3.4.3", "migrations", "bootstrap", env=env).returncode == 0
    _hold_lock(kong_db, 120)
    started = time.monotonic()
    res = kong("3.9.1", "migrations", "up", "--lock-timeout", "1", env=env)
    assert time.monotonic() - started >= 1.0
    assert res.returncode == 1, res
    assert res.stderr.startswith("Error: [PostgreSQL error] timeout\n"), res


def test_expired_lock_is_taken_over(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("3.4.3", "migrations", "bootstrap", env=env).returncode == 0
    _hold_lock(kong_db, -5, owner="crashed-node")
    res = kong("3.9.1", "migrations", "up", env=env)
    assert res.returncode == 0, res
    assert "9 migrations processed" in res.stdout
    assert kong_db.query("SELECT count(*) FROM locks")[0][0] == 0


def test_lock_row_is_removed_after_each_command(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("2.8.4", "migrations", "bootstrap", env=env).returncode == 0
    assert kong("3.4.3", "migrations", "up", env=env).returncode == 0
    assert kong("3.4.3", "migrations", "up", env=env).returncode == 1
    assert kong("3.4.3", "migrations", "finish", env=env).returncode == 0
    assert kong_db.query("SELECT count(*) FROM locks")[0][0] == 0


# ---------------------------------------------------------------------------
# The same walk at node level (kong-facts 4.2-4.4): `kong start` / `kong quit`


def _node_spec(tmp_path, name: str, version: str, kong_db: KongDb):
    from nodefixtures import make_spec  # pylint: disable=import-outside-toplevel

    return make_spec(tmp_path, name, version, database="postgres", pg_host=kong_db.cluster.host,
                     pg_port=kong_db.cluster.port, pg_user=kong_db.cluster.user,
                     pg_password=kong_db.cluster.password, pg_database=kong_db.name)


def _admin_services(spec) -> int:
    from nodefixtures import http_json  # pylint: disable=import-outside-toplevel

    return http_json(f"http://127.0.0.1:{spec.admin}/services")[0]


@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_node_walk(kong: KongRunner, kong_db: KongDb, tmp_path, pair: Pair) -> None:
    from nodefixtures import node_pid, poll, run_kong, running_node  # pylint: disable=import-outside-toplevel

    old_bin, new_bin = kong.path(pair.old), kong.path(pair.new)
    old_spec = _node_spec(tmp_path, "old", pair.old, kong_db)
    new_spec = _node_spec(tmp_path, "new", pair.new, kong_db)
    assert run_kong(old_bin, "migrations", "bootstrap", "-c", str(old_spec.conf_path)).rc == 0
    with running_node(old_bin, old_spec):
        assert _admin_services(old_spec) == 200
        res = run_kong(new_bin, "start", "-c", str(new_spec.conf_path))
        if pair.processed:
            assert res.rc == 1, str(res)
            assert res.err.startswith("Error: /usr/local/share/lua/5.1/kong/cmd/utils/migrations.lua:20: "
                                      "New migrations available; run 'kong migrations up' to proceed\n"), str(res)
            assert node_pid(new_spec.prefix) is None
            assert run_kong(new_bin, "migrations", "up", "-c", str(new_spec.conf_path)).rc == 0
        else:
            assert res.rc == 0, str(res)
            assert run_kong(new_bin, "quit", "-p", str(new_spec.prefix)).rc == 0
        time.sleep(1.2)  # a few db_update_frequency periods of the old node's probes
        assert _admin_services(old_spec) == 200, "the old node keeps serving after up"
        with running_node(new_bin, new_spec) as started:
            assert ("Database has pending migrations:" in started.out) == (pair.pending > 0)
            assert started.out.rstrip().endswith("Kong started")
            assert _admin_services(new_spec) == 200
            assert run_kong(new_bin, "migrations", "finish", "-c", str(new_spec.conf_path)).rc == 0
            if pair.pending:
                poll(lambda: _admin_services(old_spec) == 500, 10, "the old node's Admin API to fail after finish")
            else:
                time.sleep(1.2)
                assert _admin_services(old_spec) == 200
            assert _admin_services(new_spec) == 200
            res = run_kong(new_bin, "quit", "-p", str(new_spec.prefix))
            assert (res.rc, res.out.strip()) == (0, "Kong stopped (gracefully)"), str(res)


# ---------------------------------------------------------------------------
# The command line in general (kong-facts 1, 8)


def test_version_and_all(kong: KongRunner) -> None:
    res = kong("3.4.3", "version")
    assert (res.returncode, res.stdout, res.stderr) == (0, "3.4.3\n", "")
    res = kong("2.8.4", "version", "-a")
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and lines[0] == "Kong: 2.8.4"
    assert [line.split(":")[0] for line in lines] == ["Kong", "ngx_lua", "nginx", "Lua"]


def test_check_reports_valid_and_invalid_files(kong: KongRunner, tmp_path) -> None:
    good = tmp_path / "kong.conf"
    good.write_text("database = off\nproxy_listen = 127.0.0.1:8000\n", encoding="utf-8")
    res = kong("3.4.3", "check", str(good))
    assert (res.returncode, res.stdout) == (0, f"configuration at {good} is valid\n")
    bad = tmp_path / "bad.conf"
    bad.write_text("database = cassandra\nrole = edge\n", encoding="utf-8")
    res = kong("3.4.3", "check", str(bad))
    assert res.returncode == 1 and res.stdout == ""
    errors = res.stderr.splitlines()
    assert len(errors) == 2 and all(re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] ", e) for e in errors)
    assert "Cassandra as a datastore for Kong is not supported" in errors[0]
    res = kong("3.4.3", "check", str(tmp_path / "missing.conf"))
    assert res.returncode == 1 and res.stderr.rstrip().endswith(f"[error] no file at: {tmp_path / 'missing.conf'}")


def test_usage_errors_go_to_stderr_with_exit_1(kong: KongRunner) -> None:
    res = kong("3.4.3")
    assert res.returncode == 1 and res.stdout == "" and res.stderr.startswith("Usage: kong COMMAND [OPTIONS]")
    assert " drain\n" not in res.stderr and " migrations\n" in res.stderr
    assert " drain\n" in kong("3.9.1").stderr
    res = kong("3.4.3", "nope")
    assert res.returncode == 1 and res.stderr.startswith("No such command: nope\n\nUsage: kong COMMAND")
    res = kong("3.4.3", "drain")
    assert res.returncode == 1 and res.stderr.startswith("No such command: drain")
    res = kong("3.4.3", "start", "--help")
    assert res.returncode == 1 and res.stderr.startswith("Usage: kong start [OPTIONS]")
    assert "--run-migrations" in res.stderr and "--nginx-conf-flags" not in res.stderr
    assert "--nginx-conf-flags" in kong("3.6.1", "start", "-h").stderr
    res = kong("3.4.3", "quit", "--wait")
    assert res.returncode == 1 and res.stderr.startswith("kong: wait was expecting a value\n\n")


def test_install_is_idempotent(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from kongemu import install

    first = install.install_version("3.4.3", tmp_path)
    mtime = first.stat().st_mtime_ns
    assert install.install_version("3.4.3", tmp_path) == first == tmp_path / "versions" / "3.4.3" / "bin" / "kong"
    assert first.stat().st_mtime_ns == mtime
    text = first.read_text(encoding="utf-8")
    assert text.startswith(f"#!{sys.executable}\n") and os.access(first, os.X_OK)
    out = subprocess.run([sys.executable, "-m", "kongemu", "install", "--root", str(tmp_path), "2.8.4", "3.10.0"],
                         capture_output=True, text=True, check=True, cwd=str(install.LAB_DIR))
    assert out.stdout.split() == [str(tmp_path / "versions" / v / "bin" / "kong") for v in ("2.8.4", "3.10.0")]
    assert subprocess.run([str(tmp_path / "versions" / "3.10.0" / "bin" / "kong"), "version"],
                          capture_output=True, text=True, check=False).stdout == "3.10.0\n"
