"""`kong migrations`: schema_meta, locks, the state and the runner (kong-facts 2, 3, 10).

Mirrors `kong/cmd/migrations.lua`, `kong/cmd/utils/migrations.lua`,
`kong/db/init.lua` (`cluster_mutex`, `run_migrations`), `kong/db/migrations/state.lua`
and the postgres connector (`schema_bootstrap`, `record_migration`, `insert_lock`,
`read_lock`, `remove_lock`, `schema_reset`).

Decisions kong-facts leaves open (documented here):

* Errors raised inside the cluster-mutex callback (e.g. `Database has pending
  migrations; run 'kong migrations finish'`) are reported as kong-facts quotes them,
  without the `cluster_mutex callback threw an error` wrapper of the Lua code.
* The lock TTL is computed by the database clock (`now() + lock_timeout`).
* `kong start` nests the state-check error with Kong's inner
  `/usr/local/share/lua/5.1/kong/cmd/utils/migrations.lua:<line>: ` prefix, line 20
  for new migrations (kong-facts 1 and 4.2) and line 16 for the bootstrap message.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import psycopg2
import psycopg2.extensions

from . import pg, schema
from .conf import KongConf
from .errors import KongError
from .logutil import Log
from .versions import Migration, VersionInfo

MIGRATIONS_MUTEX_KEY = "migrations"
NOT_LEADER_MSG = "aborted: another node is performing database changes"
NEEDS_BOOTSTRAP_MSG = (
    "Database needs bootstrapping or is older than Kong 1.0.\n\n"
    "To start a new installation from scratch, run 'kong migrations bootstrap'.\n\n"
    "To migrate from a version older than 1.0, migrated to Kong 1.5.0 first. \n"
    "If you still have 'apis' entities, you can convert them to Routes and Services\n"
    "using the 'kong migrations migrate-apis' command in Kong 1.5.0.\n\n"
)
NEW_MIGRATIONS_MSG = "New migrations available; run 'kong migrations up' to proceed"
PENDING_ERROR_MSG = "Database has pending migrations; run 'kong migrations finish'"
INNER_MIGRATIONS_LUA = "/usr/local/share/lua/5.1/kong/cmd/utils/migrations.lua"
CHECK_STATE_LINE_BOOTSTRAP = 16
CHECK_STATE_LINE_NEW = 20
MAX_LOCK_WAIT_STEP = 2.0
DEFAULT_LOCK_TIMEOUT = 60

# ---------------------------------------------------------------------------
# State (kong/db/migrations/state.lua)


@dataclass
class SubsystemMigrations:
    subsystem: str
    namespace: str
    migrations: list[Migration]

    def names(self) -> list[str]:
        return [m.name for m in self.migrations]


class MigrationList(list[SubsystemMigrations]):
    """A list of subsystems; str() is Kong's `__tostring` (right-aligned names)."""

    def __str__(self) -> str:
        width = max((len(s.subsystem) for s in self), default=0)
        return "\n".join(f"{s.subsystem:>{width}}: {', '.join(s.names())}" for s in self)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"subsystem": s.subsystem, "namespace": s.namespace, "migrations": s.names()} for s in self]


@dataclass
class SchemaState:
    needs_bootstrap: bool = False
    executed_migrations: MigrationList | None = None
    pending_migrations: MigrationList | None = None
    missing_migrations: MigrationList | None = None
    new_migrations: MigrationList | None = None

    def is_up_to_date(self) -> bool:
        return not self.needs_bootstrap and not self.new_migrations

    def to_json(self) -> str:
        out: dict[str, Any] = {"needs_bootstrap": self.needs_bootstrap}
        for key in ("executed_migrations", "pending_migrations", "missing_migrations", "new_migrations"):
            value = getattr(self, key)
            if value:
                out[key] = value.to_json()
        return json.dumps(out, separators=(",", ":"))


def namespace(subsystem: str) -> str:
    if subsystem == "core":
        return "kong.db.migrations.core"
    return f"kong.plugins.{subsystem}.migrations"


def loaded_plugins(info: VersionInfo, conf: KongConf | None) -> list[str]:
    """The `plugins` setting expanded: `bundled` is every bundled plugin, `off` none."""
    names: list[str] = []
    entries = conf.get_list("plugins") if conf is not None else ["bundled"]
    for entry in entries or ["bundled"]:
        if entry == "bundled":
            names.extend(info.bundled_plugins)
        elif entry != "off":
            names.append(entry)
    return list(dict.fromkeys(names))


