#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kong_config_freeze
short_description: Freeze, verify and thaw Kong configuration writes for an upgrade
version_added: 1.0.0
description:
  - Kong asks for no configuration changes during an upgrade (no Admin API writes, no Kong Manager, decK,
    C(kong config) or direct database edits). This module enforces that where every writer meets, in the
    PostgreSQL database, with a guard trigger on every configuration table.
  - A write through the Admin API of any node (old or new version), Kong Manager, decK or direct SQL fails with
    the database error C(Kong configuration is frozen for an upgrade since <time> by run <run_id> ...). The Admin
    API shows its usual error for database failures and logs that message.
  - Tables Kong writes while serving traffic (rate-limiting counters, cluster events, locks, schema_meta,
    clustering data planes, sessions, OAuth2 tokens, ACME storage) stay writable, and so does the deletion of
    expired rows. Kong's own migrations run while they hold the C(migrations) lock row, so C(kong migrations up)
    and C(finish) work on a frozen database. Tables a migration creates are guarded by the next V(frozen) or
    V(verified).
  - The freeze lives in the database, so it survives node restarts and travels inside a C(pg_dump) into a restored
    database; thaw each database that holds it.
  - Kong's role owns Kong's tables, so on its own it could disable or drop the guard triggers, or delete the freeze
    row. With O(superuser_pg_user), V(frozen) and V(verified) also install, as that superuser, the superuser guard
    of the freeze; Kong's role (any role but a superuser) then cannot disable, rename, replace or drop a guard
    trigger, change or drop the guard function or the freeze table, or update, delete or truncate the freeze row.
    Each is refused with the message
    C(Kong configuration is frozen for an upgrade (since <time> by run <run_id>\), and its superuser guard refuses
    <command> by role <role>) followed by what the command would do. Kong's migrations still run (their DDL leaves
    the guards alone; a guarded table may be dropped while they hold their lock), and V(verified) still guards the
    tables they create.
  - The superuser guard is two event triggers (C(kongops_freeze_ddl) on C(ddl_command_end), C(kongops_freeze_drop)
    on C(sql_drop)), enabled ALWAYS so that they also fire with C(session_replication_role=replica); their functions
    in the schema C(kongops_guard), owned by the superuser; and two triggers on C(kongops_freeze).
  - The superuser guard lets superusers through, since PostgreSQL lets a superuser do anything, including dropping
    event triggers or setting C(session_replication_role=replica), which also turns the guard triggers off (the
    module warns when O(pg_user) may set it). It cannot stop a role that may write Kong's C(locks) table from taking
    Kong's migrations lock (the guard lets writes through while Kong's migrations hold it), nor the owner of the
    database from dropping the whole database. The fingerprint of V(verified) finds such writes.
  - V(thawed) on a database that holds the superuser guard needs O(superuser_pg_user); without it the module fails
    and changes nothing. With it, the guard and the freeze are removed in one transaction.
  - Event triggers belong to the database and only a superuser may create them, so
    M(kongops.upgrade.pg_backup) leaves the superuser guard out of a restore; the restored database holds the
    freeze without it (run V(frozen) with O(superuser_pg_user) on it to guard it again).
  - Returns a configuration fingerprint (a stable hash, and counts per table over all configuration tables), taken
    at the freeze and compared at V(verified) to prove nothing changed, and, with O(compare_database), that two
    databases (X's and Y's) hold the same configuration.
  - For DB-less nodes (O(admin_url) without a database) it fingerprints the node's configuration (its
    C(configuration_hash)); nothing can be enforced there. A hybrid data plane serves no Admin API; with
    O(status_url), the C(configuration_hash) of its status listener is the fingerprint.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.postgres
