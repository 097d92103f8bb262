# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The superuser guard of a freeze: what stops Kong's own role from lifting the freeze by hand.

Private to the collection. The role that owns Kong's tables may, as their owner, disable or
drop the freeze's guard triggers, replace the guard function or delete the freeze row, and so
get writes past the freeze. Given a superuser connection, the freeze adds, as that superuser:

* an event trigger on ``ddl_command_end`` that refuses a command leaving a guard trigger
  disabled, renamed or replaced, or changing the freeze table or the guard function;
* an event trigger on ``sql_drop`` that refuses dropping a guard trigger, the guard function,
  the freeze table or the guard itself (a guarded table may be dropped only while Kong's
  migrations hold their lock, as some of Kong's migrations do);
* row and TRUNCATE triggers on ``kongops_freeze`` that refuse UPDATE, DELETE and TRUNCATE.

Superusers are let through everywhere: PostgreSQL lets a superuser do anything (drop event
triggers, ``session_replication_role = replica``), so the guard does not pretend otherwise.
The guard's functions live in their own schema, owned by the superuser: Kong's role owns the
database and thereby ``public`` (PostgreSQL 15), and ``DROP SCHEMA public CASCADE`` drops
everything in it, event-trigger functions and their event triggers included, without firing
``sql_drop`` (seen on PostgreSQL 15). Event triggers are enabled ALWAYS, so they fire in a
session with ``session_replication_role = replica`` too (by default they do not).

Event triggers belong to the database and only a superuser may create them, so a restore as
Kong's role leaves them out (see _backup.guard_entries); a restored database holds the freeze
without this guard.
"""

from __future__ import annotations

from ansible_collections.kongops.upgrade.plugins.module_utils._freeze import (
    FREEZE_TABLE,
    GUARD_FUNCTION,
    ROW_TRIGGER,
    TRUNCATE_TRIGGER,
    guard_function_sql,
    qualified,
    thaw_statements,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._pg import quote_ident, quote_literal

GUARD_SCHEMA = "kongops_guard"
DDL_EVENT_TRIGGER = "kongops_freeze_ddl"
DROP_EVENT_TRIGGER = "kongops_freeze_drop"
EVENT_TRIGGERS = (DDL_EVENT_TRIGGER, DROP_EVENT_TRIGGER)
PROTECT_TRIGGER = "kongops_freeze_protect"
PROTECT_TRUNCATE_TRIGGER = "kongops_freeze_protect_truncate"
PROTECT_TRIGGERS = (PROTECT_TRIGGER, PROTECT_TRUNCATE_TRIGGER)
FUNCTIONS = ("is_superuser", "frozen_by", "migrating", "refuse", "protect", "check_ddl", "check_drop")

# pg_trigger.tgtype of each trigger: ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32.
ROW_GUARD_TYPE = 31
TRUNCATE_TYPE = 34
PROTECT_ROW_TYPE = 27

GUARD_SQL = r"""
CREATE FUNCTION __G__.is_superuser() RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $kongops$
  SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
$kongops$;

CREATE FUNCTION __G__.frozen_by() RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $kongops$
DECLARE
  f record;
BEGIN
  IF to_regclass(__FREEZE_LIT__) IS NULL THEN
    RETURN 'its table ' || __FREEZE_LIT__ || ' is gone';
  END IF;
  SELECT frozen_at, run_id INTO f FROM __FREEZE__ LIMIT 1;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  RETURN format('since %s by run %s', f.frozen_at, f.run_id);
END
$kongops$;

CREATE FUNCTION __G__.migrating() RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $kongops$
BEGIN
  IF to_regclass(__LOCKS_LIT__) IS NULL THEN
    RETURN false;
  END IF;
  RETURN EXISTS (SELECT 1 FROM __LOCKS__ WHERE key = 'migrations' AND ttl > now());
END
$kongops$;

CREATE FUNCTION __G__.refuse(what text, would text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $kongops$
BEGIN
  RAISE EXCEPTION 'Kong configuration is frozen for an upgrade (%), and its superuser guard refuses % by role %: it would %',
    __G__.frozen_by(), what, current_user, would
    USING ERRCODE = 'insufficient_privilege',
          HINT = 'Only a superuser may change the guard of a freeze. The upgrade lifts it when it thaws '
                 '(kongops.upgrade.kong_config_freeze state=thawed with superuser_pg_user).';
END
$kongops$;

CREATE FUNCTION __G__.protect() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $kongops$
BEGIN
  IF __G__.is_superuser() THEN
    RETURN COALESCE(NEW, OLD);
  END IF;
  PERFORM __G__.refuse(TG_OP || ' on ' || quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME),
    CASE WHEN TG_OP = 'UPDATE' THEN 'change the record of the freeze' ELSE 'lift the freeze' END);
  RETURN NULL;
END
$kongops$;

CREATE FUNCTION __G__.check_ddl() RETURNS event_trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $kongops$
DECLARE
  freeze_rel oid;
  guard_fn oid;
  r record;
  bad text;
BEGIN
  IF __G__.is_superuser() OR __G__.frozen_by() IS NULL THEN
    RETURN;
  END IF;
  freeze_rel := to_regclass(__FREEZE_LIT__);
  guard_fn := to_regprocedure(__GUARD_FN_LIT__);
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    IF (r.classid = 'pg_class'::regclass AND r.objid = freeze_rel)
       OR (r.classid = 'pg_proc'::regclass AND (r.objid = guard_fn
           OR r.objid IN (SELECT p.oid FROM pg_proc p WHERE p.pronamespace = __G_LIT__::regnamespace))) THEN
      PERFORM __G__.refuse(tg_tag, 'change ' || r.object_identity || ', which the freeze depends on');
    END IF;
  END LOOP;
  IF freeze_rel IS NULL THEN
    PERFORM __G__.refuse(tg_tag, 'rename or remove the freeze table ' || __FREEZE_LIT__);
  END IF;
  IF guard_fn IS NULL THEN
    PERFORM __G__.refuse(tg_tag, 'rename or remove the guard function ' || __GUARD_FN_LIT__);
  END IF;
  SELECT string_agg(format('%I on %s', t.tgname, t.tgrelid::regclass), ', ') INTO bad
    FROM pg_trigger t
   WHERE t.tgfoid = guard_fn
     AND NOT (t.tgenabled IN ('O', 'A') AND t.tgqual IS NULL AND t.tgattr::text = ''
              AND ((t.tgname = __ROW_LIT__ AND t.tgtype = __ROW_TYPE__)
                   OR (t.tgname = __TRUNCATE_LIT__ AND t.tgtype = __TRUNCATE_TYPE__)));
  IF bad IS NOT NULL THEN
    PERFORM __G__.refuse(tg_tag, 'leave a guard trigger disabled, renamed or changed: ' || bad);
  END IF;
  SELECT string_agg(format('%I on %s', t.tgname, t.tgrelid::regclass), ', ') INTO bad
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = __S_LIT__::regnamespace AND t.tgname IN (__ROW_LIT__, __TRUNCATE_LIT__)
     AND t.tgfoid <> guard_fn;
  IF bad IS NOT NULL THEN
    PERFORM __G__.refuse(tg_tag, 'replace a guard trigger with one that does not guard: ' || bad);
  END IF;
  SELECT string_agg(want.name, ', ') INTO bad
    FROM (VALUES (__PROTECT_LIT__, __PROTECT_TYPE__), (__PROTECT_TRUNCATE_LIT__, __TRUNCATE_TYPE__)) AS want(name, type)
   WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t
                      WHERE t.tgrelid = freeze_rel AND t.tgname = want.name AND t.tgfoid = to_regprocedure(__PROTECT_FN_LIT__)
                        AND t.tgenabled IN ('O', 'A') AND t.tgtype = want.type AND t.tgqual IS NULL AND t.tgattr::text = '');
  IF bad IS NOT NULL THEN
    PERFORM __G__.refuse(tg_tag, 'leave a trigger that protects the freeze table disabled, changed or gone: ' || bad);
  END IF;