def loaded_subsystems(info: VersionInfo, conf: KongConf | None) -> dict[str, list[Migration]]:
    """`core`, then each loaded plugin with a migrations index, alphabetically."""
    plugins = set(loaded_plugins(info, conf))
    return {sub: migs for sub, migs in info.subsystems.items() if sub == "core" or sub in plugins}


def compute_state(rows: list[dict[str, Any]] | None, subsystems: dict[str, list[Migration]]) -> SchemaState:
    """`State.load` exactly: the narrow `missing` rule, unknown DB names ignored."""
    state = SchemaState(needs_bootstrap=rows is None)
    by_sub = {r["subsystem"]: r for r in rows or []}
    buckets: dict[str, MigrationList] = {}
    for sub, migs in subsystems.items():
        found: dict[str, list[Migration]] = {"executed": [], "pending": [], "missing": [], "new": []}
        row = by_sub.get(sub)
        if row is None:
            found["new"] = list(migs)
        else:
            executed = row.get("executed") or []
            pending = row.get("pending") or []
            last = row.get("last_executed")
            marker: int | None = None
            for i, mig in enumerate(migs, start=1):
                if mig.name == last:
                    marker = i + 1
                if mig.name in executed:
                    found["executed"].append(mig)
                elif mig.name in pending:
                    found["pending"].append(mig)
                elif marker is None or i >= marker:
                    found["new"].append(mig)
                else:
                    found["missing"].append(mig)
        for kind, items in found.items():
            if items:
                buckets.setdefault(kind, MigrationList()).append(SubsystemMigrations(sub, namespace(sub), items))
    state.executed_migrations = buckets.get("executed")
    state.pending_migrations = buckets.get("pending")
    state.missing_migrations = buckets.get("missing")
    state.new_migrations = buckets.get("new")
    return state


# ---------------------------------------------------------------------------
# Connectors


