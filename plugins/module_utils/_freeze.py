# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freeze Kong configuration writes where every writer meets: the database.

Private to the collection. A freeze is a row in `kongops_freeze` plus a guard trigger
on every configuration table. The guard rejects INSERT, UPDATE, DELETE and TRUNCATE
from any client (Admin API of any node, Kong Manager, decK, `kong config db_import`,
direct SQL) with a message naming the freeze, and lets through:

* Kong's own migrations, while they hold the `migrations` row of the `locks` table
  (kong-facts 2.6), so `kong migrations up/finish` work on a frozen database;
* deletion of expired rows (a `ttl` in the past), which Kong does while serving.

Tables Kong writes while serving (rate-limiting counters, cluster events, sessions,
...) are never guarded (see _kong_tables.RUNTIME_TABLES). Everything lives in the
database, so the freeze survives node restarts and travels inside a pg_dump.
"""

from __future__ import annotations

import hashlib
import json

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_tables import is_config_table
from ansible_collections.kongops.upgrade.plugins.module_utils._pg import quote_ident, quote_literal

FREEZE_TABLE = "kongops_freeze"
GUARD_FUNCTION = "kongops_freeze_guard"
ROW_TRIGGER = "kongops_freeze_guard"
TRUNCATE_TRIGGER = "kongops_freeze_guard_truncate"

# The guard names every relation with its schema and runs with search_path = pg_catalog: with bare
# names a writer's own temporary table called kongops_freeze or locks (pg_temp is searched first)
# let its writes through (seen on PostgreSQL 15), and a function or operator of the writer's schema
# could stand in for a built-in one.
GUARD_SQL = r"""
CREATE OR REPLACE FUNCTION __SCHEMA__.__FN__() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $kongops$
DECLARE
  f record;
BEGIN
  SELECT frozen_at, run_id, reason INTO f FROM __SCHEMA__.__TABLE__ LIMIT 1;
  IF NOT FOUND THEN
    RETURN COALESCE(NEW, OLD);
  END IF;
  IF to_regclass(__LOCKS__) IS NOT NULL
     AND EXISTS (SELECT 1 FROM __SCHEMA__.locks WHERE key = 'migrations' AND ttl > now()) THEN
    RETURN COALESCE(NEW, OLD);
  END IF;
  IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' AND (to_jsonb(OLD) ? 'ttl')
     AND (to_jsonb(OLD) ->> 'ttl') IS NOT NULL
     AND (to_jsonb(OLD) ->> 'ttl')::timestamptz < now() THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'Kong configuration is frozen for an upgrade since % by run %: % on % is rejected until the upgrade thaws it',
    f.frozen_at, f.run_id, TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'read_only_sql_transaction', HINT = COALESCE(f.reason, 'an upgrade is in progress');
