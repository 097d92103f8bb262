#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kong_migrations
short_description: Bring a Kong database to a migration state with C(kong migrations), idempotently
version_added: 1.0.0
description:
  - Reads the migration state of the database a Kong node points at with C(kong migrations list)
    (exit codes 0, 3, 4, 5) and, from Kong 3.0, C(kong migrations status), then runs only the
    C(kong migrations) commands needed to reach O(state).
  - Runs where the C(kong) executable is, with that node's C(kong.conf), prefix and environment.
    For an upgrade, use the executable of the new version Y.
  - V(up) is the expand phase (new migrations applied, teardowns left pending, the database still
    serves the old version X); V(finished) is the contract phase and the point of no return
    (after it, nodes of version X no longer work on this database).
  - "When another node holds the migration lock (a live C(migrations) row in the C(locks) table, read with
    C(psql) where it is installed), or Kong prints C(aborted: another node is performing database changes)
    (exit code 0, nothing ran), the module waits for the other node and re-reads the state, up to
    O(lock_wait_timeout); it never deletes a lock row. An expired row (a crashed node's) does not hold it up:
    Kong removes it when it takes the lock."
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.kong_node
options:
  state:
    description:
      - V(bootstrapped) creates the schema when the database has none, and does nothing otherwise.
      - V(up) runs C(kong migrations up) when there are new migrations. Pending migrations are allowed
        afterwards. Fails when pending migrations of an earlier upgrade remain (Kong refuses C(up) then).
      - V(finished) runs C(finish) (and C(up) first when new migrations exist) until nothing is new and
        nothing is pending.
      - V(status) only reads and reports the state.
    type: str
    choices: [bootstrapped, up, finished, status]
    default: status
  force:
    description:
      - Pass C(-f) to C(up) and C(finish), as Kong documents for newly bundled plugins. C(up -f) re-runs
        already executed migrations; use it only when Kong's upgrade notes say so.
    type: bool
    default: false
  allow_bootstrap:
    description:
      - Allow V(up) and V(finished) to bootstrap a database that has no Kong schema. Off by default, because
        an upgrade pointed at an empty database almost always means the wrong pg_* settings.
    type: bool
    default: false
  lock_wait_timeout:
    description:
      - Seconds to wait for another node that holds the migration lock before failing. The failure names
        the lock's owner and expiry.
      - With C(psql) on the node, the lock is read before each command, so this also bounds the wait of
        C(up), which otherwise blocks inside Kong for its whole O(lock_timeout).
    type: int
    default: 120
attributes:
  check_mode:
    support: full
    details:
      - The state is read and the commands that would run are returned in RV(planned). Whether an V(up)
        leaves migrations pending is not visible before it runs, so with O(state=finished) the C(finish)
        after an V(up) is listed as C(migrations finish (if up leaves migrations pending)).
  diff_mode:
    support: full
    details:
      - The diff shows the migration counts and the pending and new migrations before and after.
notes:
  - Secrets are passed to C(kong) in its environment (C(KONG_PG_PASSWORD)), never on its command line.
seealso:
  - name: Kong upgrade guide
    description: Kong's documented upgrade procedure and the meaning of up and finish.
    link: https://developer.konghq.com/gateway/upgrade/
"""

EXAMPLES = r"""
- name: Report the migration state with the new binary
  kongops.upgrade.kong_migrations:
    kong_executable: /usr/local/bin/kong
    conf: /etc/kong/kong.conf
    state: status
  register: migrations

- name: Expand the schema for Y while X keeps serving (blue-green)
  kongops.upgrade.kong_migrations:
    kong_executable: /opt/kong-3.6.1/bin/kong
    conf: /etc/kong/kong.conf
    pg_password: "{{ vault_kong_pg_password }}"
    state: up

- name: Contract the schema (point of no return; X must be gone)
  kongops.upgrade.kong_migrations:
    kong_executable: /opt/kong-3.6.1/bin/kong
    conf: /etc/kong/kong.conf
    state: finished
"""

RETURN = r"""
state_before:
  description: The migration state read before any change.
  returned: always
  type: dict
  sample: {"state": "new", "needs_bootstrap": false, "executed": {"core": ["000_base", "003_100_to_110"], "session": ["000_base_session"]},
           "pending": {}, "new": {"session": ["003_330_to_3100"]}, "missing": {}}
  contains:
    state:
      description: One of C(up_to_date), C(needs_bootstrap), C(pending), C(new) (C(kong migrations list) exit 0, 3, 4, 5).
      type: str
      sample: new
    needs_bootstrap:
      description: Whether the database has no Kong schema.
      type: bool
      sample: false
    executed:
      description: Executed migrations per subsystem.
      type: dict
      sample: {"core": ["000_base", "003_100_to_110"]}
    pending:
      description: Migrations whose teardown is still owed (run by C(finish)), per subsystem.
      type: dict
      sample: {"core": ["016_280_to_300"]}
    new:
      description: Migrations this binary knows that the database has not run, per subsystem.
      type: dict
      sample: {"session": ["003_330_to_3100"]}
    missing:
      description: Migrations reported missing by C(kong migrations status) (3.0+).
      type: dict
      sample: {}
state_after:
  description: The migration state after the run (equal to RV(state_before) in check mode).
  returned: always
  type: dict
  sample: {"state": "up_to_date", "needs_bootstrap": false,
           "executed": {"core": ["000_base", "003_100_to_110"], "session": ["000_base_session", "003_330_to_3100"]},
           "pending": {}, "new": {}, "missing": {}}
planned:
  description:
    - The C(kong migrations) subcommands the state called for when the module started.
    - A C(finish) that runs only when the C(up) before it leaves migrations pending ends in
      C( (if up leaves migrations pending)).
  returned: always
  type: list
  elements: str
  sample: ["migrations up", "migrations finish (if up leaves migrations pending)"]
commands:
  description: The commands that changed something or were attempted, with their output.
  returned: always
  type: list
  elements: dict
  sample: [{"cmd": "/usr/local/bin/kong migrations up -c /etc/kong/kong.conf --lock-timeout 60", "rc": 0,
            "stdout_lines": ["migrating core on database 'kong'...", "core migrated up to: 016_280_to_300 (pending)"],
            "stderr_lines": []}]
lock:
  description:
    - The C(migrations) row of Kong's C(locks) table as read before anything ran, or V(null) when there is none
      or C(psql) is not on the node (then the lock is not read).
    - A row that has not expired means another node is running migrations now.
  returned: always
  type: dict
  sample: {"owner": "3f0c2b8e-1b9d-4b47-9a07-7c1fd0e6a1f5", "ttl": "2026-11-22 09:41:07.12+00", "expired": false}
  contains:
    owner:
      description: The lock's owner (a node id).
      type: str
      sample: 3f0c2b8e-1b9d-4b47-9a07-7c1fd0e6a1f5
    ttl:
      description: When the lock expires.
      type: str
      sample: "2026-11-22 09:41:07.12+00"
    expired:
      description: Whether it has expired (a crashed node's row, which Kong removes when it next takes the lock).
      type: bool
      sample: false
waited_for_lock_seconds:
  description: Seconds spent waiting for another node that held the migration lock.
  returned: when not in check mode
  type: float
  sample: 0.0
kong_version:
  description: The version of O(kong_executable), from C(kong version).
  returned: always
  type: str
  sample: 3.10.0
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import (
    KONG_NODE_ARGSPEC,
    KongCli,
    KongCliError,
    database_settings,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._migrations import (
    STATES,
    MigrationsError,
    MigrationsRunner,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._pg import PgClient, PgError


def lock_reader(module, cli):
    """Read the migrations lock row with psql, when the node has it; None when it cannot."""
    def read():
        settings = database_settings(cli)
        if settings["database_kind"] != "postgres" or not module.get_bin_path("psql"):
            return None
        try:
            with PgClient(module, settings["host"], settings["port"], settings["user"], settings["password"],
                          settings["database"]) as pg:
                rows = pg.query_json("SELECT owner, ttl::text AS ttl, ttl < now() AS expired FROM locks "
                                     "WHERE key = 'migrations'")
        except PgError:
            return None
        return rows[0] if rows else None
    return read


def main():
    argument_spec = dict(KONG_NODE_ARGSPEC)
    argument_spec.update(
        state=dict(type="str", choices=list(STATES), default="status"),
        force=dict(type="bool", default=False),
        allow_bootstrap=dict(type="bool", default=False),
        lock_wait_timeout=dict(type="int", default=120),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if module.params["lock_wait_timeout"] < 0:
        module.fail_json(msg="lock_wait_timeout must be 0 or more seconds, got %s" % module.params["lock_wait_timeout"])
    cli = KongCli.from_params(module)
    runner = MigrationsRunner(cli, module.params["state"], force=module.params["force"],
                              allow_bootstrap=module.params["allow_bootstrap"],
                              lock_wait_timeout=module.params["lock_wait_timeout"],
                              lock_reader=lock_reader(module, cli))
    try:
        version = str(cli.version())
        result = runner.ensure(check_mode=module.check_mode)
    except (MigrationsError, KongCliError) as exc:
        module.fail_json(msg=str(exc), commands=runner.commands)
    result["kong_version"] = version
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
