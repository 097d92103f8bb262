#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kong_run_lock
short_description: One upgrade run at a time, with a lock in the database that carries its owner and a heartbeat
version_added: 1.0.0
description:
  - Two upgrade runs against one database (or one set of DB-less nodes) would freeze, back up, shift traffic and roll
    back over each other. The first run takes this lock before its first change; a second run is refused, before it
    changes anything, with the first run's id, controller, process and start time.
  - The lock is one row of the table C(kongops_run_lock) in the database (like Kong's own C(locks) row for
    migrations), or, with O(path), a JSON file on the managed node (DB-less nodes have no database).
  - The holder renews it (V(acquired) again with its own O(token), the heartbeat) at every phase. A lock whose last
    heartbeat is older than its O(ttl) has expired, and the next run takes it over with a warning. So does a run
    given the O(take_over) token of a holder known to be dead (the roles check the holder's process when it ran on
    the same controller), or O(force).
  - The lock is also the run's record for the run after a crash. Every heartbeat may carry the O(phase) the run is
    in and O(facts) about what it changed so far (for example whether X was stopped, the backup's path and
    checksum). A run that takes over a dead run's lock gets them back in RV(taken_over). They must hold no secret.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.postgres
options:
  state:
    description:
      - V(acquired) takes or renews the lock (fails when another live run holds it).
      - V(released) removes the lock if O(token) holds it (another run's lock is left alone).
      - V(status) only reports.
    type: str
    choices: [acquired, released, status]
    default: status
  token:
    description:
      - What identifies this run's hold, unique per run (also for two runs with the same O(run_id)). Required with
        V(acquired) and V(released).
    type: str
  run_id:
    description:
      - The upgrade run's id, shown to a refused run.
    type: str
    default: kongops.upgrade
  controller:
    description:
      - Host name of the control node running the upgrade, shown to a refused run.
    type: str
    default: ''
  pid:
    description:
      - Process id of the run on its control node (C(ansible-playbook)), shown to a refused run.
    type: int
    default: 0
  ttl:
    description:
      - Seconds after the last heartbeat at which the lock expires and another run may take it over.
    type: int
    default: 3600
  take_over:
    description:
      - Token of a holder known to be dead; its lock is taken over even though it has not expired.
    type: str
  force:
    description:
      - Take the lock whoever holds it (an operator who checked that the other run is gone).
    type: bool
    default: false
  path:
    description:
      - Keep the lock in this JSON file on the managed node instead of the database (DB-less nodes).
    type: path
  phase:
    description:
      - With V(acquired), the phase the run is in now, kept with the lock (the run's record). Omitted, the phase
        recorded before is kept.
    type: str
  facts:
    description:
      - With V(acquired), what the run has done so far (JSON-serializable, no secrets), kept with the lock. Omitted,
        the facts recorded before are kept.
    type: dict
  record_path:
    description:
      - A file on the control node that gets the run's record too (O(phase), O(facts), run id, token, controller,
        process), written by the module's action plugin after the lock was taken or renewed, and marked C(ended)
        when it is released. A second copy for the run after a crash, where the database's copy may be gone.
        Written with mode 0600 (its directory 0700 when created); never in check mode.
    type: path
attributes:
  check_mode:
    support: full
    details:
      - Reads the lock and says whether it would be taken; writes nothing.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Take the run lock before the first change
  kongops.upgrade.kong_run_lock:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    state: acquired
    token: "{{ run_token }}"
    run_id: kong-3.4.2-to-3.9.1
    controller: "{{ lookup('ansible.builtin.pipe', 'hostname') }}"

- name: Heartbeat, with the run's record (what a run after a crash needs to know)
  kongops.upgrade.kong_run_lock:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    state: acquired
    token: "{{ run_token }}"
    run_id: kong-3.4.2-to-3.9.1
    phase: stop_x
    facts:
      x_stopped: true
      backup: {path: /var/backups/kong-upgrade/kong-3.4.2-to-3.9.1.dump}

- name: Release it at the end of the run
  kongops.upgrade.kong_run_lock:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    state: released
    token: "{{ run_token }}"
"""

RETURN = r"""
acquired:
  description: Whether this run holds the lock now (in check mode, whether it would).
  returned: always
  type: bool
  sample: true
holder:
  description:
    - The lock's row (token, run_id, controller, pid, started_at, heartbeat_at, expires_at, expired, phase, facts),
      or null. C(phase) and C(facts) are null when the holder recorded none (or wrote the lock with a release before
      they existed).
  returned: always
  type: dict
  sample: {"run_id": "kong-3.4.2-to-3.9.1", "controller": "ops1", "pid": 4242, "expired": false, "phase": "stop_x",
           "facts": {"x_stopped": true}}
taken_over:
  description: The previous holder (with its phase and facts) when this run took its lock over (expired, dead or
    forced), else null.
  returned: always
  type: dict
  sample: {"run_id": "kong-3.4.2-to-3.9.1", "controller": "ops1", "pid": 4242, "started_at": "2026-11-22T04:30:12Z",
           "heartbeat_at": "2026-11-22T04:52:40Z", "expires_at": "2026-11-22T05:52:40Z", "expired": true, "phase": "stop_x",
           "facts": {"x_stopped": true}}
"""

import datetime
import fcntl
import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._pg import POSTGRES_ARGSPEC, PgClient, PgError, quote_literal

TABLE = "kongops_run_lock"
_COLUMNS = "token, run_id, controller, pid, started_at, heartbeat_at, ttl_seconds"


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(value):
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _described(row):
    """The holder as shown to the operator (no token: it is what takes a lock over)."""
    if not row:
        return None
    shown = {k: row.get(k) for k in ("run_id", "controller", "pid", "started_at", "heartbeat_at", "expires_at",
                                     "expired", "phase", "facts")}
    shown["token"] = row.get("token")
    return shown


def refusal(holder, where):
    return (
        "Another upgrade run holds the run lock of %s: run %s from %s (pid %s), started %s, last heartbeat %s%s, "
        "expires %s. This run changed nothing. Wait for that run to end. If it died: re-run from the same control "
        "node (a lock whose process is gone there is taken over), wait until the lock expires, or clear it with "
        "kong_upgrade_break_run_lock=true (kong_run_lock force=true) once you are sure it is not running"
        % (where, holder["run_id"], holder["controller"] or "an unknown controller", holder["pid"],
           holder["started_at"], holder["heartbeat_at"],
           " in phase '%s'" % holder["phase"] if holder.get("phase") else "", holder["expires_at"]))


def _takeover_reason(holder, params):
    if holder["expired"]:
        return "its last heartbeat is older than its ttl (expired %s)" % holder["expires_at"]
    if params["take_over"] and holder["token"] == params["take_over"]:
        return "its process is gone"
    return "force=true"


def decide(module, holder, where, result):
    """Refuse (fail) while another live run holds the lock; warn and note a take-over otherwise."""
    params = module.params
    if not holder or holder["token"] == params["token"]:
        return
    if not (holder["expired"] or params["force"] or (params["take_over"] and holder["token"] == params["take_over"])):
        module.fail_json(msg=refusal(holder, where), **result)
    result["taken_over"] = _described(holder)
    module.warn("Took over the run lock of %s from run %s (%s, pid %s, started %s): %s"
                % (where, holder["run_id"], holder["controller"], holder["pid"], holder["started_at"],
                   _takeover_reason(holder, params)))


# -- database -----------------------------------------------------------------------------
def _db_read(pg):
    # to_jsonb(l): the phase and facts columns are read where they exist (a lock table of an older
    # release has neither until a run of this one takes the lock).
    rows = pg.query_json(
        "SELECT %s, to_jsonb(l) AS whole, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS started, "
        "to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS heartbeat, "
        "to_char((heartbeat_at + make_interval(secs => ttl_seconds)) AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS expires, heartbeat_at + make_interval(secs => ttl_seconds) < now() "
        "AS is_expired FROM %s l WHERE key = 'upgrade'" % (_COLUMNS, TABLE))
    if not rows:
        return None
    row = rows[0]
    whole = row["whole"] if isinstance(row["whole"], dict) else json.loads(row["whole"] or "{}")
    facts = whole.get("facts")
    return {"token": row["token"], "run_id": row["run_id"], "controller": row["controller"], "pid": row["pid"],
            "started_at": row["started"], "heartbeat_at": row["heartbeat"], "expires_at": row["expires"],
            "expired": bool(row["is_expired"]), "phase": whole.get("phase"),
            "facts": json.loads(facts) if isinstance(facts, str) else facts}


def _db_exists(pg):
    return bool(pg.query_json("SELECT to_regclass(%s) IS NOT NULL AS e" % quote_literal(TABLE))[0]["e"])


def run_database(module, pg):
    params = module.params
    state = params["state"]
    where = "database %s" % pg.database
    holder = _db_read(pg) if _db_exists(pg) else None
    result = {"changed": False, "acquired": False, "holder": _described(holder), "taken_over": None}
    if state == "status":
        return result
    token = params["token"]
    if state == "released":
        if holder and holder["token"] == token:
            if not module.check_mode:
                pg.execute("DELETE FROM %s WHERE key = 'upgrade' AND token = %s" % (TABLE, quote_literal(token)))
            result.update(changed=True, holder=None)
        return result
    decide(module, holder, where, result)
    result.update(acquired=True, changed=holder is None or holder["token"] != token)
    if module.check_mode:
        return result
    # One statement: a concurrent run that took the row first makes the WHERE false, and this run
    # is then refused below (the row is read again).
    condition = "l.token = EXCLUDED.token"
    if holder and holder["token"] != token:
        condition += " OR l.token = %s" % quote_literal(holder["token"])
    # The phase and facts (the run's record) are kept from the last heartbeat that gave them, and
    # start empty for a run that takes the lock over: the dead run's record is returned, not inherited.
    phase = quote_literal(params["phase"]) if params["phase"] is not None else "NULL"
    facts = "%s::jsonb" % quote_literal(json.dumps(params["facts"], sort_keys=True)) if params["facts"] is not None \
        else "NULL::jsonb"
    pg.execute(
        "CREATE TABLE IF NOT EXISTS %s (key text PRIMARY KEY, token text NOT NULL, run_id text, controller text, "
        "pid integer, started_at timestamptz NOT NULL DEFAULT now(), heartbeat_at timestamptz NOT NULL DEFAULT now(), "
        "ttl_seconds integer NOT NULL); "
        "ALTER TABLE %s ADD COLUMN IF NOT EXISTS phase text, ADD COLUMN IF NOT EXISTS facts jsonb; "
        "INSERT INTO %s AS l (key, %s, phase, facts) VALUES ('upgrade', %s, %s, %s, %d, now(), now(), %d, %s, %s) "
        "ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, run_id = EXCLUDED.run_id, "
        "controller = EXCLUDED.controller, pid = EXCLUDED.pid, heartbeat_at = now(), ttl_seconds = EXCLUDED.ttl_seconds, "
        "started_at = CASE WHEN l.token = EXCLUDED.token THEN l.started_at ELSE now() END, "
        "phase = CASE WHEN l.token = EXCLUDED.token THEN coalesce(EXCLUDED.phase, l.phase) ELSE EXCLUDED.phase END, "
        "facts = CASE WHEN l.token = EXCLUDED.token THEN coalesce(EXCLUDED.facts, l.facts) ELSE EXCLUDED.facts END "
        "WHERE %s"
        % (TABLE, TABLE, TABLE, _COLUMNS, quote_literal(token), quote_literal(params["run_id"]),
           quote_literal(params["controller"]), int(params["pid"]), int(params["ttl"]), phase, facts, condition))
    now_holder = _db_read(pg)
    if not now_holder or now_holder["token"] != token:
        module.fail_json(msg=refusal(now_holder, where) if now_holder else "the run lock of %s could not be taken" % where,
                         **dict(result, acquired=False, holder=_described(now_holder)))
    result["holder"] = _described(now_holder)
    return result


# -- file (DB-less nodes) -------------------------------------------------------------------
def _file_holder(data, now):
    heartbeat = datetime.datetime.strptime(data["heartbeat_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    expires = heartbeat + datetime.timedelta(seconds=int(data["ttl_seconds"]))
    return dict(data, expires_at=_iso(expires), expired=expires < now)


def run_file(module):
    params = module.params
    path = params["path"]
    where = "%s on this host" % path
    state = params["state"]
    directory = os.path.dirname(path) or "."
    if state != "status" and not module.check_mode and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
    guard_path = path + ".flock"
    guard = None
    if os.path.isdir(directory) and state != "status" and not module.check_mode:
        guard = os.open(guard_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(guard, fcntl.LOCK_EX)
    try:
        now = _now()
        holder = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                holder = _file_holder(json.load(handle), now)
        result = {"changed": False, "acquired": False, "holder": _described(holder), "taken_over": None}
        if state == "status":
            return result
        token = params["token"]
        if state == "released":
            if holder and holder["token"] == token:
                if not module.check_mode:
                    os.unlink(path)
                result.update(changed=True, holder=None)
            return result
        decide(module, holder, where, result)
        mine = bool(holder and holder["token"] == token)
        data = {"token": token, "run_id": params["run_id"], "controller": params["controller"], "pid": params["pid"],
                "started_at": holder["started_at"] if mine else _iso(now),
                "heartbeat_at": _iso(now), "ttl_seconds": params["ttl"],
                "phase": params["phase"] if params["phase"] is not None else (holder.get("phase") if mine else None),
                "facts": params["facts"] if params["facts"] is not None else (holder.get("facts") if mine else None)}
        result.update(acquired=True, changed=holder is None or holder["token"] != token,
                      holder=_described(_file_holder(data, now)))
        if not module.check_mode:
            temporary = path + ".new"
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
                json.dump(data, handle)
            os.replace(temporary, path)
        return result
    finally:
        if guard is not None:
            os.close(guard)


def main():
    argument_spec = dict(POSTGRES_ARGSPEC)
    argument_spec.update(
        state=dict(type="str", choices=["acquired", "released", "status"], default="status"),
        token=dict(type="str", no_log=False),
        run_id=dict(type="str", default="kongops.upgrade"),
        controller=dict(type="str", default=""),
        pid=dict(type="int", default=0),
        ttl=dict(type="int", default=3600),
        take_over=dict(type="str", no_log=False),
        force=dict(type="bool", default=False),
        path=dict(type="path"),
        phase=dict(type="str"),
        facts=dict(type="dict"),
        record_path=dict(type="path"),  # written on the control node by the action plugin
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "acquired", ["token"]), ("state", "released", ["token"])])
    if module.params["ttl"] <= 0:
        module.fail_json(msg="ttl must be a number of seconds above 0 (got %s)" % module.params["ttl"])
    if module.params["path"]:
        module.exit_json(**run_file(module))
    try:
        with PgClient.from_params(module) as pg:
            if module.params["state"] == "released" and not _database_exists(pg):
                module.exit_json(changed=False, acquired=False, holder=None, taken_over=None)
            result = run_database(module, pg)
    except PgError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


def _database_exists(pg):
    """Whether pg's database exists (a release of a lock in a database never created is a no-op)."""
    try:
        pg.query_json("SELECT 1 AS one")
    except PgError as exc:
        if "does not exist" in str(exc):
            return False
        raise
    return True


if __name__ == "__main__":
    main()