END
$kongops$
"""

TABLES_SQL = ("SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() ORDER BY c.relname")

GUARDED_SQL = ("SELECT c.relname AS name FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
               "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
               "AND t.tgname = '%s'" % ROW_TRIGGER)

SCHEMA_SQL = ("SELECT table_name AS name, md5(string_agg(column_name || ':' || data_type, ',' ORDER BY column_name)) AS h "
              "FROM information_schema.columns WHERE table_schema = current_schema() GROUP BY table_name")

# The migrations Kong recorded: data migrations rewrite rows without changing any column (real
# rate-limiting 006_350_to_360 rewrites every rate-limiting plugin's config in 3.4 -> 3.9), so a
# fingerprint's schema is its columns and the migrations that made them.
MIGRATIONS_SQL = ("SELECT coalesce(md5(string_agg(subsystem || ':' || coalesce(array_to_string(executed, ','), '') || ':' "
                  "|| coalesce(array_to_string(pending, ','), ''), '|' ORDER BY subsystem)), '') AS h FROM schema_meta")

# Rows with a ttl are ephemeral (Kong deletes them when they expire): left out of the fingerprint.
TTL_SQL = ("SELECT table_name AS name FROM information_schema.columns WHERE table_schema = current_schema() "
           "AND column_name = 'ttl'")

PKEYS_SQL = ("SELECT c.relname AS name, array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum)) AS cols "
             "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
             "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
             "WHERE i.indisprimary AND n.nspname = current_schema() GROUP BY c.relname")


class FreezeError(Exception):
    """A freeze that cannot be applied, verified or lifted as asked."""


def config_tables(pg):
    return [row["name"] for row in pg.query_json(TABLES_SQL) if is_config_table(row["name"])]


def read_freeze(pg):
    """The freeze row, or None when the database is not frozen."""
    exists = pg.query_json("SELECT to_regclass(%s) IS NOT NULL AS e" % quote_literal(FREEZE_TABLE))
    if not exists or not exists[0]["e"]:
        return None
    rows = pg.query_json("SELECT to_char(frozen_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS frozen_at, "
                         "run_id, reason, fingerprint, details FROM %s" % FREEZE_TABLE)
    return rows[0] if rows else None


def guarded_tables(pg):
    return sorted(row["name"] for row in pg.query_json(GUARDED_SQL))


def fingerprint(pg, tables=None):
    """Counts and hashes per configuration table (rows with a ttl left out), and one overall hash.

    ``full`` hashes whole rows (proves nothing changed in one database); ``keys``
    hashes primary keys only, which survive schema migrations, so the databases of
    X and of Y (restored from X, then migrated) can be compared.
    """
    tables = config_tables(pg) if tables is None else tables
    pkeys = {row["name"]: row["cols"] for row in pg.query_json(PKEYS_SQL)}
    with_ttl = {row["name"] for row in pg.query_json(TTL_SQL)}
    if not tables:
        empty = hashlib.sha256(b"").hexdigest()
        return {"hash": empty, "keys_hash": empty, "schema_hash": empty, "counts": {}, "tables": {}}
    parts = []
    for table in tables:
        cols = pkeys.get(table)
        key_expr = ("concat_ws('|', %s)" % ", ".join("%s::text" % quote_ident(c) for c in cols)) if cols \
            else "md5(to_jsonb(t)::text)"
        parts.append(
            "SELECT %s AS name, count(*) AS n, coalesce(md5(string_agg(md5(to_jsonb(t)::text), '' "
            "ORDER BY md5(to_jsonb(t)::text))), '') AS h, coalesce(md5(string_agg(%s, ',' ORDER BY %s)), '') AS k "
            "FROM %s t%s" % (quote_literal(table), key_expr, key_expr, quote_ident(table),
                             " WHERE t.ttl IS NULL" if table in with_ttl else ""))
    rows = pg.query_json(" UNION ALL ".join(parts))
    columns = {row["name"]: row["h"] for row in pg.query_json(SCHEMA_SQL)}
    has_meta = pg.query_json("SELECT to_regclass('schema_meta') IS NOT NULL AS e")
    migrations = pg.query_json(MIGRATIONS_SQL)[0]["h"] if has_meta and has_meta[0]["e"] else ""
    schema = hashlib.sha256(("".join("%s:%s\n" % (t, columns.get(t, "")) for t in sorted(tables))
                             + "migrations:%s\n" % migrations).encode()).hexdigest()
    per_table = {row["name"]: {"count": int(row["n"]), "hash": row["h"], "keys_hash": row["k"]} for row in rows}
    full = hashlib.sha256()
    keys = hashlib.sha256()
    for name in sorted(per_table):
        item = per_table[name]
        full.update(("%s:%d:%s\n" % (name, item["count"], item["hash"])).encode())
        keys.update(("%s:%d:%s\n" % (name, item["count"], item["keys_hash"])).encode())
    return {"hash": full.hexdigest(), "keys_hash": keys.hexdigest(), "schema_hash": schema,
            "counts": {name: item["count"] for name, item in per_table.items()}, "tables": per_table}


def current_schema(pg):
    """The schema of Kong's tables as the connection ``pg`` sees it (where the freeze lives)."""
    return pg.query_json("SELECT current_schema() AS s")[0]["s"]


def qualified(schema, name):
    return "%s.%s" % (quote_ident(schema), quote_ident(name))


def guard_function_sql(schema):
    """CREATE OR REPLACE of the guard function in ``schema``."""
    return (GUARD_SQL.strip().replace("__SCHEMA__", quote_ident(schema)).replace("__FN__", GUARD_FUNCTION)
            .replace("__TABLE__", FREEZE_TABLE).replace("__LOCKS__", quote_literal(qualified(schema, "locks"))))


def _guard_statements(tables, schema):
    statements = []
    function = qualified(schema, GUARD_FUNCTION)
    for table in tables:
        ident = qualified(schema, table)
        statements.append("DROP TRIGGER IF EXISTS %s ON %s" % (ROW_TRIGGER, ident))
        statements.append("DROP TRIGGER IF EXISTS %s ON %s" % (TRUNCATE_TRIGGER, ident))
        statements.append("CREATE TRIGGER %s BEFORE INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE PROCEDURE %s()"
                          % (ROW_TRIGGER, ident, function))
        statements.append("CREATE TRIGGER %s BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE PROCEDURE %s()"
                          % (TRUNCATE_TRIGGER, ident, function))
    return statements