options:
  state:
    description:
      - V(frozen) freezes (or completes the guards of) the configuration.
      - V(verified) checks the freeze is in place, guards tables created since, and checks the configuration is
        unchanged since the freeze (and equal to O(compare_database) when given).
      - V(thawed) removes the freeze, its guards and its function.
      - V(status) only reports.
    type: str
    choices: [frozen, verified, thawed, status]
    default: status
  run_id:
    description:
      - Identifies the upgrade run that holds the freeze; shown in the rejection message.
    type: str
    default: kongops.upgrade
  reason:
    description:
      - A sentence shown as the hint of the rejection message.
    type: str
    default: Kong Gateway upgrade in progress
  force:
    description:
      - Take over or lift a freeze held by another O(run_id).
    type: bool
    default: false
  compare_database:
    description:
      - With V(verified) or V(status), another database on the same server whose configuration must be the same
        (compared by primary keys and counts per table, which survive migrations).
    type: str
  expected_fingerprint:
    description:
      - With V(verified), the fingerprint (RV(fingerprint.hash) or RV(fingerprint.keys_hash)) the configuration
        must have; by default the one recorded at the freeze.
    type: str
  mode:
    description:
      - V(database) freezes a PostgreSQL-backed cluster.
      - V(dbless) only fingerprints a DB-less node through O(admin_url).
    type: str
    choices: [database, dbless]
    default: database
  admin_url:
    description:
      - Admin API of a DB-less node, with O(mode=dbless).
    type: str
  status_url:
    description:
      - Status listener of a DB-less node or a hybrid data plane, with O(mode=dbless). It is read when O(admin_url) is
        not given or refuses connections (a data plane has no Admin API), and the fingerprint is then the
        C(configuration_hash) alone.
    type: str
  admin_token:
    description:
      - C(Kong-Admin-Token) for O(admin_url).
    type: str
  superuser_pg_user:
    description:
      - A PostgreSQL superuser on the same server. With it, V(frozen) and V(verified) install the superuser guard of
        the freeze (see the description), and V(thawed) removes it with the freeze. The connection is checked (it
        must log in and be a superuser) before anything is changed.
      - Without it nothing changes from a freeze without a superuser guard, except that V(thawed) fails on a database
        that holds one.
    type: str
  superuser_pg_password:
    description:
      - Password of O(superuser_pg_user). Given to C(psql) in its environment, never on a command line nor in a
        file, and never logged.
    type: str
  background:
    description:
      - With O(state=verified), start the proof in a detached process on the host and return at once with
        RV(job_id); a later run with O(job_id) waits for it and returns (or fails with) what the proof found.
      - Unlike Ansible's C(async), which does not pipeline and so keeps the module with its arguments (the database
        password) in a file on the host while the job runs, the arguments stay in the memory of the process. The
        outcome is written to O(job_dir) and holds no secret.
      - In check mode the proof runs at once, as without O(background).
    type: bool
    default: false
  job_id:
    description:
      - Collect the proof a run with O(background=true) started (its RV(job_id)) instead of doing anything else,
        that is, wait up to O(wait_timeout) seconds for it, remove its files, and return what it returned, or fail as it
        failed. Fails when there is no such job, when its process died without an outcome, or at the timeout (the
        job then goes on and can be collected again).
    type: str
  job_dir:
    description:
      - Directory of the background jobs' outcomes (mode 0700, created when missing), on the host that runs the
        module. It must belong to the user the module runs as.
    type: path
    default: ~/.kongops_jobs
  wait_timeout:
    description:
      - Seconds a run with O(job_id) waits for the job.
    type: int
    default: 300
attributes:
  check_mode:
    support: full
    details:
      - Reads the freeze, the guards, the superuser guard and the fingerprint and reports what would change; a thaw
        that would be refused (a superuser guard without O(superuser_pg_user)) fails in check mode too.
  diff_mode:
    support: full
    details:
      - The diff shows whether the configuration is frozen, how many tables are guarded and whether the superuser
        guard is in place.
"""

EXAMPLES = r"""
- name: Freeze configuration writes before the upgrade
  kongops.upgrade.kong_config_freeze:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    state: frozen
    run_id: kong-3.9.1-to-3.10.0
  register: freeze

- name: Prove Y's database holds X's configuration (dual-cluster)
  kongops.upgrade.kong_config_freeze:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    pg_database: kong_y
    compare_database: kong
    state: verified

- name: Freeze with the superuser guard, so that Kong's own role cannot lift the freeze by hand
  kongops.upgrade.kong_config_freeze:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    superuser_pg_user: postgres
    superuser_pg_password: "{{ vault_pg_superuser_password }}"
    state: frozen
    run_id: kong-3.9.1-to-3.10.0

- name: Thaw (the run that froze lifts it; another run_id needs force=true; a superuser guard needs superuser_pg_user)
  kongops.upgrade.kong_config_freeze:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    state: thawed
    run_id: kong-3.9.1-to-3.10.0