class PostgresConnector:
    """The postgres connector: schema_meta, locks and the migration SQL."""

    strategy = "postgres"
    db_desc = "database"

    def __init__(self, conf: KongConf, info: VersionInfo, timeout_ms: float | None = None) -> None:
        self.conf = conf
        self.info = info
        self.timeout_ms = timeout_ms
        self.db_name = conf.get("pg_database", "kong")
        self._conn: psycopg2.extensions.connection | None = None

    # connection ------------------------------------------------------------------

    def init(self) -> None:
        """`db:init_connector()`: connect and read server_version_num."""
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version_num")
        except psycopg2.Error as exc:
            raise pg.PgConnectError(pg.describe(exc)) from None

    def connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = pg.connect(self.conf, self.timeout_ms)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connection().cursor() as cur:
            cur.execute(sql, tuple(params))
            return cur.fetchall() if cur.description else []

    # schema_meta ---------------------------------------------------------------

    def schema_rows(self) -> list[dict[str, Any]] | None:
        if not pg.table_exists(self.connection(), "schema_meta"):
            return None
        rows = self.query("SELECT subsystem, last_executed, executed, pending FROM schema_meta WHERE key = %s",
                          ("schema_meta",))
        return [{"subsystem": r[0], "last_executed": r[1], "executed": r[2] or [], "pending": r[3] or []}
                for r in rows]

    def schema_bootstrap(self) -> None:
        self.query("""CREATE TABLE IF NOT EXISTS schema_meta (
      key            TEXT,
      subsystem      TEXT,
      last_executed  TEXT,
      executed       TEXT[],
      pending        TEXT[],

      PRIMARY KEY (key, subsystem)
    )""")
        self.query("""BEGIN;
  CREATE TABLE IF NOT EXISTS locks (
    key    TEXT PRIMARY KEY,
    owner  TEXT,
    ttl    TIMESTAMP WITH TIME ZONE
  );
  CREATE INDEX IF NOT EXISTS locks_ttl_idx ON locks (ttl);
COMMIT;""")

    def schema_reset(self) -> None:
        conn = self.connection()
        schema_name = pg.current_schema(conn)
        user = self.conf.get("pg_user", "kong")
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema_name}" AUTHORIZATION "{user}"')
            cur.execute(f'GRANT ALL ON SCHEMA "{schema_name}" TO "{user}"')
            cur.execute("COMMIT")

    def record_migration(self, subsystem: str, name: str, state: str) -> None:
        if state == "executed":
            sql = ("INSERT INTO schema_meta (key, subsystem, last_executed, executed) VALUES (%s, %s, %s, ARRAY[%s]) "
                   "ON CONFLICT (key, subsystem) DO UPDATE SET last_executed = EXCLUDED.last_executed, "
                   "executed = ARRAY_APPEND(COALESCE(schema_meta.executed, ARRAY[]::TEXT[]), %s)")
            params: tuple[Any, ...] = ("schema_meta", subsystem, name, name, name)
        elif state == "pending":
            sql = ("INSERT INTO schema_meta (key, subsystem, pending) VALUES (%s, %s, ARRAY[%s]) "
                   "ON CONFLICT (key, subsystem) DO UPDATE SET pending = ARRAY_APPEND(schema_meta.pending, %s)")
            params = ("schema_meta", subsystem, name, name)
        elif state == "teardown":
            sql = ("INSERT INTO schema_meta (key, subsystem, last_executed, executed) VALUES (%s, %s, %s, ARRAY[%s]) "
                   "ON CONFLICT (key, subsystem) DO UPDATE SET last_executed = EXCLUDED.last_executed, "
                   "executed = ARRAY_APPEND(COALESCE(schema_meta.executed, ARRAY[]::TEXT[]), %s), "
                   "pending = ARRAY_REMOVE(COALESCE(schema_meta.pending, ARRAY[]::TEXT[]), %s)")
            params = ("schema_meta", subsystem, name, name, name, name)
        else:
            raise ValueError(f"unknown 'state' argument: {state}")
        self.query(sql, params)

    def run_up(self, subsystem: str, migration: Migration) -> None:
        """One migration's `up` (SQL, then its `up_f` steps), wrapped in BEGIN ... COMMIT."""
        self._run_steps(schema.migration_steps(subsystem, migration, "up"))

    def run_teardown(self, subsystem: str, migration: Migration) -> None:
        self._run_steps(schema.migration_steps(subsystem, migration, "teardown"))

    def _run_steps(self, steps: list[Any]) -> None:
        if not steps:
            return
        with self.connection().cursor() as cur:
            cur.execute("BEGIN")
            try:
                for step in steps:
                    if isinstance(step, str):
                        cur.execute(step)
                    else:
                        step(cur)
                cur.execute("COMMIT")
            except psycopg2.Error:
                cur.execute("ROLLBACK")
                raise

    # locks ---------------------------------------------------------------------

    def insert_lock(self, key: str, ttl: float, owner: str) -> bool:
        with self.connection().cursor() as cur:
            cur.execute("BEGIN")
            try:
                cur.execute("DELETE FROM locks WHERE ttl < CURRENT_TIMESTAMP AT TIME ZONE 'UTC'")
                cur.execute("INSERT INTO locks (key, owner, ttl) VALUES (%s, %s, now() + make_interval(secs => %s)) "
                            "ON CONFLICT DO NOTHING", (key, owner, float(ttl)))
                inserted = cur.rowcount == 1
                cur.execute("COMMIT")
            except psycopg2.Error:
                cur.execute("ROLLBACK")
                raise
        return inserted

    def read_lock(self, key: str) -> bool:
        rows = self.query("SELECT * FROM locks WHERE key = %s AND ttl >= CURRENT_TIMESTAMP AT TIME ZONE 'UTC' "
                          "LIMIT 1", (key,))
        return bool(rows)

    def remove_lock(self, key: str, owner: str) -> None:
        self.query("DELETE FROM locks WHERE key = %s AND owner = %s", (key, owner))