def _transaction(statements):
    return "BEGIN;\n%s;\nCOMMIT;" % ";\n".join(statements)


def freeze(pg, run_id, reason, tables, finger, schema=None):
    """Create the freeze row and guard every table in ``tables``, in one transaction.

    The guards are (re)made before the row is written: a superuser guard left in place (a
    superuser deleted the row by hand) refuses dropping a guard trigger once the row exists.
    """
    schema = schema or current_schema(pg)
    statements = [
        "CREATE TABLE IF NOT EXISTS %s (id boolean PRIMARY KEY DEFAULT true CHECK (id), frozen_at timestamptz NOT NULL "
        "DEFAULT now(), run_id text NOT NULL, reason text, fingerprint text, details jsonb)"
        % qualified(schema, FREEZE_TABLE),
        guard_function_sql(schema),
    ] + _guard_statements(tables, schema) + [
        "INSERT INTO %s (run_id, reason, fingerprint, details) VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (id) DO NOTHING"
        % (qualified(schema, FREEZE_TABLE), quote_literal(run_id), quote_literal(reason or ""),
           quote_literal(finger["hash"]),
           quote_literal(_json({k: finger[k] for k in ("hash", "keys_hash", "schema_hash", "counts", "tables")}))),
    ]
    pg.execute(_transaction(statements))


def guard(pg, tables, schema=None):
    """Guard tables created since the freeze (for example by a migration)."""
    if tables:
        pg.execute(_transaction(_guard_statements(tables, schema or current_schema(pg))))


def thaw_statements(tables, schema):
    """The statements that lift the freeze of ``schema`` (run in one transaction)."""
    statements = []
    for table in tables:
        statements.append("DROP TRIGGER IF EXISTS %s ON %s" % (ROW_TRIGGER, qualified(schema, table)))
        statements.append("DROP TRIGGER IF EXISTS %s ON %s" % (TRUNCATE_TRIGGER, qualified(schema, table)))
    statements.append("DROP TABLE IF EXISTS %s" % qualified(schema, FREEZE_TABLE))
    statements.append("DROP FUNCTION IF EXISTS %s()" % qualified(schema, GUARD_FUNCTION))
    return statements


def thaw(pg, tables, schema=None):
    pg.execute(_transaction(thaw_statements(tables, schema or current_schema(pg))))


def _json(value):
    return json.dumps(value, sort_keys=True)


def compare(left, right):
    """Differences between two fingerprints on the tables both have (keys only)."""
    diffs = {}
    for name in sorted(set(left["tables"]) | set(right["tables"])):
        a = left["tables"].get(name)
        b = right["tables"].get(name)
        if a is None or b is None:
            present = a or b
            if present["count"]:
                diffs[name] = {"only_in": "left" if b is None else "right", "count": present["count"]}
        elif (a["count"], a["keys_hash"]) != (b["count"], b["keys_hash"]):
            diffs[name] = {"left_count": a["count"], "right_count": b["count"]}
    return diffs


def unchanged_since_freeze(recorded, current):
    """(unchanged, how, differences) of the configuration since the freeze.

    With the same schema, whole rows are compared. When migrations ran (blue-green `up`,
    dual-cluster restore + migrations, in-place), which may rewrite rows even where no column
    changed, rows are compared by primary key and count per table, and tables that appeared
    since must be empty.
    """
    if recorded.get("schema_hash") == current["schema_hash"]:
        field, how = "hash", "exact"
    else:
        field, how = "keys_hash", "by primary keys (migrations ran since the freeze and may rewrite rows)"
    before = recorded.get("tables") or {}
    diffs = {}
    for name in sorted(set(before) | set(current["tables"])):
        old = before.get(name)
        new = current["tables"].get(name)
        if old is None:
            if new["count"]:
                diffs[name] = {"frozen_count": None, "count": new["count"]}
        elif new is None:
            if old["count"]:
                diffs[name] = {"frozen_count": old["count"], "count": None}
        elif (old["count"], old[field]) != (new["count"], new[field]):
            diffs[name] = {"frozen_count": old["count"], "count": new["count"]}
    return not diffs, how, diffs