"""

RETURN = r"""
job_id:
  description: The background proof just started; give it to O(job_id) to collect it.
  returned: when O(background=true) started a proof
  type: str
  sample: 6f1d0c2ab8e94f4f9d2a7c55e1b0a3d4
job_dir:
  description: Where the background proof writes its outcome.
  returned: when O(background=true) started a proof
  type: str
  sample: /home/kong/.kongops_jobs
frozen:
  description: Whether the configuration is frozen after the module ran.
  returned: always, except when O(background=true) started a proof
  type: bool
  sample: true
frozen_at:
  description: When the freeze was taken (UTC).
  returned: when frozen
  type: str
  sample: "2026-11-22T04:40:00Z"
run_id:
  description: The run holding the freeze.
  returned: when frozen
  type: str
  sample: kong-3.9.1-to-3.10.0
enforced:
  description: Whether writes are enforced (false for DB-less nodes).
  returned: always
  type: bool
  sample: true
superuser_guard:
  description:
    - Whether the superuser guard of the freeze is in place after the module ran (in check mode, whether it would
      be).
  returned: with O(mode=database)
  type: bool
  sample: false
guarded_tables:
  description: Configuration tables carrying the guard.
  returned: with O(mode=database)
  type: list
  elements: str
  sample: ["ca_certificates", "certificates", "consumers", "plugins", "routes", "services", "snis", "targets", "upstreams", "workspaces"]
newly_guarded:
  description: Tables guarded by this run (new tables since the freeze, or all at the first freeze).
  returned: with O(mode=database)
  type: list
  elements: str
  sample: ["ca_certificates", "certificates", "consumers", "plugins", "routes", "services", "snis", "targets", "upstreams", "workspaces"]
fingerprint:
  description: The configuration fingerprint now.
  returned: always
  type: dict
  sample: {"hash": "08efdd05282694c3d26e7192ce789886a0dc803a5466673470a9678c6d14351b",
           "keys_hash": "431de7cc7a0c6611fd106b4c842bd999ae10d4971cdc8da3031490bc29d77030",
           "counts": {"services": 120, "routes": 240}}
  contains:
    hash:
      description:
        - sha256 over every configuration table's count and row hashes. DB-less, the configuration hash the node
          reports on its status API, or an md5 of its declarative configuration when it reports none.
      type: str
      sample: 08efdd05282694c3d26e7192ce789886a0dc803a5466673470a9678c6d14351b
    keys_hash:
      description:
        - sha256 over every configuration table's count and primary keys; stable across migrations. DB-less, a sha256
          of the declarative configuration read from the Admin API, or the configuration hash when only the status
          listener answers.
      type: str
      sample: 431de7cc7a0c6611fd106b4c842bd999ae10d4971cdc8da3031490bc29d77030
    counts:
      description: Row count per configuration table.
      type: dict
      sample: {"services": 120, "routes": 240}
recorded_fingerprint:
  description: The fingerprint recorded when the configuration was frozen (hash, keys_hash, counts).
  returned: with O(mode=database) while the configuration is frozen
  type: dict
  sample: {"hash": "08efdd05282694c3d26e7192ce789886a0dc803a5466673470a9678c6d14351b",
           "keys_hash": "431de7cc7a0c6611fd106b4c842bd999ae10d4971cdc8da3031490bc29d77030",
           "counts": {"services": 120, "routes": 240}}
compare_fingerprint:
  description: The fingerprint of O(compare_database) (hash, keys_hash, counts), compared with this database's.
  returned: when O(compare_database) is given
  type: dict
  sample: {"hash": "08efdd05282694c3d26e7192ce789886a0dc803a5466673470a9678c6d14351b",
           "keys_hash": "431de7cc7a0c6611fd106b4c842bd999ae10d4971cdc8da3031490bc29d77030",
           "counts": {"services": 120, "routes": 240}}