END
$kongops$;

CREATE FUNCTION __G__.check_drop() RETURNS event_trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $kongops$
DECLARE
  r record;
BEGIN
  IF __G__.is_superuser() OR __G__.frozen_by() IS NULL THEN
    RETURN;
  END IF;
  FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
    IF r.object_type = 'table' AND r.address_names = ARRAY[__S_RAW__, __FREEZE_RAW__] THEN
      PERFORM __G__.refuse(tg_tag, 'drop the freeze table ' || r.object_identity);
    ELSIF r.object_type = 'function' AND r.address_names = ARRAY[__S_RAW__, __GUARD_FN_RAW__] THEN
      PERFORM __G__.refuse(tg_tag, 'drop the guard function ' || r.object_identity);
    ELSIF r.schema_name = __G_RAW__ OR (r.object_type = 'schema' AND r.object_identity = __G_LIT__) THEN
      PERFORM __G__.refuse(tg_tag, 'drop ' || r.object_identity || ', part of the superuser guard');
    ELSIF r.object_type = 'trigger' AND r.address_names[1] = __S_RAW__
          AND r.address_names[3] IN (__PROTECT_LIT__, __PROTECT_TRUNCATE_LIT__) THEN
      PERFORM __G__.refuse(tg_tag, 'drop the trigger ' || r.object_identity || ' that protects the freeze table');
    ELSIF r.object_type = 'trigger' AND r.address_names[1] = __S_RAW__
          AND r.address_names[3] IN (__ROW_LIT__, __TRUNCATE_LIT__) THEN
      IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() d
                      WHERE d.object_type = 'table' AND d.address_names = r.address_names[1:2]) THEN
        PERFORM __G__.refuse(tg_tag, 'drop the guard trigger ' || r.object_identity);
      ELSIF NOT __G__.migrating() THEN
        PERFORM __G__.refuse(tg_tag, 'drop the guarded table ' || quote_ident(r.address_names[1]) || '.'
          || quote_ident(r.address_names[2]) || ' (only Kong''s migrations may, while they hold their lock)');
      END IF;
    END IF;
  END LOOP;