class OffConnector:
    """`database = off`: every known migration counts as executed (kong-facts 2.3)."""

    strategy = "off"
    db_desc = "cache"
    db_name = "in memory"

    def __init__(self, info: VersionInfo, subsystems: dict[str, list[Migration]]) -> None:
        self.info = info
        self.subsystems = subsystems

    def init(self) -> None:
        return None

    def close(self) -> None:
        return None

    def schema_rows(self) -> list[dict[str, Any]]:
        return [{"subsystem": sub, "executed": [m.name for m in migs],
                 "last_executed": migs[-1].name if migs else None, "pending": []}
                for sub, migs in self.subsystems.items()]

    def schema_bootstrap(self) -> None:
        return None

    def schema_reset(self) -> None:
        return None

    def record_migration(self, subsystem: str, name: str, state: str) -> None:
        return None

    def run_up(self, subsystem: str, migration: Migration) -> None:
        return None

    def run_teardown(self, subsystem: str, migration: Migration) -> None:
        return None

    def insert_lock(self, key: str, ttl: float, owner: str) -> bool:
        return True

    def read_lock(self, key: str) -> bool:
        return False

    def remove_lock(self, key: str, owner: str) -> None:
        return None


Connector = PostgresConnector | OffConnector


# ---------------------------------------------------------------------------
# The DB object: state, mutex, runner