schema_changed_since_freeze:
  description:
    - Whether the schema (the configuration tables' columns and the migrations in C(schema_meta)) differs from the
      one recorded at the freeze, that is whether any migration ran since. A run after a crash reads it to know
      whether the database is still the one it froze.
  returned: with O(mode=database) while the configuration is frozen
  type: bool
  sample: false
unchanged:
  description: With V(verified), whether the configuration is unchanged since the freeze, and how it was compared.
  returned: with O(state=verified)
  type: dict
  sample: {"unchanged": true, "compared": "exact"}
differences:
  description:
    - Tables whose configuration differs from the freeze or from O(compare_database), by table name.
    - Compared with O(expected_fingerprint), only hashes are known, so the one key is C(fingerprint), holding
      the C(expected) fingerprint and the current C(hash) and C(keys_hash).
    - Empty when nothing differs.
  returned: with O(state=verified) or O(compare_database)
  type: dict
  sample: {"routes": {"frozen_count": 240, "count": 241}}
"""

import contextlib
import hashlib
import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._admin_api import AdminApiError, KongHttp
from ansible_collections.kongops.upgrade.plugins.module_utils._background import (
    BackgroundError,
    BackgroundFailure,
    collect,
    start,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._freeze import (
    FreezeError,
    compare,
    config_tables,
    current_schema,
    fingerprint,
    freeze,
    guard,
    guarded_tables,
    read_freeze,
    thaw,
    unchanged_since_freeze,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._pg import POSTGRES_ARGSPEC, PgClient, PgError
from ansible_collections.kongops.upgrade.plugins.module_utils._superuser_guard import (
    GUARD_SCHEMA,
    SuperuserGuardError,
    check_superuser,
    guard_state,
    install_guard,
    thaw_sql,
    warnings_for,
)

NEEDS_SUPERUSER = ("the freeze of database %s was made with a superuser guard (event triggers %s, which PostgreSQL "
                   "lets only a superuser remove), so lifting it needs the superuser connection: set "
                   "superuser_pg_user and superuser_pg_password (in the roles, kong_upgrade_pg_superuser and "
                   "kong_upgrade_pg_superuser_password). Nothing was changed")


def _public(finger):
    return {k: finger[k] for k in ("hash", "keys_hash", "counts") if k in finger}


def run_database(module, pg, su=None):
    """The freeze of a PostgreSQL-backed cluster; ``su`` is the superuser connection, if given."""
    params = module.params
    state = params["state"]
    current = read_freeze(pg)
    tables = config_tables(pg)
    guarded = guarded_tables(pg)
    missing = sorted(set(tables) - set(guarded))
    schema = current_schema(pg)
    sguard = guard_state(pg, schema)
    result = {"changed": False, "enforced": True, "newly_guarded": []}
    holder = current["run_id"] if current else None
    if holder and holder != params["run_id"] and state in ("frozen", "thawed") and not params["force"]:
        raise FreezeError("the configuration is frozen by run %s since %s, not by run %s. Use that run_id, or "
                          "force=true to take it over or lift it" % (holder, current["frozen_at"], params["run_id"]))
    if state == "thawed" and su is None and sguard["needs_superuser"]:
        raise FreezeError(NEEDS_SUPERUSER % (pg.database, ", ".join(sguard["event_triggers"]) or "none left, and "
                                             "its schema %s owned by another role" % GUARD_SCHEMA))
    before = {"frozen": bool(current), "guarded": len(guarded), "superuser_guard": sguard["complete"]}
    superuser_guard_after = sguard["complete"]
    if state == "frozen":
        if current is None:
            finger = fingerprint(pg, tables)
            if not module.check_mode:
                freeze(pg, params["run_id"], params["reason"], tables, finger, schema)
            result.update(changed=True, newly_guarded=tables)
        elif missing:
            if not module.check_mode:
                guard(su or pg, missing, schema)
            result.update(changed=True, newly_guarded=missing)
    elif state == "verified":
        if current is None:
            raise FreezeError("the configuration is not frozen; run this module with state=frozen first")
        if missing:
            if not module.check_mode:
                guard(su or pg, missing, schema)
            result.update(changed=True, newly_guarded=missing)
    elif state == "thawed":
        if current is not None or guarded or sguard["present"]:
            everything = sorted(set(tables) | set(guarded))
            if module.check_mode:
                pass
            elif su is not None:
                su.execute(thaw_sql(everything, schema))
            elif sguard["present"]:
                # What is left of a guard Kong's role may remove (a guard schema it owns, after a restore by hand).
                pg.execute(thaw_sql(everything, schema, event_triggers=False, guard_schema=sguard["schema_exists"]))
            else:
                thaw(pg, everything, schema)
            result.update(changed=True)
        superuser_guard_after = False
    if state in ("frozen", "verified") and su is not None and not sguard["complete"]:
        if not module.check_mode:
            install_guard(su, schema)
        result["changed"] = True
        superuser_guard_after = True
    result["superuser_guard"] = superuser_guard_after
    finger = fingerprint(pg, tables)
    result["fingerprint"] = _public(finger)
    details = (current or {}).get("details") or {}
    if isinstance(details, str):
        details = json.loads(details)
    if current is not None and state != "thawed":
        result["recorded_fingerprint"] = _public(details)
        result["schema_changed_since_freeze"] = details.get("schema_hash") != finger["schema_hash"]
    if state == "verified":
        expected = params["expected_fingerprint"]
        if expected:
            ok = expected in (finger["hash"], finger["keys_hash"])
            # Only hashes are compared: no table can be named, so the difference is the fingerprint.
            how, diffs = "against expected_fingerprint", {} if ok else {
                "fingerprint": {"expected": expected, "hash": finger["hash"], "keys_hash": finger["keys_hash"]}}
        else:
            ok, how, diffs = unchanged_since_freeze(details, finger)
        result["unchanged"] = {"unchanged": ok, "compared": how}
        result["differences"] = diffs
        if not ok:
            raise FreezeError("the configuration changed since it was frozen at %s (compared %s): %s. Find who wrote "
                              "to the database; do not continue the upgrade until it is understood"
                              % (current["frozen_at"], how, json.dumps(diffs, sort_keys=True)), result)
    if params["compare_database"]:
        other = fingerprint(pg.for_database(params["compare_database"]))
        diffs = compare(finger, other)
        result["compare_fingerprint"] = _public(other)
        result.setdefault("differences", {}).update(diffs)
        if diffs:
            raise FreezeError("database %s and %s do not hold the same configuration (by primary keys and counts): %s"
                              % (pg.database, params["compare_database"], json.dumps(diffs, sort_keys=True)), result)
    if not module.check_mode:
        info = read_freeze(pg)
        guarded_after = guarded_tables(pg)
    elif state == "thawed":
        info, guarded_after = None, []
    else:
        info = current if current or state != "frozen" else {"run_id": params["run_id"], "frozen_at": None}
        guarded_after = sorted(set(guarded) | set(result["newly_guarded"]))
    frozen_now = bool(info)
    result["frozen"] = frozen_now
    if info:
        result["frozen_at"] = info.get("frozen_at")
        result["run_id"] = info.get("run_id")
    result["guarded_tables"] = guarded_after
    result["diff"] = {"before": "frozen: %s\nguarded tables: %d\nsuperuser guard: %s\n"
                                % (before["frozen"], before["guarded"], before["superuser_guard"]),
                      "after": "frozen: %s\nguarded tables: %d\nsuperuser guard: %s\n"
                               % (frozen_now, len(result["guarded_tables"]), result["superuser_guard"])}
    return result


def run_dbless(module):
    params = module.params
    if not params["admin_url"] and not params["status_url"]:
        module.fail_json(msg="mode=dbless needs admin_url (the Admin API of the DB-less node) or status_url (its "
                             "status listener; a hybrid data plane has no Admin API)")
    finger = None
    if params["admin_url"]:
        http = KongHttp(params["admin_url"], params.get("admin_token"))
        try:
            status = http.get_json("/status")
        except AdminApiError as exc:
            if exc.status is not None or not params["status_url"]:
                raise
        else:
            config = http.get_json("/config")
            text = (config or {}).get("config") or ""
            finger = {"hash": status.get("configuration_hash") or hashlib.md5(text.encode()).hexdigest(),
                      "keys_hash": hashlib.sha256(text.encode()).hexdigest(), "counts": {}}
    where = params["admin_url"] if finger is not None else params["status_url"]
    if finger is None:
        served = KongHttp(params["status_url"]).get_json("/status").get("configuration_hash")
        if not served:
            raise AdminApiError("%s/status has no configuration_hash" % params["status_url"])
        finger = {"hash": served, "keys_hash": served, "counts": {}}
    result = {"changed": False, "enforced": False, "frozen": False, "fingerprint": finger}
    if params["state"] == "verified" and params["expected_fingerprint"]:
        ok = params["expected_fingerprint"] in (finger["hash"], finger["keys_hash"])
        result["unchanged"] = {"unchanged": ok, "compared": "configuration hash"}
        result["differences"] = {} if ok else {"fingerprint": {
            "expected": params["expected_fingerprint"], "hash": finger["hash"], "keys_hash": finger["keys_hash"]}}
        if not ok:
            module.fail_json(msg="the DB-less configuration of %s changed: hash %s, expected %s"
                             % (where, finger["hash"], params["expected_fingerprint"]), **result)
    return result


def main():
    argument_spec = dict(POSTGRES_ARGSPEC)
    argument_spec.update(
        state=dict(type="str", choices=["frozen", "verified", "thawed", "status"], default="status"),
        run_id=dict(type="str", default="kongops.upgrade"),
        reason=dict(type="str", default="Kong Gateway upgrade in progress"),
        force=dict(type="bool", default=False),
        compare_database=dict(type="str"),
        expected_fingerprint=dict(type="str"),
        mode=dict(type="str", choices=["database", "dbless"], default="database"),
        admin_url=dict(type="str"),
        admin_token=dict(type="str", no_log=True),
        status_url=dict(type="str"),
        superuser_pg_user=dict(type="str"),
        superuser_pg_password=dict(type="str", no_log=True),
        background=dict(type="bool", default=False),
        job_id=dict(type="str"),
        job_dir=dict(type="path", default="~/.kongops_jobs"),
        wait_timeout=dict(type="int", default=300),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_by={"superuser_pg_password": "superuser_pg_user"},
                           mutually_exclusive=[("background", "job_id")])
    params = module.params
    if params["job_id"]:
        try:
            outcome = collect(params["job_dir"], params["job_id"], params["wait_timeout"])
        except BackgroundError as exc:
            module.fail_json(msg="cannot collect the background proof: %s" % exc)
        if outcome.pop("failed", False):
            module.fail_json(**outcome)
        module.exit_json(**outcome)
    if params["background"] and (params["state"] != "verified" or params["mode"] != "database"):
        module.fail_json(msg="background applies to state=verified with mode=database only")
    if params["mode"] == "dbless":
        try:
            module.exit_json(**run_dbless(module))
        except AdminApiError as exc:
            module.fail_json(msg="cannot read the DB-less node: %s" % exc)
    if params["background"] and not module.check_mode:
        try:
            start(module, params["job_dir"], lambda: database_result(module, BackgroundFailure))
        except BackgroundError as exc:
            module.fail_json(msg="cannot start the background proof: %s" % exc)
    module.exit_json(**database_result(module))


def database_result(module, failure=None):
    """What the module returns for a PostgreSQL-backed cluster; a failure fails the module, or raises
    ``failure(msg, result)`` when given (in a background job)."""
    try:
        with contextlib.ExitStack() as stack:
            pg = stack.enter_context(PgClient.from_params(module))
            su = stack.enter_context(superuser_client(module, pg)) if module.params["superuser_pg_user"] else None
            if su is not None:
                check_superuser_connection(module, su, pg.user)
            result = run_database(module, pg, su)
    except FreezeError as exc:
        msg, extra = str(exc.args[0]), (exc.args[1] if len(exc.args) > 1 else {})
    except PgError as exc:
        msg, extra = str(exc), {}
    else:
        if not module._diff:
            result.pop("diff", None)
        return result
    if failure is not None:
        raise failure(msg, extra)
    module.fail_json(msg=msg, **extra)


def superuser_client(module, pg):
    """A connection to the same server and database as ``pg``, as the superuser (its own password file)."""
    params = module.params
    su = PgClient(module, pg.host, pg.port, params["superuser_pg_user"], params["superuser_pg_password"],
                  pg.database, pg.sslmode, pg.bin_dir)
    su.login_options = "superuser_pg_user and superuser_pg_password"
    return su


def check_superuser_connection(module, su, kong_user):
    """Before anything is touched: the superuser logs in and is one; warn about what the guard cannot stop."""
    try:
        version_num = check_superuser(su)
        for warning in warnings_for(su, kong_user, version_num):
            module.warn(warning)
    except PgError as exc:
        raise FreezeError("the superuser connection (superuser_pg_user %s) does not work: %s. Nothing was changed"
                          % (su.user, exc)) from exc
    except SuperuserGuardError as exc:
        raise FreezeError(str(exc)) from exc


if __name__ == "__main__":
    main()