END
$kongops$;

GRANT USAGE ON SCHEMA __G__ TO PUBLIC;

CREATE TRIGGER __PROTECT__ BEFORE UPDATE OR DELETE ON __FREEZE__ FOR EACH ROW EXECUTE PROCEDURE __G__.protect();
CREATE TRIGGER __PROTECT_TRUNCATE__ BEFORE TRUNCATE ON __FREEZE__ FOR EACH STATEMENT EXECUTE PROCEDURE __G__.protect();
ALTER TABLE __FREEZE__ ENABLE ALWAYS TRIGGER __PROTECT__;
ALTER TABLE __FREEZE__ ENABLE ALWAYS TRIGGER __PROTECT_TRUNCATE__;

CREATE EVENT TRIGGER __DDL_ET__ ON ddl_command_end EXECUTE PROCEDURE __G__.check_ddl();
ALTER EVENT TRIGGER __DDL_ET__ ENABLE ALWAYS;
CREATE EVENT TRIGGER __DROP_ET__ ON sql_drop EXECUTE PROCEDURE __G__.check_drop();
ALTER EVENT TRIGGER __DROP_ET__ ENABLE ALWAYS
"""


class SuperuserGuardError(Exception):
    """The superuser connection cannot be used for the guard."""


def _remove_statements(event_triggers=True, guard_schema=True):
    return ((["DROP EVENT TRIGGER IF EXISTS %s" % quote_ident(name) for name in EVENT_TRIGGERS] if event_triggers else [])
            + (["DROP SCHEMA IF EXISTS %s CASCADE" % quote_ident(GUARD_SCHEMA)] if guard_schema else []))


def install_sql(schema):
    """The transaction that (re)installs the superuser guard of the freeze in ``schema``, as a superuser.

    The guard function is replaced too, so it is the current one whatever version of this
    collection froze the database.
    """
    freeze = qualified(schema, FREEZE_TABLE)
    values = {
        "__G__": quote_ident(GUARD_SCHEMA),
        "__G_LIT__": quote_literal(quote_ident(GUARD_SCHEMA)),
        "__G_RAW__": quote_literal(GUARD_SCHEMA),
        "__S_LIT__": quote_literal(quote_ident(schema)),
        "__S_RAW__": quote_literal(schema),
        "__FREEZE__": freeze,
        "__FREEZE_LIT__": quote_literal(freeze),
        "__FREEZE_RAW__": quote_literal(FREEZE_TABLE),
        "__LOCKS__": qualified(schema, "locks"),
        "__LOCKS_LIT__": quote_literal(qualified(schema, "locks")),
        "__GUARD_FN_LIT__": quote_literal(qualified(schema, GUARD_FUNCTION) + "()"),
        "__GUARD_FN_RAW__": quote_literal(GUARD_FUNCTION),
        "__ROW_LIT__": quote_literal(ROW_TRIGGER),
        "__TRUNCATE_LIT__": quote_literal(TRUNCATE_TRIGGER),
        "__PROTECT_LIT__": quote_literal(PROTECT_TRIGGER),
        "__PROTECT_TRUNCATE_LIT__": quote_literal(PROTECT_TRUNCATE_TRIGGER),
        "__PROTECT_FN_LIT__": quote_literal(quote_ident(GUARD_SCHEMA) + ".protect()"),
        "__PROTECT__": quote_ident(PROTECT_TRIGGER),
        "__PROTECT_TRUNCATE__": quote_ident(PROTECT_TRUNCATE_TRIGGER),
        "__ROW_TYPE__": str(ROW_GUARD_TYPE),
        "__TRUNCATE_TYPE__": str(TRUNCATE_TYPE),
        "__PROTECT_TYPE__": str(PROTECT_ROW_TYPE),
        "__DDL_ET__": quote_ident(DDL_EVENT_TRIGGER),
        "__DROP_ET__": quote_ident(DROP_EVENT_TRIGGER),
    }
    body = GUARD_SQL.strip()
    # Longest placeholders first: __G_LIT__ must not be read as __G__ followed by text.
    for key in sorted(values, key=len, reverse=True):
        body = body.replace(key, values[key])
    statements = _remove_statements() + [
        "CREATE SCHEMA %s" % quote_ident(GUARD_SCHEMA),
        "COMMENT ON SCHEMA %s IS %s" % (quote_ident(GUARD_SCHEMA), quote_literal(
            "kongops.upgrade: the superuser guard of the Kong configuration freeze in schema %s; "
            "kongops.upgrade.kong_config_freeze state=thawed with its superuser connection removes it" % schema)),
        guard_function_sql(schema),
        body,
    ]
    return "BEGIN;\n%s;\nCOMMIT;" % ";\n".join(statements)


STATE_SQL = """
SELECT
  (SELECT coalesce(json_object_agg(evtname, evtenabled), '{}'::json) FROM pg_event_trigger
    WHERE evtname IN (%(events)s)) AS event_triggers,
  (SELECT pg_has_role(current_user, nspowner, 'USAGE') FROM pg_namespace WHERE nspname = %(schema)s) AS schema_mine,
  (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(schema)s)
    AS functions,
  (SELECT coalesce(json_object_agg(tgname, tgenabled), '{}'::json) FROM pg_trigger
    WHERE tgrelid = to_regclass(%(freeze)s) AND tgname IN (%(protect)s)) AS protect_triggers
