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
attributes:
  check_mode:
    support: full
    details:
      - Reads the freeze, the guards and the fingerprint and reports what would change.
  diff_mode:
    support: full
    details:
      - The diff shows whether the configuration is frozen and how many tables are guarded.
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

- name: Thaw (the run that froze lifts it; another run_id needs force=true)
  kongops.upgrade.kong_config_freeze:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    state: thawed
    run_id: kong-3.9.1-to-3.10.0
"""

RETURN = r"""
frozen:
  description: Whether the configuration is frozen after the module ran.
  returned: always
  type: bool
frozen_at:
  description: When the freeze was taken (UTC).
  returned: when frozen
  type: str
  sample: "2026-11-22T04:40:00Z"
run_id:
  description: The run holding the freeze.
  returned: when frozen
  type: str
enforced:
  description: Whether writes are enforced (false for DB-less nodes).
  returned: always
  type: bool
guarded_tables:
  description: Configuration tables carrying the guard.
  returned: with O(mode=database)
  type: list
  elements: str
newly_guarded:
  description: Tables guarded by this run (new tables since the freeze, or all at the first freeze).
  returned: with O(mode=database)
  type: list
  elements: str
fingerprint:
  description: The configuration fingerprint now.
  returned: always
  type: dict
  contains:
    hash:
      description: sha256 over every configuration table's count and row hashes (DB-less, the configuration hash).
      type: str
    keys_hash:
      description: sha256 over every configuration table's count and primary keys; stable across migrations.
      type: str
    counts:
      description: Row count per configuration table.
      type: dict
      sample: {"services": 120, "routes": 240}
recorded_fingerprint:
  description: The fingerprint recorded when the configuration was frozen (hash, keys_hash, counts).
  returned: with O(mode=database) while the configuration is frozen
  type: dict
schema_changed_since_freeze:
  description:
    - Whether the schema (the configuration tables' columns and the migrations in C(schema_meta)) differs from the
      one recorded at the freeze, that is whether any migration ran since. A run after a crash reads it to know
      whether the database is still the one it froze.
  returned: with O(mode=database) while the configuration is frozen
  type: bool
unchanged:
  description: With V(verified), whether the configuration is unchanged since the freeze, and how it was compared.
  returned: with O(state=verified)
  type: dict
differences:
  description: Tables whose configuration differs from the freeze or from O(compare_database).
  returned: with O(state=verified) or O(compare_database)
  type: dict
"""

import hashlib
import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._admin_api import AdminApiError, KongHttp
from ansible_collections.kongops.upgrade.plugins.module_utils._freeze import (
    FreezeError,
    compare,
    config_tables,
    fingerprint,
    freeze,
    guard,
    guarded_tables,
    read_freeze,
    thaw,
    unchanged_since_freeze,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._pg import POSTGRES_ARGSPEC, PgClient, PgError


def _public(finger):
    return {k: finger[k] for k in ("hash", "keys_hash", "counts") if k in finger}


def run_database(module, pg):
    params = module.params
    state = params["state"]
    current = read_freeze(pg)
    tables = config_tables(pg)
    guarded = guarded_tables(pg)
    missing = sorted(set(tables) - set(guarded))
    result = {"changed": False, "enforced": True, "newly_guarded": []}
    holder = current["run_id"] if current else None
    if holder and holder != params["run_id"] and state in ("frozen", "thawed") and not params["force"]:
        raise FreezeError("the configuration is frozen by run %s since %s, not by run %s. Use that run_id, or "
                          "force=true to take it over or lift it" % (holder, current["frozen_at"], params["run_id"]))
    before = {"frozen": bool(current), "guarded": len(guarded)}
    if state == "frozen":
        if current is None:
            finger = fingerprint(pg, tables)
            if not module.check_mode:
                freeze(pg, params["run_id"], params["reason"], tables, finger)
            result.update(changed=True, newly_guarded=tables)
        elif missing:
            if not module.check_mode:
                guard(pg, missing)
            result.update(changed=True, newly_guarded=missing)
    elif state == "verified":
        if current is None:
            raise FreezeError("the configuration is not frozen; run this module with state=frozen first")
        if missing:
            if not module.check_mode:
                guard(pg, missing)
            result.update(changed=True, newly_guarded=missing)
    elif state == "thawed":
        if current is not None or guarded:
            if not module.check_mode:
                thaw(pg, sorted(set(tables) | set(guarded)))
            result.update(changed=True)
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
            how, diffs = "against expected_fingerprint", {} if ok else {"expected": expected}
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
    result["diff"] = {"before": "frozen: %s\nguarded tables: %d\n" % (before["frozen"], before["guarded"]),
                      "after": "frozen: %s\nguarded tables: %d\n" % (frozen_now, len(result["guarded_tables"]))}
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
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if module.params["mode"] == "dbless":
        try:
            module.exit_json(**run_dbless(module))
        except AdminApiError as exc:
            module.fail_json(msg="cannot read the DB-less node: %s" % exc)
    try:
        with PgClient.from_params(module) as pg:
            result = run_database(module, pg)
    except FreezeError as exc:
        extra = exc.args[1] if len(exc.args) > 1 else {}
        module.fail_json(msg=str(exc.args[0]), **extra)
    except PgError as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