class MigrationsDB:
    """What `kong.db` offers the migrations commands, for one release and config."""

    def __init__(self, conf: KongConf, info: VersionInfo, log: Log, timeout_ms: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.conf = conf
        self.info = info
        self.log = log
        self.sleep = sleep
        self.subsystems = loaded_subsystems(info, conf)
        self.connector: Connector
        if conf.database == "off":
            self.connector = OffConnector(info, self.subsystems)
        else:
            self.connector = PostgresConnector(conf, info, timeout_ms)
        self.owner = str(uuid.uuid4())

    @property
    def strategy_label(self) -> str:
        return "PostgreSQL" if self.connector.strategy == "postgres" else self.connector.strategy

    def prefix_err(self, message: str) -> str:
        return f"[{self.strategy_label} error] {message}"

    def init_connector(self) -> None:
        self.connector.init()

    def close(self) -> None:
        self.connector.close()

    def schema_state(self) -> SchemaState:
        try:
            rows = self.connector.schema_rows()
        except psycopg2.Error as exc:
            raise KongError(self.prefix_err("failed to check schema state: " + pg.describe(exc))) from None
        except pg.PgConnectError as exc:
            raise KongError(self.prefix_err(exc.reason)) from None
        return compute_state(rows, self.subsystems)

    def schema_bootstrap(self) -> None:
        try:
            self.connector.schema_bootstrap()
        except psycopg2.Error as exc:
            raise KongError(self.prefix_err("failed to bootstrap database: " + pg.describe(exc))) from None

    def schema_reset(self) -> None:
        try:
            self.connector.schema_reset()
        except psycopg2.Error as exc:
            raise KongError(self.prefix_err(pg.describe(exc))) from None

    def cluster_mutex(self, ttl: float, callback: Callable[[], None], no_wait: bool = False,
                      no_cleanup: bool = False) -> bool:
        """`DB:cluster_mutex`: True when the callback ran, False when another node held
        the lock (at once with ``no_wait``, or after it was released); raises KongError
        (`[PostgreSQL error] timeout`) when it is still held after ``ttl`` seconds."""
        try:
            acquired = self.connector.insert_lock(MIGRATIONS_MUTEX_KEY, ttl, self.owner)
        except psycopg2.Error as exc:
            raise KongError(self.prefix_err("failed to insert cluster lock: " + pg.describe(exc))) from None
        if not acquired:
            if no_wait:
                return False
            return self._wait_for_lock(ttl)
        try:
            callback()
        except BaseException:
            self._remove_lock_quietly()
            raise
        if not no_cleanup:
            self._remove_lock_quietly()
        return True

    def _wait_for_lock(self, ttl: float) -> bool:
        step = 0.1
        elapsed = 0.0
        while elapsed < ttl:
            self.sleep(step)
            elapsed += step
            if elapsed >= ttl:
                break
            try:
                locked = self.connector.read_lock(MIGRATIONS_MUTEX_KEY)
            except psycopg2.Error as exc:
                raise KongError(self.prefix_err("failed to read cluster lock: " + pg.describe(exc))) from None
            if not locked:
                return False
            step = min(step * 3, MAX_LOCK_WAIT_STEP)
        raise KongError(self.prefix_err("timeout"))

    def _remove_lock_quietly(self) -> None:
        try:
            self.connector.remove_lock(MIGRATIONS_MUTEX_KEY, self.owner)
        except psycopg2.Error:
            self.log.verbose("could not remove the cluster lock")

    def run_migrations(self, migrations: MigrationList, run_up: bool = False, run_teardown: bool = False,
                       skip_teardown: MigrationList | None = None) -> None:
        """`DB:run_migrations`: the run block of kong-facts 2.3."""
        skip = {(s.subsystem, m.name) for s in skip_teardown or [] for m in s.migrations if m.teardown}
        processed = 0
        pending = 0
        for group in migrations:
            self.log("migrating %s on %s '%s'...", group.subsystem, self.connector.db_desc, self.connector.db_name)
            for mig in group.migrations:
                self.log.debug("running migration: %s", mig.name)
                if run_up:
                    self._step(f"failed to run migration '{mig.name}' up",
                               lambda g=group, m=mig: self.connector.run_up(g.subsystem, m))
                    state = "pending" if mig.teardown else "executed"
                    if mig.teardown:
                        pending += 1
                    self._record(group.subsystem, mig.name, state)
                if run_teardown and mig.teardown and (group.subsystem, mig.name) not in skip:
                    self._step(f"failed to run migration '{mig.name}' teardown",
                               lambda g=group, m=mig: self.connector.run_teardown(g.subsystem, m))
                    self._record(group.subsystem, mig.name, "teardown")
                    pending = max(pending - 1, 0)
                suffix = "(pending)" if mig.teardown and not run_teardown else "(executed)"
                self.log("%s migrated up to: %s %s", group.subsystem, mig.name, suffix)
                processed += 1
        self.log("%d migration%s processed", processed, "s" if processed > 1 else "")
        executed = processed - pending
        if executed > 0:
            self.log("%d executed", executed)
        if pending > 0:
            self.log("%d pending", pending)

    def _step(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except psycopg2.Error as exc:
            raise KongError(self.prefix_err(f"{what}: {pg.describe(exc)}")) from None

    def _record(self, subsystem: str, name: str, state: str) -> None:
        self._step(f"failed to record migration '{name}'",
                   lambda: self.connector.record_migration(subsystem, name, state))


# ---------------------------------------------------------------------------
# kong/cmd/utils/migrations.lua


def cmd_bootstrap(state: SchemaState, db: MigrationsDB, ttl: float) -> None:
    if not state.needs_bootstrap:
        db.log("Database already bootstrapped")
        return
    db.log("Bootstrapping database...")
    db.schema_bootstrap()

    def callback() -> None:
        db.run_migrations(state.new_migrations or MigrationList(), run_up=True, run_teardown=True)
        db.log("Database is up-to-date")

    if not db.cluster_mutex(ttl, callback, no_wait=True):
        db.log(NOT_LEADER_MSG)


def cmd_up(state: SchemaState, db: MigrationsDB, ttl: float, force: bool = False) -> bool:
    if state.needs_bootstrap:
        raise KongError("Cannot run migrations: " + NEEDS_BOOTSTRAP_MSG)
    if not force and state.pending_migrations:
        # checked before the mutex too: fails at once even while another node holds the lock
        raise KongError(PENDING_ERROR_MSG)

    def callback() -> None:
        current = db.schema_state()
        if not force and current.pending_migrations:
            raise KongError(PENDING_ERROR_MSG)
        if force and current.executed_migrations:
            db.log.debug("forcing re-execution of these migrations:\n%s", current.executed_migrations)
            db.run_migrations(current.executed_migrations, run_up=True, run_teardown=True,
                              skip_teardown=current.pending_migrations)
            current = db.schema_state()
            if current.pending_migrations:
                db.log("\nDatabase has pending migrations; run 'kong migrations finish' when ready")
                return
        if not current.new_migrations:
            if not force:
                db.log("Database is already up-to-date")
            return
        db.log.debug("migrations to run:\n%s", current.new_migrations)
        db.run_migrations(current.new_migrations, run_up=True)
        current = db.schema_state()
        if current.pending_migrations:
            db.log("\nDatabase has pending migrations; run 'kong migrations finish' when ready")

    ok = db.cluster_mutex(ttl, callback)
    if not ok:
        db.log(NOT_LEADER_MSG)
    return ok


def cmd_finish(state: SchemaState, db: MigrationsDB, ttl: float, force: bool = False) -> None:
    if state.needs_bootstrap:
        raise KongError("Cannot run migrations: " + NEEDS_BOOTSTRAP_MSG)

    def callback() -> None:
        current = db.schema_state()
        if force and current.executed_migrations:
            db.run_migrations(current.executed_migrations, run_up=True, run_teardown=True)
            current = db.schema_state()
        if current.pending_migrations:
            db.log.debug("pending migrations to finish:\n%s", current.pending_migrations)
            db.run_migrations(current.pending_migrations, run_teardown=True)
            current = db.schema_state()
        if current.new_migrations:
            db.log("\n" + NEW_MIGRATIONS_MSG)
            return
        if not force and not current.pending_migrations:
            db.log("No pending migrations to finish")

    if not db.cluster_mutex(ttl, callback, no_wait=True):
        db.log(NOT_LEADER_MSG)


def cmd_reset(state: SchemaState, db: MigrationsDB, ttl: float) -> bool:
    if state.needs_bootstrap:
        db.log("Database not bootstrapped, nothing to reset")
        return False

    def callback() -> None:
        db.log("Resetting database...")
        db.schema_reset()
        db.log("Database successfully reset")

    try:
        ok = db.cluster_mutex(ttl, callback, no_wait=True, no_cleanup=True)
    except KongError as exc:
        if "cluster lock" not in exc.message:
            raise
        db.log.error(exc.message + " - retrying without cluster lock")
        callback()
        return True
    if not ok:
        db.log(NOT_LEADER_MSG)
        return False
    return True


def print_list(state: SchemaState, db: MigrationsDB) -> int:
    """`kong migrations list`: output and exit code (kong-facts 2.4)."""
    log = db.log
    if state.needs_bootstrap:
        log(NEEDS_BOOTSTRAP_MSG)
        return 3
    sep = ""
    if state.executed_migrations:
        log("Executed migrations:\n%s", state.executed_migrations)
        sep = "\n"
    if state.pending_migrations:
        log("%sPending migrations:\n%s", sep, state.pending_migrations)
        sep = "\n"
    if state.new_migrations:
        log("%sNew migrations available:\n%s", sep, state.new_migrations)
        sep = "\n"
    if state.pending_migrations and state.new_migrations:
        if sep:
            log("")
        log.warn("Database has pending migrations from a previous upgrade, "
                 "and new migrations from this upgrade (version %s)", db.info.version)
        log("\nRun 'kong migrations finish' when ready to complete pending migrations "
            "(%s %s will be incompatible with the previous Kong version)",
            db.connector.strategy, db.connector.db_desc)
        return 4
    if state.pending_migrations:
        log("\nRun 'kong migrations finish' when ready")
        return 4
    if state.new_migrations:
        log("\nRun 'kong migrations up' to proceed")
        return 5
    return 0


# ---------------------------------------------------------------------------
# `kong migrations` entry point


def _confirm(prompt: str, stdin: Any, stdout: Any) -> bool | None:
    answers = {"y": True, "Y": True, "yes": True, "YES": True, "n": False, "N": False, "no": False, "NO": False}
    for _attempt in range(3):
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            return None
        answer = answers.get(line.rstrip("\n"))
        if answer is not None:
            return answer
    return None


def execute(info: VersionInfo, conf: KongConf, args: dict[str, Any], log: Log) -> int:
    """Run `kong migrations <command>`; returns the exit code (errors raise KongError)."""
    command = args["command"]
    db_timeout = args.get("db_timeout")
    timeout_ms = float(db_timeout) * 1000 if db_timeout is not None else None
    lock_timeout = float(args.get("lock_timeout") or DEFAULT_LOCK_TIMEOUT)
    db = MigrationsDB(conf, info, log, timeout_ms)
    try:
        db.init_connector()
        state = db.schema_state()
        if command == "list":
            return print_list(state, db)
        if command == "status":
            log.print(state.to_json())
            return 0
        if command == "bootstrap":
            if args.get("force"):
                cmd_reset(state, db, lock_timeout)
                state = db.schema_state()
            cmd_bootstrap(state, db, lock_timeout)
            return 0
        if command == "reset":
            return _reset(info, state, db, args, lock_timeout)
        if command == "up":
            cmd_up(state, db, lock_timeout, force=bool(args.get("force")))
            return 0
        if command == "finish":
            cmd_finish(state, db, lock_timeout, force=bool(args.get("force")))
            return 0
        raise KongError("unreachable")
    finally:
        db.close()


def _reset(info: VersionInfo, state: SchemaState, db: MigrationsDB, args: dict[str, Any],
           lock_timeout: float) -> int:
    """`reset`: prompt on a tty unless --yes; exit 0 when reset, 1 otherwise."""
    if not args.get("yes"):
        stdin = args.get("_stdin") or sys.stdin
        if not stdin.isatty():
            raise KongError("not a tty: invoke 'reset' non-interactively with the --yes flag")
        if not state.needs_bootstrap and not _confirm(info.reset_prompt, stdin, db.log.stdout):
            db.log("cancelled")
            return 0
    return 0 if cmd_reset(state, db, lock_timeout) else 1


# ---------------------------------------------------------------------------
# Used by `kong start` (node.py)


def _db_for(conf: KongConf, info: VersionInfo, log: Log, timeout_ms: float | None) -> MigrationsDB:
    db = MigrationsDB(conf, info, log, timeout_ms)
    db.init_connector()
    return db


def check_state_for_start(conf: KongConf, version_info: VersionInfo, log: Log,
                          timeout_ms: float | None = None) -> SchemaState | None:
    """`migrations_utils.check_state` plus the notices of `kong start` (kong-facts 4.2, 4.3).

    Raises KongError with the nested `<inner path>:<line>: ` prefix Kong's start shows.
    Logs `Database is missing some migrations:` and `Database has pending migrations:`
    (info). Returns the state (None for `database = off`).
    """
    if conf.database == "off":
        return None
    db = _db_for(conf, version_info, log, timeout_ms)
    try:
        state = db.schema_state()
    finally:
        db.close()
    _raise_for_start(state)
    notice_for_start(state, log)
    return state


def _raise_for_start(state: SchemaState) -> None:
    if state.is_up_to_date():
        return
    if state.needs_bootstrap:
        raise KongError(f"{INNER_MIGRATIONS_LUA}:{CHECK_STATE_LINE_BOOTSTRAP}: {NEEDS_BOOTSTRAP_MSG}")
    if state.new_migrations:
        raise KongError(f"{INNER_MIGRATIONS_LUA}:{CHECK_STATE_LINE_NEW}: {NEW_MIGRATIONS_MSG}")


def notice_for_start(state: SchemaState, log: Log) -> None:
    if not (state.missing_migrations or state.pending_migrations):
        return
    sep = ""
    if state.missing_migrations:
        log.info("Database is missing some migrations:\n%s", state.missing_migrations)
        sep = "\n\n"
    if state.pending_migrations:
        log.info("%sDatabase has pending migrations:\n%s", sep, state.pending_migrations)


def run_up(conf: KongConf, version_info: VersionInfo, log: Log, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
           timeout_ms: float | None = None) -> bool:
    """`kong start --run-migrations`: `up` (waits for the lock) when not up to date."""
    if conf.database == "off":
        return True
    db = _db_for(conf, version_info, log, timeout_ms)
    try:
        state = db.schema_state()
        if state.is_up_to_date():
            return True
        return cmd_up(state, db, lock_timeout)
    finally:
        db.close()


def prepare_start(conf: KongConf, version_info: VersionInfo, log: Log, run_migrations: bool = False,
                  lock_timeout: float = DEFAULT_LOCK_TIMEOUT, timeout_ms: float | None = None
                  ) -> SchemaState | None:
    """Everything `kong start` does with the database before starting nginx."""
    if run_migrations:
        try:
            run_up(conf, version_info, log, lock_timeout, timeout_ms)
        except pg.PgConnectError:
            raise
        except KongError as exc:
            raise KongError(f"{INNER_MIGRATIONS_LUA}:66: {exc.message}") from None
    return check_state_for_start(conf, version_info, log, timeout_ms)


def state_for(conf: KongConf, version_info: VersionInfo, log: Log | None = None,
              timeout_ms: float | None = None) -> SchemaState:
    """The schema state as release ``version_info`` sees it (for tests and the lab)."""
    db = _db_for(conf, version_info, log or Log(), timeout_ms)
    try:
        return db.schema_state()
    finally:
        db.close()