"""


def guard_state(pg, schema):
    """What of the superuser guard the database holds, as the connection ``pg`` sees it.

    ``complete``: every part is in place and enabled. ``present``: some part exists.
    ``needs_superuser``: some part only a superuser may remove (an event trigger, or the guard's
    schema owned by another role).
    """
    row = pg.query_json(STATE_SQL % {
        "events": ", ".join(quote_literal(name) for name in EVENT_TRIGGERS),
        "schema": quote_literal(GUARD_SCHEMA),
        "freeze": quote_literal(qualified(schema, FREEZE_TABLE)),
        "protect": ", ".join(quote_literal(name) for name in PROTECT_TRIGGERS),
    })[0]
    events = row["event_triggers"] or {}
    protect = row["protect_triggers"] or {}
    schema_exists = row["schema_mine"] is not None
    complete = (all(events.get(name) in ("O", "A") for name in EVENT_TRIGGERS)
                and all(protect.get(name) in ("O", "A") for name in PROTECT_TRIGGERS)
                and schema_exists and int(row["functions"]) == len(FUNCTIONS))
    return {
        "complete": complete,
        "present": bool(events or protect or schema_exists),
        "needs_superuser": bool(events) or (schema_exists and not row["schema_mine"]),
        "schema_exists": schema_exists,
        "event_triggers": sorted(events),
    }


def check_superuser(su):
    """Raise SuperuserGuardError unless ``su`` logs in as a superuser; returns the server version number."""
    rows = su.query_json("SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS s, "
                         "current_setting('server_version_num')::int AS v")
    if not rows[0]["s"]:
        raise SuperuserGuardError(
            "superuser_pg_user %s is not a superuser on %s:%s: the superuser guard needs one (PostgreSQL lets only "
            "superusers create event triggers). Nothing was changed; give a superuser role, or leave "
            "superuser_pg_user unset to freeze without the superuser guard" % (su.user, su.host, su.port))
    return int(rows[0]["v"])


def warnings_for(su, kong_user, version_num):
    """What the superuser guard cannot stop for ``kong_user`` on this server, as warnings."""
    parts = ["coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = %s), false) AS super" % quote_literal(kong_user)]
    if version_num >= 150000:
        role = quote_literal(kong_user)
        parts.append("EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) AND has_parameter_privilege(%s, "
                     "'session_replication_role', 'SET') AS replica" % (role, role))
    row = su.query_json("SELECT " + ", ".join(parts))[0]
    found = []
    if row.get("super"):
        found.append("pg_user %s is a superuser: the superuser guard lets superusers through, so it stops nothing "
                     "that %s does. Run Kong with a role that is not a superuser" % (kong_user, kong_user))
    if row.get("replica"):
        found.append("pg_user %s may SET session_replication_role: with it set to replica, the guard triggers of the "
                     "freeze do not fire. Revoke it (REVOKE SET ON PARAMETER session_replication_role FROM %s)"
                     % (kong_user, quote_ident(kong_user)))
    return found


def install_guard(su, schema):
    su.execute(install_sql(schema))


def thaw_sql(tables, schema, event_triggers=True, guard_schema=True):
    """One transaction that removes the superuser guard (its event triggers, its schema), then lifts the freeze.

    Kong's role lifts a freeze whose guard schema it owns (left by a restore made by hand) with
    ``event_triggers=False``: only a superuser may drop an event trigger.
    """
    statements = _remove_statements(event_triggers, guard_schema) + thaw_statements(tables, schema)
    return "BEGIN;\n%s;\nCOMMIT;" % ";\n".join(statements)
