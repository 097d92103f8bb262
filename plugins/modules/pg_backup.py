#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Verified PostgreSQL backup and restore of a Kong database
version_added: 1.0.0
description:
  - V(present) takes a dump with C(pg_dump) (custom format, or directory format with parallel jobs) and writes,
    beside it, a checksum file and a metadata JSON (server and client versions, database, size, time, label,
    a snapshot of Kong's C(schema_meta), and the row count of every table, taken from the same snapshot as the dump).
  - A backup is verified before the module reports success by a full read of every data block (C(pg_restore
    --file /dev/null), which finds a dump truncated or damaged before its checksum was taken), C(pg_restore --list)
    (a table of contents with data for every table counted in the metadata) and its checksum. In the custom format
    the full read follows the dump while C(pg_dump) writes it, and the row counts are taken meanwhile in the
    dump's snapshot, so a backup costs about what C(pg_dump) costs; in the directory format the full read follows
    the dump. An existing backup is verified in full again before it is reused (V(present)) or by V(verified). A
    restore checks the checksum (against the checksum file and the metadata, which hold the checksum of the dump
    that was read in full) and the table of contents, not a second full read, since C(pg_restore) reads every block as
    it restores and stops at the first it cannot. An existing verified backup with the same O(label) is reused
    unless O(force), or unless O(fingerprint) says the database changed since that backup was taken (then a new
    backup is taken and the old one is kept under another label, see RV(superseded)).
  - Taking a backup can be cut short (a killed run, a lost session). C(pg_dump) writes C(<dump>.partial), renamed
    into place once complete, and C(<label>.taking) marks the take from its start until the new backup verified. A
    label whose files do not verify while that marker is there is an unfinished take, never a backup; it is removed,
    with a warning, and a new backup is taken (see RV(unfinished)). Files that do not verify without the marker are
    refused as before.
  - V(restored) checks a backup (see above; a backup whose take never finished is refused), then restores it into
    O(target_database), creating that database when it is
    missing, and checks every table's row count against the metadata. A restored database is marked (a database
    comment naming the backup and its checksum), so running again changes nothing. While the restore runs the
    comment says C(kongops.upgrade restoring <label> ...); a database left so by a restore that was cut short (a
    killed run) is dropped and restored again, with a warning (see RV(unfinished)).
  - A restore leaves out the event triggers of the archive (they belong to the database, and only a superuser may
    create them; C(pg_restore) as Kong's role stops at the first one with C(permission denied to create event
    trigger)) and the rest of the superuser guard of a freeze (the schema C(kongops_guard) and the triggers that
    protect C(kongops_freeze), see M(kongops.upgrade.kong_config_freeze)). So a database restored from a backup
    taken while it was frozen with a superuser guard holds the freeze (its record and the guard triggers on every
    configuration table) without the superuser guard, never half of it; RV(left_out) lists what was left out. Run
    M(kongops.upgrade.kong_config_freeze) with O(kongops.upgrade.kong_config_freeze#module:state=frozen) and a
    superuser connection on it to guard it again, or thaw it as Kong's role.
  - C(pg_dump), C(pg_restore) and C(psql) run from an argument list, never a shell. The password is given to them
    in their environment (C(PGPASSWORD)), never on a command line nor in a file.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.postgres
options:
  state:
    description:
      - V(present) makes sure a verified backup with O(label) exists.
      - V(restored) makes sure O(target_database) holds the backup with O(label).
      - V(verified) only verifies an existing backup.
    type: str
    choices: [present, restored, verified]
    default: present
  backup_dir:
    description:
      - Directory of the backup files, created with mode 0700 when missing. Files are written with mode 0600.
    type: path
    required: true
  label:
    description:
      - Name of the backup; the files are C(<label>.dump) (or C(<label>.dumpdir)), C(<label>.sha256) and
        C(<label>.meta.json).
    type: str
    required: true
  format:
    description:
      - V(custom) writes one compressed file; V(directory) writes one file per table and allows O(jobs).
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description:
      - Parallel jobs for C(pg_dump) (directory format) and C(pg_restore).
    type: int
    default: 1
  compress:
    description:
      - Compression level passed to C(pg_dump -Z).
    type: int
  force:
    description:
      - With V(present), take a new backup even if a verified one with O(label) exists (the old one is kept until
        the new one is verified).
      - With V(restored), replace a target database that already has tables and was not restored from this backup;
        it is dropped and created again (it must have no open connections), then restored. This is how an in-place
        upgrade goes back to X (O(target_database) equal to O(pg_database)).
    type: bool
    default: false
  target_database:
    description:
      - Database to restore into, on the same server. Required with O(state=restored).
      - It may be the database the backup was taken from (a database-level rollback), which needs O(force).
    type: str
  check_space:
    description:
      - Refuse to start a backup when the destination has less free space than the database's size.
    type: bool
    default: true
  fingerprint:
    description:
      - With V(present), a fingerprint of the database's content now, for example the C(fingerprint.hash) that
        M(kongops.upgrade.kong_config_freeze) returns once writes are frozen. It is stored in the backup's metadata.
      - An existing backup with O(label) is reused only when its metadata holds this same fingerprint. Otherwise
        the database changed since that backup was taken (for example a failed run thawed it and admins wrote to
        it before this run), so restoring it would lose those writes; a new backup is taken, and the old one is
        kept, verifiable and restorable, under the label C(<label>.superseded-<time it was taken>).
      - Without it, an existing verified backup is reused whatever changed since.
    type: str
  replace_restored:
    description:
      - With V(restored), a target database that was restored earlier from another backup with this same O(label)
        (its marker names O(label) with another checksum, as after a new backup superseded an old one) is dropped
        and restored again from this backup. It must have no open connections.
      - A target database holding anything else is still refused unless O(force).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details:
      - Connects and checks everything (versions, destination, existing backup, target database) and reports
        what would be done, without writing.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Back up the Kong database before the upgrade
  kongops.upgrade.pg_backup:
    pg_host: db.example.internal
    pg_user: kong
    pg_password: "{{ vault_kong_pg_password }}"
    pg_database: kong
    backup_dir: /var/backups/kong
    label: pre-upgrade-3.10.0
  register: backup

- name: Back up after the freeze, taking a new backup if the database changed since an earlier one
  kongops.upgrade.pg_backup:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    pg_database: kong
    backup_dir: /var/backups/kong
    label: pre-upgrade-3.10.0
    fingerprint: "{{ freeze.fingerprint.hash }}"

- name: Restore it into the database of the new cluster (dual-cluster)
  kongops.upgrade.pg_backup:
    pg_host: db.example.internal
    pg_password: "{{ vault_kong_pg_password }}"
    backup_dir: /var/backups/kong
    label: pre-upgrade-3.10.0
    state: restored
    target_database: kong_y
"""

RETURN = r"""
dump_path:
  description: The dump file or directory.
  returned: always
  type: str
  sample: /var/backups/kong/pre-upgrade-3.10.0.dump
server_version_num:
  description: The server's C(server_version_num), read before the dump (the client must be at least this major version).
  returned: with O(state=present)
  type: int
  sample: 150010
checksum:
  description: sha256 of the dump.
  returned: when the backup exists or was taken
  type: str
  sample: bc77b6741f7423f64cc2914cd9506c1132adee1bd3bc53bdd2ae9a7d13b14639
metadata:
  description: The backup's metadata (see the description).
  returned: when the backup exists or was taken
  type: dict
  sample: {"label": "pre-upgrade-3.10.0", "database": "kong", "host": "db.example.internal", "port": 5432, "format": "custom",
           "file": "pre-upgrade-3.10.0.dump", "size_bytes": 1843200, "created_at": "2026-11-22T04:41:07Z", "duration_seconds": 3.42,
           "sha256": "bc77b6741f7423f64cc2914cd9506c1132adee1bd3bc53bdd2ae9a7d13b14639",
           "checksum": "bc77b6741f7423f64cc2914cd9506c1132adee1bd3bc53bdd2ae9a7d13b14639",
           "server_version_num": 160004, "client_version": "pg_dump (PostgreSQL) 16.4", "database_size_bytes": 11534336,
           "schema_meta": [{"subsystem": "core", "last_executed": "003_100_to_110", "executed": ["000_base", "003_100_to_110"],
                            "pending": null}],
           "row_counts": {"routes": 240, "schema_meta": 1, "services": 120}, "config_tables": ["routes", "services"],
           "fingerprint": "08efdd05282694c3d26e7192ce789886a0dc803a5466673470a9678c6d14351b"}
verified:
  description:
    - Whether the backup passed verification (a full read of the archive when it was taken or reused, and for
      V(verified); checksum and C(pg_restore --list) always).
  returned: always
  type: bool
  sample: true
reused:
  description: Whether an existing verified backup was reused.
  returned: with O(state=present)
  type: bool
  sample: false
unfinished:
  description:
    - With O(state=present), what a run that was interrupted while it took this backup had left and this run
      removed (in check mode, would remove), with a warning. That is the marker C(<label>.taking), the partial dump
      C(<dump>.partial), the dump it was replacing C(<dump>.previous), and, when they do not verify, that take's
      dump, checksum and metadata. Empty when there was nothing.
    - With O(state=restored), the comment of a target database that an interrupted restore of this label left
      half restored (it is dropped and restored again).
  returned: with O(state=present); with O(state=restored) when a restore had been cut short
  type: raw
  sample: ["/var/backups/kong/pre-upgrade-3.10.0.taking", "/var/backups/kong/pre-upgrade-3.10.0.dump.partial"]
superseded:
  description:
    - The label under which the previous backup with O(label) was kept, because O(fingerprint) showed the
      database changed since it was taken (in check mode, the label it would be kept under); null otherwise.
  returned: with O(state=present)
  type: str
  sample: kong-3.9.1-to-3.10.0.superseded-20261201T101500Z
superseded_fingerprint:
  description: The fingerprint the superseded backup recorded (null when it recorded none).
  returned: when RV(superseded) is set
  type: str
  sample: 748ff636cee672e264e9070e5600542fa55702ec3cb37af880d1b417718e9d11
restored_row_counts:
  description: Row count per table in the restored database.
  returned: with O(state=restored) when a restore ran
  type: dict
  sample: {"routes": 240, "schema_meta": 1, "services": 120}
replaced:
  description: Whether an existing target database was dropped and restored again (O(force) or O(replace_restored)).
  returned: with O(state=restored) when a restore ran
  type: bool
  sample: false
left_out:
  description:
    - The entries of the archive (as C(pg_restore --list) names them) that the restore left out (see the description);
      empty when there were none.
  returned: with O(state=restored) when a restore ran
  type: list
  elements: str
  sample: ["EVENT TRIGGER - kongops_freeze_ddl postgres", "SCHEMA - kongops_guard postgres"]
marker:
  description: The comment that marks the restored database.
  returned: with O(state=restored)
  type: str
  sample: "kongops.upgrade restored pre-upgrade-3.10.0 sha256:bc77b6741f7423f64cc2914cd9506c1132adee1bd3bc53bdd2ae9a7d13b14639 at 2026-11-22T04:52:31Z"
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._backup import (
    MARKER_PREFIX,
    RESTORING_PREFIX,
    Backup,
    BackupError,
    BackupPaths,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._pg import POSTGRES_ARGSPEC, PgClient, PgError


def superseded_label(label, meta):
    """The label an outdated backup is kept under: ``<label>.superseded-<when it was taken>``."""
    stamp = re.sub(r"[^0-9TZ]", "", str(meta.get("created_at") or "")) or "unknown"
    return "%s.superseded-%s" % (label, stamp)


def discard_unfinished(module, backup, result, why):
    """Remove what a take cut short (a killed run) left of this label; it is not a backup."""
    paths = backup.paths
    unfinished = [path for path in (paths.dump, paths.checksum, paths.meta) if os.path.lexists(path)]
    unfinished = unfinished + paths.leftovers() if why else paths.leftovers()
    result["unfinished"] = unfinished
    module.warn("a run that was interrupted while it took backup %s left it unfinished%s: this run %s %s and takes a "
                "new backup" % (paths.label, (" (it does not verify: %s)" % why) if why else "",
                                "would remove" if module.check_mode else "removed", ", ".join(unfinished)))
    if not module.check_mode:
        backup.discard_unfinished(with_backup=bool(why))


def ensure_present(module, backup, result):
    paths = backup.paths
    wanted = module.params["fingerprint"]
    facts = backup.preflight()
    result.update(server_version_num=facts["server_version_num"], superseded=None, unfinished=[])
    archive_as = None
    meta = None
    if paths.exists() and not module.params["force"]:
        try:
            meta = backup.verify()
        except BackupError as exc:
            # A take cut short leaves its marker (<label>.taking): what it left is not a backup. Anything
            # else that does not verify is someone's backup, damaged: it is never touched without force.
            if not paths.interrupted():
                raise BackupError("a backup labelled %s exists in %s but does not verify (%s). Nothing was changed; use "
                                  "force=true to replace it or choose another label" % (paths.label, paths.dir, exc)) from exc
            discard_unfinished(module, backup, result, str(exc))
    if meta is not None and paths.leftovers():
        # The backup verifies: its take was cut short while cleaning up after itself.
        result["unfinished"] = paths.leftovers()
        if not module.check_mode:
            backup.discard_unfinished(with_backup=False)
    elif meta is None and paths.leftovers() and not result["unfinished"]:
        discard_unfinished(module, backup, result, None)
    if meta is not None:
        if wanted is None or meta.get("fingerprint") == wanted:
            result.update(changed=False, reused=True, verified=True, checksum=meta["checksum"], metadata=meta)
            return
        # The database changed since that backup: restoring it would lose what was written since.
        archive_as = superseded_label(paths.label, meta)
        result.update(superseded=archive_as, superseded_fingerprint=meta.get("fingerprint"))
        module.warn("the database changed since backup %s was taken (%s; its fingerprint %s, now %s): a new backup "
                    "is taken and the old one is kept as %s" % (paths.label, meta.get("created_at"),
                                                                meta.get("fingerprint"), wanted, archive_as))
    backup.check_destination(facts["database_size_bytes"])
    if module.check_mode:
        result.update(changed=True, reused=False, verified=False)
        return
    meta = backup.take(facts, fingerprint=wanted, archive_as=archive_as)
    result.update(changed=True, reused=False, verified=True, checksum=meta["checksum"], metadata=meta)


def ensure_restored(module, backup, result):
    target = module.params["target_database"]
    if backup.paths.interrupted():
        raise BackupError("the take of backup %s never finished (%s is there): it is not a backup and is not restored. "
                          "Nothing was changed; take the backup again (state=present) or restore another label"
                          % (backup.paths.label, backup.paths.taking))
    # The dump was read in full when it was taken; its checksum says it is still that dump, and the
    # restore reads every block again (stopping at the first it cannot).
    meta = backup.verify(full_read=False)
    result.update(verified=True, checksum=meta["checksum"], metadata=meta)
    exists, comment, tables = backup.target_state(target)
    wanted = "%s%s sha256:%s " % (MARKER_PREFIX, meta["label"], meta["sha256"])
    if exists and comment and comment.startswith(wanted) and not module.params["force"]:
        result.update(changed=False, marker=comment)
        return
    ours = "%s%s sha256:" % (MARKER_PREFIX, meta["label"])
    replace = bool(exists and comment and comment.startswith(ours) and module.params["replace_restored"])
    # A restore of this label that was cut short (a killed run) left its database half restored.
    unfinished = bool(exists and comment and comment.startswith("%s%s sha256:" % (RESTORING_PREFIX, meta["label"])))
    if unfinished:
        replace = True
        result["unfinished"] = comment
        module.warn("database %s was left half restored by an interrupted run (its comment: %r): it %s dropped and "
                    "restored again from backup %s" % (target, comment, "would be" if module.check_mode else "is",
                                                       meta["label"]))
    if exists and tables and not (module.params["force"] or replace):
        raise BackupError("database %s already has %d tables and was not restored from backup %s (its comment: %r). "
                          "Nothing was changed; choose an empty or new target_database, or force=true to overwrite it"
                          % (target, tables, meta["label"], comment))
    if module.check_mode:
        result.update(changed=True, marker=None)
        return
    drop = bool(exists and (module.params["force"] or replace))
    counts, marker, left_out = backup.restore(target, meta, exists, drop)
    result["replaced"] = drop  # an existing empty database restored into is not replaced
    result.update(changed=True, restored_row_counts=counts, marker=marker, left_out=left_out)


def main():
    argument_spec = dict(POSTGRES_ARGSPEC)
    argument_spec.update(
        state=dict(type="str", choices=["present", "restored", "verified"], default="present"),
        backup_dir=dict(type="path", required=True),
        label=dict(type="str", required=True),
        format=dict(type="str", choices=["custom", "directory"], default="custom"),
        jobs=dict(type="int", default=1),
        compress=dict(type="int"),
        force=dict(type="bool", default=False),
        target_database=dict(type="str"),
        check_space=dict(type="bool", default=True),
        fingerprint=dict(type="str"),
        replace_restored=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "restored", ["target_database"])])
    params = module.params
    if params["jobs"] < 1:
        module.fail_json(msg="jobs must be 1 or more, got %d" % params["jobs"])
    try:
        paths = BackupPaths(params["backup_dir"], params["label"], params["format"])
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    result = {"changed": False, "dump_path": paths.dump, "verified": False}
    try:
        with PgClient.from_params(module) as pg:
            backup = Backup(pg, paths, params["jobs"], params["compress"], params["check_space"])
            if params["state"] == "present":
                ensure_present(module, backup, result)
            elif params["state"] == "verified":
                meta = backup.verify()
                result.update(verified=True, checksum=meta["checksum"], metadata=meta)
            else:
                ensure_restored(module, backup, result)
    except (BackupError, PgError) as exc:
        module.fail_json(msg=str(exc), **result)
    except OSError as exc:
        module.fail_json(msg="file system error in %s: %s" % (os.path.dirname(paths.dump), exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
