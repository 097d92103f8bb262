"""`kong migrations` per version pair, on both providers: the emulator and real Kong.

Each pair walks one fresh database through every state of kong-facts 2.4 with the
`kong` executables the collection runs: needs bootstrap (3), up to date (0), new
migrations for the newer binary (5), pending after `up` (4) where the pair has
teardowns, up to date after `finish` (0). At each step `schema_meta` is compared with
what the emulator's version catalog (kongemu.versions) predicts, so on real Kong this
checks the catalog itself. Real Kong runs for the versions the realkong kit builds
(2.8.5, 3.4.2, 3.9.0, 3.9.1); pairs with versions real Kong cannot be built for here
run on the emulator only (marked in PAIRS).

`test_node_walk` runs nodes of the older release through the newer `up` and `finish`
and asserts what a user of each node sees (proxy, Admin API reads and writes, restarts,
and the objects the teardowns rewrite), `test_lock_*` the cluster mutex.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import KongDb, KongRunner
from nodefixtures import http_call, http_json, make_spec, node_pid, poll, provider_params, run_kong, running_node

from kongemu import versions

NEEDS_BOOTSTRAP = "Database needs bootstrapping or is older than Kong 1.0."
PENDING_ERROR = "Error: Database has pending migrations; run 'kong migrations finish'"
ABORTED = "aborted: another node is performing database changes"
HINT = "\n\n  Run with --v (verbose) or --vv (debug) for more details\n"


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


# Counts measured on real Kong (2.8 -> 3.4 leaves 4 pending: pre-function and post-function
# 001_280_to_300 have a teardown too; kong-facts 3.4 said 2).
REAL_PAIRS = [
    Pair("2.8.5", "3.4.2", 15, 11, 4),
    Pair("3.4.2", "3.9.1", 9, 4, 5),
    Pair("3.9.0", "3.9.1", 0, 0, 0),
]
# Emulated only: releases the realkong kit does not build.
EMULATED_PAIRS = [
    Pair("3.6.0", "3.6.1", 1, 0, 1),  # a patch release that adds a migration with a teardown
    Pair("3.8.0", "3.9.1", 1, 1, 0),  # new migrations, none with a teardown
]
WALK_CASES = provider_params(REAL_PAIRS) + provider_params(EMULATED_PAIRS, ("emulated",))


def _lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line]


def _meta(kong_db: KongDb) -> dict[str, tuple[Any, list[str], list[str] | None]]:
    """schema_meta as {subsystem: (last_executed, executed, pending)}; only key 'schema_meta'."""
    assert kong_db.query("SELECT DISTINCT key FROM schema_meta") == [("schema_meta",)]
    rows = kong_db.query("SELECT subsystem, last_executed, executed, pending FROM schema_meta")
    return {r[0]: (r[1], list(r[2] or []), r[3]) for r in rows}


def _after_bootstrap(version: str) -> dict[str, tuple[Any, list[str], list[str] | None]]:
    """What `bootstrap` records: every migration executed; `pending` is an empty array
    where a teardown was recorded (ARRAY_REMOVE), NULL elsewhere."""
    out = {}
    for sub, migs in versions.get(version).subsystems.items():
        out[sub] = (migs[-1].name, [m.name for m in migs], [] if any(m.teardown for m in migs) else None)
    return out


def _after_up(old: str, new: str) -> dict[str, tuple[Any, list[str], list[str] | None]]:
    """What the newer `up` records on top of a database bootstrapped by ``old``."""
    out = _after_bootstrap(old)
    for sub, migs in versions.get(new).subsystems.items():
        last, executed, pending = out.get(sub, (None, [], None))
        for mig in migs:
            if mig.name in executed:
                continue
            if mig.teardown:
                pending = [*(pending or []), mig.name]
            else:
                executed = [*executed, mig.name]
                last = mig.name
        out[sub] = (last, executed, pending)
    return out


def _after_finish(old: str, new: str) -> dict[str, tuple[Any, list[str], list[str] | None]]:
    out = {}
    for sub, (last, executed, pending) in _after_up(old, new).items():
        if pending:
            executed, last, pending = executed + pending, pending[-1], []
        out[sub] = (last, executed, pending)
    return out


@pytest.mark.parametrize(("provider", "pair"), WALK_CASES)
def test_upgrade_walk(kong: KongRunner, kong_db: KongDb, pair: Pair) -> None:
    env = kong_db.env

    if pair.processed:
        res = kong(pair.old, "migrations", "list", env=env)
        assert res.returncode == 3, res
        assert NEEDS_BOOTSTRAP in res.stdout

    res = kong(pair.old, "migrations", "bootstrap", env=env)
    assert res.returncode == 0, res
    lines = _lines(res.stdout)
    assert lines[0] == "Bootstrapping database..."
    assert lines[1] == f"migrating core on database '{kong_db.name}'..."
    total = sum(len(m) for m in versions.get(pair.old).subsystems.values())
    assert f"{total} migrations processed" in lines
    assert f"{total} executed" in lines
    assert lines[-1] == "Database is up-to-date"
    assert not any(line.endswith("pending") for line in lines)
    assert _meta(kong_db) == _after_bootstrap(pair.old)

    if pair.processed:
        res = kong(pair.old, "migrations", "list", env=env)
        assert res.returncode == 0, res
        assert res.stdout.startswith("Executed migrations:\n")

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
        lines = _lines(res.stdout)
        noun = "migrations" if pair.processed > 1 else "migration"
        assert f"{pair.processed} {noun} processed" in lines
        assert (f"{pair.executed} executed" in lines) == (pair.executed > 0)
        assert (f"{pair.pending} pending" in lines) == (pair.pending > 0)
        assert sum(1 for line in lines if line.endswith("(pending)")) == pair.pending
        assert sum(1 for line in lines if line.endswith("(executed)")) == pair.executed
        if pair.pending:
            assert res.stdout.endswith(
                "\n\nDatabase has pending migrations; run 'kong migrations finish' when ready\n")
    assert _meta(kong_db) == _after_up(pair.old, pair.new)

    if pair.processed:
        res = kong(pair.new, "migrations", "list", env=env)
        if pair.pending:
            assert res.returncode == 4, res
            assert "\n\nPending migrations:\n" in res.stdout
            assert res.stdout.rstrip().endswith("Run 'kong migrations finish' when ready")
        else:
            assert res.returncode == 0, res

    if pair.pending:
        res = kong(pair.new, "migrations", "up", env=env)
        assert res.returncode == 1, res
        assert res.stderr == PENDING_ERROR + HINT, res
    if pair.processed:
        # kong-facts 4.4: the older binary sees only its own (executed) migrations.
        assert kong(pair.old, "migrations", "list", env=env).returncode == 0
        res = kong(pair.old, "migrations", "up", env=env)
        assert (res.returncode, res.out) == (0, "Database is already up-to-date")

    res = kong(pair.new, "migrations", "finish", env=env)
    assert res.returncode == 0, res
    lines = _lines(res.stdout)
    assert lines[-1] == "No pending migrations to finish"
    if pair.pending:
        assert lines[0].startswith("migrating ") and lines[0].endswith(f" on database '{kong_db.name}'...")
        assert f"{pair.pending} {'migrations' if pair.pending > 1 else 'migration'} processed" in lines
        assert f"{pair.pending} executed" in lines
        assert sum(1 for line in lines if line.endswith("(executed)")) == pair.pending
    else:
        assert lines == ["No pending migrations to finish"]
    assert _meta(kong_db) == _after_finish(pair.old, pair.new)

    res = kong(pair.new, "migrations", "list", env=env)
    assert res.returncode == 0, res
    if pair.pending:
        assert kong(pair.old, "migrations", "list", env=env).returncode == 0
        res = kong(pair.old, "migrations", "finish", env=env)
        assert (res.returncode, res.out) == (0, "No pending migrations to finish")

    if versions.get(pair.new).has_migrations_status:
        res = kong(pair.new, "migrations", "status", env=env)
        assert res.returncode == 0, res
        state = json.loads(res.stdout)
        assert state["needs_bootstrap"] is False
        assert set(state) == {"needs_bootstrap", "executed_migrations"}
        core = next(s for s in state["executed_migrations"] if s["subsystem"] == "core")
        assert core == {"subsystem": "core", "namespace": "kong.db.migrations.core",
                        "migrations": [m.name for m in versions.get(pair.new).subsystems["core"]]}


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_status_json_and_quiet(kong: KongRunner, kong_db: KongDb) -> None:
    """`status` prints one JSON document whatever the state; `-q` silences nothing on real
    Kong (the configuration loader turns the log back on), so the collection must never
    rely on it for clean output."""
    env = kong_db.env
    res = kong("3.4.2", "migrations", "status", env=env)
    state = json.loads(res.stdout)
    assert res.returncode == 0
    assert set(state) == {"needs_bootstrap", "new_migrations"} and state["needs_bootstrap"] is True
    assert sum(len(s["migrations"]) for s in state["new_migrations"]) == 58
    res = kong("3.4.2", "migrations", "list", "-q", env=env)
    assert res.returncode == 3 and NEEDS_BOOTSTRAP in res.stdout, res
    res = kong("2.8.5", "migrations", "bootstrap", "--quiet", env=env)
    assert res.returncode == 0 and res.stdout.endswith("43 executed\nDatabase is up-to-date\n"), res
    assert kong("3.4.2", "migrations", "up", "-q", env=env).returncode == 0
    res = kong("3.4.2", "migrations", "status", "-q", env=env)
    state = json.loads(res.stdout)
    assert set(state) == {"needs_bootstrap", "executed_migrations", "pending_migrations"}
    pending = {s["subsystem"]: s["migrations"] for s in state["pending_migrations"]}
    assert pending == {"core": ["016_280_to_300"], "http-log": ["001_280_to_300"],
                       "post-function": ["001_280_to_300"], "pre-function": ["001_280_to_300"]}
    http_log = next(s for s in state["pending_migrations"] if s["subsystem"] == "http-log")
    assert http_log["namespace"] == "kong.plugins.http-log.migrations"


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_pending_and_new_lists_all_three_and_warns(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("2.8.5", "migrations", "bootstrap", env=env).returncode == 0
    assert kong("3.4.2", "migrations", "up", env=env).returncode == 0
    res = kong("3.9.1", "migrations", "list", env=env)
    assert res.returncode == 4, res
    assert "Executed migrations:" in res.stdout
    assert ("\n\nPending migrations:\n         core: 016_280_to_300\n     http-log: 001_280_to_300\n"
            "post-function: 001_280_to_300\n pre-function: 001_280_to_300\n") in res.stdout
    assert "\n\nNew migrations available:\n" in res.stdout
    assert re.search(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[warn\] Database has pending migrations from a previous "
                     r"upgrade, and new migrations from this upgrade \(version 3\.9\.1\)$", res.stderr, re.M), res
    assert res.stdout.rstrip().endswith(
        "Run 'kong migrations finish' when ready to complete pending migrations "
        "(postgres database will be incompatible with the previous Kong version)")
    res = kong("3.9.1", "migrations", "up", env=env)
    assert res.returncode == 1 and res.stderr == PENDING_ERROR + HINT
    # A newer binary's finish completes the pending migrations of the older upgrade (kong-facts 4.4).
    res = kong("3.9.1", "migrations", "finish", env=env)
    assert res.returncode == 0, res
    assert "4 migrations processed\n4 executed\n" in res.stdout
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


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_lock_per_subcommand(kong: KongRunner, kong_db: KongDb) -> None:
    """One database through every lock case: bootstrap does not wait; up waits and, when the
    holder lets go, aborts without running anything; up times out; an expired lock is taken
    over; with pending migrations up fails at once (before the lock), finish and reset abort
    at once."""
    env = kong_db.env
    _hold_lock(kong_db, 60)
    started = time.monotonic()
    res = kong("2.8.5", "migrations", "bootstrap", "--lock-timeout", "30", env=env)
    assert time.monotonic() - started < 20
    assert res.returncode == 0, res
    assert res.stdout.splitlines() == ["Bootstrapping database...", ABORTED]
    kong_db.query("DELETE FROM locks")
    # the aborted bootstrap created schema_meta, empty: the database counts as bootstrapped,
    # with every migration new (a later `up` would run all of them)
    assert kong_db.query("SELECT count(*) FROM schema_meta") == [(0,)]
    assert kong("2.8.5", "migrations", "list", env=env).returncode == 5
    res = kong("2.8.5", "migrations", "bootstrap", env=env)
    assert (res.returncode, res.out) == (0, "Database already bootstrapped")
    assert kong("2.8.5", "migrations", "reset", "--yes", env=env).returncode == 0
    assert kong("2.8.5", "migrations", "bootstrap", env=env).returncode == 0

    _hold_lock(kong_db, 60)
    proc = kong.popen("3.4.2", "migrations", "up", "--lock-timeout", "20", env=env)
    time.sleep(2.5)  # asserting that it waits: nothing to poll for
    assert proc.poll() is None, "up must wait for the lock"
    kong_db.query("DELETE FROM locks WHERE owner = 'other-node'")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err)
    assert out.strip().splitlines()[-1] == ABORTED, out
    assert kong("3.4.2", "migrations", "list", env=env).returncode == 5, "it ran nothing"

    _hold_lock(kong_db, 120)
    started = time.monotonic()
    res = kong("3.4.2", "migrations", "up", "--lock-timeout", "1", env=env)
    assert time.monotonic() - started >= 1.0
    assert (res.returncode, res.stderr) == (1, "Error: [PostgreSQL error] timeout" + HINT), res

    _hold_lock(kong_db, -5, owner="crashed-node")
    res = kong("3.4.2", "migrations", "up", env=env)
    assert res.returncode == 0 and "15 migrations processed" in res.stdout, res
    assert kong_db.query("SELECT count(*) FROM locks")[0][0] == 0, "the lock row is removed after the command"

    _hold_lock(kong_db, 60)
    started = time.monotonic()
    res = kong("3.4.2", "migrations", "up", "--lock-timeout", "30", env=env)
    assert (res.returncode, res.stderr) == (1, PENDING_ERROR + HINT), res
    res = kong("3.4.2", "migrations", "finish", "--lock-timeout", "30", env=env)
    assert (res.returncode, res.out) == (0, ABORTED)
    res = kong("3.4.2", "migrations", "reset", "--yes", env=env)
    assert (res.returncode, res.out) == (1, ABORTED)
    assert time.monotonic() - started < 20, "none of them waited for the lock"
    assert kong("3.4.2", "migrations", "list", env=env).returncode == 4


# ---------------------------------------------------------------------------
# The same walk at node level (kong-facts 4.2-4.4): `kong start` / `kong quit`


def _spec(node_tmp: Path, name: str, version: str, kong_db: KongDb):
    return make_spec(node_tmp, name, version, database="postgres", pg_host=kong_db.cluster.host,
                     pg_port=kong_db.cluster.port, pg_user=kong_db.cluster.user,
                     pg_password=kong_db.cluster.password, pg_database=kong_db.name)


def _admin(spec) -> str:
    return f"http://127.0.0.1:{spec.admin}"


def _code(url: str, **kwargs: Any) -> int:
    return http_call(url, **kwargs)[0]


def _seed(spec, echo: int, version: str) -> dict[str, str]:
    """Through the node's Admin API: a prefix route, a regex route (2.x or 3.x syntax), a
    key-auth route with a consumer, and plugins whose config the teardowns rewrite."""
    admin = _admin(spec)
    assert http_json(f"{admin}/services", "POST", {"name": "echo", "url": f"http://127.0.0.1:{echo}"})[0] == 201
    regex = "/reg/\\d+" if versions.get(version).major < 3 else "~/reg/\\d+"
    ids = {}
    for name, paths in (("plain", ["/plain"]), ("regex", [regex]), ("secured", ["/secured"]),
                        ("limited", ["/limited"])):
        code, body = http_json(f"{admin}/services/echo/routes", "POST", {"name": name, "paths": paths})
        assert code == 201, body
        ids[name] = body["id"]
    assert http_json(f"{admin}/routes/secured/plugins", "POST", {"name": "key-auth"})[0] == 201
    assert http_json(f"{admin}/consumers", "POST", {"username": "alice"})[0] == 201
    assert http_json(f"{admin}/consumers/alice/key-auth", "POST", {"key": "alice-key"})[0] == 201
    # http-log 001_280_to_300 rewrites header arrays to strings at finish
    headers = {"X-Lab": ["a", "b"]} if versions.get(version).major < 3 else {"X-Lab": "a, b"}
    code, body = http_json(f"{admin}/routes/plain/plugins", "POST", {
        "name": "http-log", "config": {"http_endpoint": f"http://127.0.0.1:{echo}/log", "headers": headers}})
    assert code == 201, body
    ids["http-log"] = body["id"]
    # rate-limiting 006_350_to_360 moves redis_* into `redis` (up copies, finish removes)
    code, body = http_json(f"{admin}/routes/limited/plugins", "POST", {
        "name": "rate-limiting", "config": {"minute": 1000, "policy": "redis", "redis_host": "127.0.0.1",
                                            "redis_port": 9, "fault_tolerant": True}})
    assert code == 201, body
    ids["rate-limiting"] = body["id"]
    return ids


class _Serving:
    """Truthy when the node answers every path with 200 and key-auth with 401/200; its repr
    names what did not (poll's timeout message shows it)."""

    def __init__(self, spec, paths: tuple[str, ...]) -> None:
        got = {p: _code(f"{spec.proxy_url}{p}/x") for p in paths}
        got["/secured (no key)"] = _code(f"{spec.proxy_url}/secured/x")
        got["/secured (key)"] = _code(f"{spec.proxy_url}/secured/x", headers={"apikey": "alice-key"})
        want = dict.fromkeys(paths, 200) | {"/secured (no key)": 401, "/secured (key)": 200}
        self.wrong = {p: code for p, code in got.items() if code != want[p]}

    def __bool__(self) -> bool:
        return not self.wrong

    def __repr__(self) -> str:
        return f"<wrong answers {self.wrong}>"


def _serves(spec, *paths: str) -> _Serving:
    return _Serving(spec, paths)


ROUTES = ("/plain", "/reg/12", "/limited")


def _write_and_read(spec, name: str) -> None:
    """An Admin API write through this node, then served by its proxy."""
    code, body = http_json(f"{_admin(spec)}/services/echo/routes", "POST", {"name": name, "paths": [f"/{name}"]})
    assert code == 201, body
    poll(lambda: _code(f"{spec.proxy_url}/{name}/x") == 200, 10, f"route {name} on the node that wrote it")
    assert http_json(f"{_admin(spec)}/routes/{name}")[0] == 200


def _core_channel(version: str) -> str:
    return "invalidations_kong_core_db_cache" if versions.get(version).at_least(3, 7) else "invalidations"


def _patch(spec, entity: str, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    return http_json(f"{_admin(spec)}/{entity}/{key}", "PATCH", body)


@pytest.mark.parametrize(("provider", "pair"), provider_params(REAL_PAIRS[:2]))
def test_node_walk(kong: KongRunner, kong_db: KongDb, node_tmp: Path, echo_port: int, pair: Pair) -> None:
    """A node of X through Y's `up` and `finish`, as a user of X sees it (real Kong: X keeps
    serving after finish; only the objects a teardown rewrote break, and only when X reads
    them again)."""
    old_bin, new_bin = kong.path(pair.old), kong.path(pair.new)
    old = _spec(node_tmp, "old", pair.old, kong_db)
    new = _spec(node_tmp, "new", pair.new, kong_db)
    assert run_kong(old_bin, "migrations", "bootstrap", "-c", str(old.conf_path)).rc == 0
    with running_node(old_bin, old):
        ids = _seed(old, echo_port, pair.old)
        poll(lambda: _serves(old, *ROUTES), 10, "X serving the seed")

        res = run_kong(new_bin, "start", "-c", str(new.conf_path))
        assert res.rc == 1, str(res)
        assert re.match(r"^Error: \S*/kong/cmd/utils/migrations\.lua:\d+: New migrations available; "
                        r"run 'kong migrations up' to proceed\n", res.err), str(res)
        assert node_pid(new.prefix) is None
        assert run_kong(new_bin, "migrations", "up", "-c", str(new.conf_path)).rc == 0

        # After up: X keeps serving, reading and writing.
        time.sleep(1.2)  # a few db_update_frequency periods of X's cache refresh
        assert _serves(old, *ROUTES), _serves(old, *ROUTES)
        _write_and_read(old, "after-up")
        if pair.old.startswith("2."):
            # core 016_280_to_300 rewrote the regex path in `up`; 2.8.2+ routes `~` paths,
            # but its Admin API refuses to save the route again
            assert http_json(f"{_admin(old)}/routes/regex")[1]["paths"] == ["~/reg/\\d+"]
            code, body = _patch(old, "routes", "regex", {"regex_priority": 1})
            assert (code, body["fields"]) == (400, {"paths": ["should start with: /"]}), body

        with running_node(new_bin, new) as started:
            assert "Database has pending migrations:" in started.out, str(started)
            poll(lambda: _serves(new, *ROUTES, "/after-up"), 10, "Y serving X's configuration")
            _write_and_read(new, "from-y")
            if _core_channel(pair.old) == _core_channel(pair.new):
                poll(lambda: _code(f"{old.proxy_url}/from-y/x") == 200, 10, "Y's write on X")
            else:
                # 3.7 moved the core cache's invalidations to their own cluster_events channel:
                # X's router does not hear of Y's write until something rebuilds it
                time.sleep(1.5)
                assert _code(f"{old.proxy_url}/from-y/x") == 404
                _write_and_read(old, "from-x")
                assert _code(f"{old.proxy_url}/from-y/x") == 200
            assert run_kong(new_bin, "migrations", "finish", "-c", str(new.conf_path)).rc == 0
            time.sleep(1.2)
            assert _serves(new, *ROUTES)
            res = run_kong(new_bin, "quit", "-p", str(new.prefix))
            assert (res.rc, res.out.strip().splitlines()[-1]) == (0, "Kong stopped (gracefully)"), str(res)

        # After finish: X still serves, reads and writes, also after a restart ...
        assert _serves(old, *ROUTES), _serves(old, *ROUTES)
        _write_and_read(old, "after-finish")
        res = run_kong(old_bin, "restart", "-c", str(old.conf_path))
        assert res.rc == 0, str(res)
        for path in ("/", "/services", "/routes", "/plugins", "/consumers"):
            assert _code(f"{_admin(old)}{path}") == 200, path
        # ... except where a teardown rewrote what X reads
        if pair.old.startswith("2."):
            poll(lambda: _serves(old, *ROUTES), 10, "X serving after its restart")
            code, body = _patch(old, "plugins", ids["http-log"], {"enabled": True})
            assert (code, body["fields"]) == (400, {"config": {"headers": "expected an array"}}), body
        else:
            poll(lambda: _serves(old, "/plain", "/reg/12"), 10, "X serving after its restart")
            # rate-limiting without redis_host: the plugin fails every request it runs on
            code, _hdrs, body = http_call(f"{old.proxy_url}/limited/x")
            assert (code, json.loads(body)) == (500, {"message": "An unexpected error occurred"})
            code, body = _patch(old, "plugins", ids["rate-limiting"], {"config": {"minute": 999}})
            assert (code, body["fields"]["config"]) == (400, {"redis_host": "required field missing"}), body


# ---------------------------------------------------------------------------
# The command line in general (kong-facts 1, 8)


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_version_check_and_usage_errors(kong: KongRunner, tmp_path: Path) -> None:
    res = kong("3.4.2", "version")
    assert (res.returncode, res.stdout, res.stderr) == (0, "3.4.2\n", "")
    res = kong("2.8.5", "version", "-a")
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and lines[0] == "Kong: 2.8.5"
    assert [line.split(":")[0] for line in lines] == ["Kong", "ngx_lua", "nginx", "Lua"]

    good = tmp_path / "kong.conf"
    good.write_text("database = off\nproxy_listen = 127.0.0.1:8000\n", encoding="utf-8")
    res = kong("3.4.2", "check", str(good))
    assert (res.returncode, res.stdout) == (0, f"configuration at {good} is valid\n")
    bad = tmp_path / "bad.conf"
    bad.write_text("database = cassandra\nrole = edge\n", encoding="utf-8")
    res = kong("3.4.2", "check", str(bad))
    assert res.returncode == 1 and res.stdout == ""
    errors = res.stderr.splitlines()
    assert len(errors) == 2 and all(re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] ", e) for e in errors)
    assert "Cassandra as a datastore for Kong is not supported" in res.stderr
    res = kong("3.4.2", "check", str(tmp_path / "missing.conf"))
    assert res.returncode == 1 and res.stderr.rstrip().endswith(f"[error] no file at: {tmp_path / 'missing.conf'}")

    res = kong("3.4.2")
    assert res.returncode == 1 and res.stdout == "" and res.stderr.startswith("Usage: kong COMMAND [OPTIONS]")
    assert " drain\n" not in res.stderr and " migrations\n" in res.stderr
    assert " drain\n" in kong("3.9.1").stderr
    res = kong("3.4.2", "nope")
    assert res.returncode == 1 and res.stderr.startswith("No such command: nope\n\nUsage: kong COMMAND")
    res = kong("3.4.2", "start", "--help")
    assert res.returncode == 1 and res.stderr.startswith("Usage: kong start [OPTIONS]")
    assert "--run-migrations" in res.stderr and "--nginx-conf-flags" not in res.stderr
    assert " --db-timeout     (default 60)        Timeout, in seconds, for all database\n" in res.stderr
    res = kong("3.9.1", "start", "-h")
    assert "--nginx-conf-flags" in res.stderr
    assert " --db-timeout              (optional number)   Timeout, in seconds, for all database\n" in res.stderr
    res = kong("3.4.2", "quit", "--wait")
    assert res.returncode == 1 and res.stderr.startswith("kong: wait was expecting a value\n\n")


def test_install_is_idempotent(tmp_path: Path) -> None:
    """Emulator only: the launcher kongemu.install writes (real Kong has its own bin/kong)."""
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
