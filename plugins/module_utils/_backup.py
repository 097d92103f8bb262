# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verified PostgreSQL backups of a Kong database, and their restore (kong-facts 7.3).

Private to the collection. A backup is three things side by side in a private
directory: the dump (custom format file or directory format), `<label>.sha256`
and `<label>.meta.json`. Row counts in the metadata come from the same snapshot
as the dump (pg_export_snapshot + pg_dump --snapshot), so a restore can be checked
against them exactly.

Taking a backup can be cut short (a killed run, a lost session): pg_dump writes
`<dump>.partial`, renamed into place once complete, and `<label>.taking` marks the
take from its start until the new backup verified. Files of a label that do not
verify while that marker is there are known to be an unfinished take, never a
backup: they are removed and the backup taken again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import threading
import time

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_tables import is_config_table
from ansible_collections.kongops.upgrade.plugins.module_utils._pg import PgError, quote_ident, quote_literal
from ansible_collections.kongops.upgrade.plugins.module_utils._superuser_guard import GUARD_SCHEMA, PROTECT_TRIGGERS

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MARKER_PREFIX = "kongops.upgrade restored "
# The comment of a target database while a restore into it runs: one cut short (a killed run) is
# known to be ours and unfinished, and is restored again.
RESTORING_PREFIX = "kongops.upgrade restoring "
_END = "__kongops_end__"

# What a restore leaves out of the archive's table of contents (`pg_restore --list` lines, after
# "<id>; <catalog oid> <oid> "): event triggers, which belong to the database and which only a
# superuser may create (pg_restore as Kong's role stops at the first one: "permission denied to
# create event trigger ... Must be superuser to create an event trigger"), and the rest of the
# freeze's superuser guard (its schema and functions, the triggers that protect kongops_freeze),
# which would be a half-guard without its event triggers.
_TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (?P<entry>.+)$")
_LEFT_OUT = re.compile(r"(^|\s)EVENT TRIGGER\s|(^|\s)%s(\s|$)|(^|\s)TRIGGER \S+ kongops_freeze (%s)\s"
                       % (re.escape(GUARD_SCHEMA), "|".join(re.escape(name) for name in PROTECT_TRIGGERS)))


class BackupError(Exception):
    """A backup or restore problem, with what to do about it."""


def split_restore_list(listing):
    """(lines to restore, entries left out) of a `pg_restore --list` output (see _LEFT_OUT)."""
    kept, left_out = [], []
    for line in listing.splitlines():
        match = _TOC_ENTRY.match(line.strip())
        if match and _LEFT_OUT.search(match.group("entry")):
            left_out.append(match.group("entry"))
        else:
            kept.append(line)
    return kept, left_out


def server_major(version_num):
    return version_num // 10000 if version_num >= 100000 else version_num // 100


class BackupPaths:
    def __init__(self, backup_dir, label, fmt):
        if not LABEL_RE.match(label or ""):
            raise BackupError("label %r is not usable as a file name: use letters, digits, '.', '_' and '-'" % (label,))
        self.dir = os.path.abspath(backup_dir)
        self.label = label
        self.format = fmt
        name = label + (".dump" if fmt == "custom" else ".dumpdir")
        self.dump = os.path.join(self.dir, name)
        self.checksum = os.path.join(self.dir, label + ".sha256")
        self.meta = os.path.join(self.dir, label + ".meta.json")
        self.partial = self.dump + ".partial"
        self.previous = self.dump + ".previous"
        # Written when a take starts, removed once the new backup verified.
        self.taking = os.path.join(self.dir, label + ".taking")

    def exists(self):
        return os.path.exists(self.dump) or os.path.exists(self.meta) or os.path.exists(self.checksum)

    def interrupted(self):
        """Whether a take of this label started and never finished (its marker is there)."""
        return os.path.exists(self.taking)

    def leftovers(self):
        """What an unfinished take may have left beside the backup: the marker, the partial dump, the
        dump it was replacing."""
        return [path for path in (self.taking, self.partial, self.previous) if os.path.exists(path)]


def sha256_of(path):
    """sha256 of a dump file, or of a directory dump (sorted names and file contents)."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            digest.update(name.encode() + b"\0")
            with open(os.path.join(path, name), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    else:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    return os.path.getsize(path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _write_private(path, text):
    tmp = path + ".partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


class SnapshotSession:
    """A psql session holding a REPEATABLE READ transaction with an exported snapshot."""

    def __init__(self, pg, timeout=600):
        self.pg = pg
        self.timeout = timeout
        self.proc = None
        self._buffer = b""

    def __enter__(self):
        env = dict(os.environ)
        env.update(self.pg.env())
        argv = [self.pg.tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        self._buffer = b""
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, bufsize=0)
        self.ask("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return self

    def ask(self, sql):
        """Send one statement and return its stdout lines (the session stays open)."""
        if self.proc.poll() is not None:
            raise PgError(self.pg.explain(self.proc.stderr.read().decode("utf-8", "replace")))
        self.proc.stdin.write((sql.rstrip().rstrip(";") + ";\n\\echo " + _END + "\n").encode("utf-8"))
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while True:
            text = self._buffer.decode("utf-8", "replace")
            lines = text.split("\n")
            if _END in lines[:-1]:
                end = lines.index(_END)
                rest = "\n".join(lines[end + 1:])
                self._buffer = rest.encode("utf-8")
                return lines[:end]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PgError("psql did not answer within %s s" % self.timeout)
            ready, _w, _x = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise PgError(self.pg.explain(self.proc.stderr.read().decode("utf-8", "replace")))
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait()
                raise PgError(self.pg.explain(self.proc.stderr.read().decode("utf-8", "replace")))
            self._buffer += chunk

    def __exit__(self, *exc_info):
        if self.proc is not None:
            try:
                if self.proc.poll() is None:
                    self.proc.stdin.write(b"COMMIT;\n\\q\n")
                    self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        return False


def _json_line(lines):
    text = "\n".join(lines).strip()
    return json.loads(text) if text else None


# The row count of every table of the database's schema, in one statement (query_to_xml runs each
# count inside it, so all of them see the statement's snapshot).
COUNTS_SQL = ("SELECT coalesce(json_object_agg(c.relname, (xpath('/row/n/text()', query_to_xml(format("
              "'SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint "
              "ORDER BY c.relname), '{}'::json) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()")


def count_rows(ask):
    """Row count of every table of the schema, through ``ask`` (a callable returning lines)."""
    return {k: int(v) for k, v in (_json_line(ask(COUNTS_SQL)) or {}).items()}


def schema_meta_snapshot(ask, tables):
    if "schema_meta" not in tables:
        return None
    sql = ("SELECT coalesce(json_agg(json_build_object('subsystem', subsystem, 'last_executed', last_executed, "
           "'executed', executed, 'pending', pending) ORDER BY subsystem), '[]'::json) FROM schema_meta "
           "WHERE key = 'schema_meta'")
    return _json_line(ask(sql))


def _stop(proc):
    """Kill ``proc`` if it still runs and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class _FollowingRead(threading.Thread):
    """Reads a custom-format dump in full while pg_dump writes it: the file's bytes, as they are
    appended, go to `pg_restore --file /dev/null` on its standard input.

    pg_dump writes a custom-format archive front to back (header, table of contents, then each
    table's data), and once done goes back to fill in the data offsets of the table of contents,
    which keeps its size. What this read sees is therefore the archive pg_dump would have written to
    a pipe (the same bytes, offsets not yet known), which pg_restore reads sequentially: every data
    block is decompressed and decoded once, while the dump is being written instead of after it.
    """

    def __init__(self, pg, path, writer):
        super().__init__(name="pg_backup-full-read", daemon=True)
        self.path = path
        self.writer = writer
        self.errors = pg.private_path("full-read.err")
        with open(self.errors, "wb") as err_handle:
            self.reader = pg.spawn([pg.tool("pg_restore"), "--file", os.devnull], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=err_handle)
        self.failure = None
        self.start()

    def _open(self):
        while True:
            try:
                return open(self.path, "rb")
            except FileNotFoundError:
                if self.writer.poll() is not None:
                    return None  # pg_dump ended without writing anything: its own error says why
                time.sleep(0.01)

    def run(self):
        try:
            handle = self._open()
            if handle is None:
                return
            with handle:
                while True:
                    done = self.writer.poll() is not None  # before the read: nothing written after is missed
                    chunk = handle.read(1 << 20)
                    if chunk:
                        self.reader.stdin.write(chunk)
                    elif done:
                        return
                    else:
                        time.sleep(0.01)
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its exit code and message say why
        except OSError as exc:
            self.failure = str(exc)
        finally:
            try:
                self.reader.stdin.close()
            except OSError:
                pass

    def finish(self):
        """Wait for the read to end once pg_dump ended; (exit code, message) of the read. A read
        that cannot go on (pg_dump killed) is stopped."""
        if self.writer.poll() is None:
            _stop(self.writer)
        self.join()
        rc = self.reader.wait()
        with open(self.errors, "rb") as err_handle:
            err = err_handle.read().decode("utf-8", "replace")
        if self.failure:
            return rc or 1, "%s %s" % (self.failure, err)
        return rc, err


class Backup:
    """Take, verify and restore one labelled backup."""

    def __init__(self, pg, paths, jobs=1, compress=None, check_space=True):
        self.pg = pg
        self.paths = paths
        self.jobs = jobs
        self.compress = compress
        self.check_space = check_space
        self._listing = None

    # -- verification ------------------------------------------------------------
    def read_meta(self):
        try:
            with open(self.paths.meta) as handle:
                return json.load(handle)
        except (OSError, ValueError) as exc:
            raise BackupError("backup metadata %s is missing or unreadable: %s" % (self.paths.meta, exc)) from exc

    def verify(self, full_read=True):
        """Check the backup on disk and return its metadata (with ``checksum``). Raises BackupError.

        The checksum (against `<label>.sha256` and the metadata, which hold the checksum of the
        dump as it was read in full when it was taken) and the table of contents
        (`pg_restore --list`: data for every table counted in the metadata) are always checked;
        with ``full_read`` every data block is read again (`pg_restore --file /dev/null`), which
        finds a dump damaged in a way its recorded checksum cannot tell (one whose checksum was
        taken from a damaged file). A restore, which reads every block itself and stops at the
        first it cannot, trusts a dump whose checksum matches the verified one.
        """
        if not os.path.exists(self.paths.dump):
            raise BackupError("backup %s not found" % self.paths.dump)
        meta = self.read_meta()
        try:
            with open(self.paths.checksum) as handle:
                recorded = handle.read().split()[0]
        except (OSError, IndexError) as exc:
            raise BackupError("checksum file %s is missing or empty" % self.paths.checksum) from exc
        actual = sha256_of(self.paths.dump)
        if actual != recorded:
            raise BackupError("backup %s does not match its checksum (recorded %s, now %s): it was changed or is "
                              "incomplete" % (self.paths.dump, recorded, actual))
        if meta.get("sha256") not in (None, actual):
            raise BackupError("backup %s does not match the checksum in its metadata %s (recorded %s, now %s): the "
                              "dump or its metadata was changed"
                              % (self.paths.dump, self.paths.meta, meta.get("sha256"), actual))
        self.check_contents(self.paths.dump, meta.get("row_counts", {}))
        if full_read:
            rc, out, err = self.pg.run([self.pg.tool("pg_restore"), "--file", os.devnull, self.paths.dump])
            if rc != 0:
                raise BackupError(self._unreadable(self.paths.dump, err or out))
        meta["checksum"] = actual
        return meta

    def check_contents(self, dump, row_counts):
        """`pg_restore --list` of ``dump``: it must hold data for every table in ``row_counts``.
        Keeps the listing for the restore (see _restore_list)."""
        rc, out, err = self.pg.run([self.pg.tool("pg_restore"), "--list", dump])
        if rc != 0:
            raise BackupError("pg_restore --list cannot read %s: %s" % (dump, (err or out).strip()))
        listed = set(re.findall(r" TABLE DATA \S+ (\S+) ", out))
        missing = sorted(t for t in row_counts if t not in listed)
        if missing:
            raise BackupError("backup %s has no data for tables %s recorded in its metadata"
                              % (dump, ", ".join(missing)))
        self._listing = out
        return out

    @staticmethod
    def _unreadable(dump, text):
        return ("pg_restore cannot read every data block of %s (%s): the dump is damaged or incomplete; take a new "
                "backup" % (dump, (text or "").strip()))

    # -- taking ---------------------------------------------------------------------
    def preflight(self):
        """Read the server and check client version and destination; returns facts."""
        rows = self.pg.query_json("SELECT current_setting('server_version_num')::int AS v, "
                                  "pg_database_size(current_database()) AS size")
        version_num, db_size = int(rows[0]["v"]), int(rows[0]["size"])
        client_text, client_major = self.pg.tool_version("pg_dump")
        major = server_major(version_num)
        if client_major < major:
            raise BackupError("pg_dump is version %d (%s) but the server is PostgreSQL %d: pg_dump cannot dump a "
                              "newer server. Install the PostgreSQL %d client (Debian: postgresql-client-%d) or set "
                              "pg_bin_dir" % (client_major, client_text, major, major, major))
        return {"server_version_num": version_num, "server_major": major, "client_version": client_text,
                "database_size_bytes": db_size}

    def check_destination(self, db_size):
        directory = self.paths.dir
        probe = directory
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise BackupError("backup directory %s cannot be created: %s is a file, not a directory; choose another "
                              "backup_dir" % (directory, probe))
        if not os.access(probe, os.W_OK | os.X_OK):
            raise BackupError("backup directory %s is not writable by this user (checked %s); choose backup_dir on a "
                              "writable volume" % (directory, probe))
        if self.check_space:
            stat = os.statvfs(probe)
            free = stat.f_bavail * stat.f_frsize
            if free < db_size:
                raise BackupError("not enough room for the backup in %s: %d bytes free, the database is %d bytes. "
                                  "Free space or choose another backup_dir (or set check_space=false if you know "
                                  "the dump compresses well)" % (directory, free, db_size))

    def take(self, facts, fingerprint=None, archive_as=None):
        """A new verified backup. ``fingerprint`` (the database's content fingerprint now) goes into the
        metadata; with ``archive_as`` the backup that had this label is kept under that label instead of
        being replaced, once the new dump is written.

        One pass where the format allows it: while pg_dump writes the dump in the snapshot the session
        exported, the session counts every table's rows in that same snapshot and (custom format) the
        dump is read in full as it is written (_FollowingRead). Then its checksum and table of contents
        are taken; only a dump that passed all of them becomes the backup."""
        os.makedirs(self.paths.dir, mode=0o700, exist_ok=True)
        os.chmod(self.paths.dir, 0o700)
        partial = self.paths.partial
        _remove(partial)
        started = time.time()
        _write_private(self.paths.taking, json.dumps({"pid": os.getpid(), "started": started}) + "\n")
        errors = self.pg.private_path("pg_dump.err")
        with SnapshotSession(self.pg) as session:
            snapshot = session.ask("SELECT pg_export_snapshot()")[0].strip()
            argv = [self.pg.tool("pg_dump"), "--snapshot", snapshot, "--no-password",
                    "-F", "c" if self.paths.format == "custom" else "d", "-f", partial]
            if self.paths.format == "directory" and self.jobs > 1:
                argv += ["-j", str(self.jobs)]
            if self.compress is not None:
                argv += ["-Z", str(self.compress)]
            with open(errors, "wb") as err_handle:
                dump = self.pg.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_handle)
            following = _FollowingRead(self.pg, partial, dump) if self.paths.format == "custom" else None
            try:
                counts = count_rows(session.ask)
                schema_meta = schema_meta_snapshot(session.ask, counts)
            except BaseException:
                _stop(dump)
                if following is not None:
                    following.finish()
                raise
            rc = dump.wait()
        with open(errors, "rb") as err_handle:
            err = err_handle.read().decode("utf-8", "replace")
        read_rc, read_err = following.finish() if following is not None else (0, "")
        if rc != 0:
            _remove(partial)
            _remove(self.paths.taking)
            raise BackupError("pg_dump failed: %s" % self.pg.explain(err))
        if self.paths.format != "custom":
            read_rc, out, read_err = self.pg.run([self.pg.tool("pg_restore"), "--file", os.devnull, partial])
            read_err = read_err or out
        if read_rc != 0:
            _remove(partial)
            _remove(self.paths.taking)
            raise BackupError(self._unreadable(partial, read_err))
        self._chmod_tree(partial)
        checksum = sha256_of(partial)
        self.check_contents(partial, counts)
        meta = {
            "label": self.paths.label,
            "database": self.pg.database,
            "host": self.pg.host,
            "port": self.pg.port,
            "format": self.paths.format,
            "file": os.path.basename(self.paths.dump),
            "size_bytes": size_of(partial),
            "sha256": checksum,
            "created_at": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
            "duration_seconds": round(time.time() - started, 2),
            "server_version_num": facts["server_version_num"],
            "client_version": facts["client_version"],
            "database_size_bytes": facts["database_size_bytes"],
            "schema_meta": schema_meta,
            "row_counts": counts,
            "config_tables": sorted(t for t in counts if is_config_table(t)),
        }
        if fingerprint is not None:
            meta["fingerprint"] = fingerprint
        if archive_as is not None and self.paths.exists():
            self.archive(archive_as)
        if os.path.exists(self.paths.dump):
            _remove(self.paths.previous)
            os.rename(self.paths.dump, self.paths.previous)
        os.rename(partial, self.paths.dump)
        _write_private(self.paths.meta, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _write_private(self.paths.checksum, "%s  %s\n" % (checksum, os.path.basename(self.paths.dump)))
        _remove(self.paths.previous)
        _remove(self.paths.taking)
        meta["checksum"] = checksum
        return meta

    def discard_unfinished(self, with_backup):
        """Remove what a take of this label that was cut short left: the marker, the partial dump and
        the dump it was replacing, and with ``with_backup`` the dump, checksum and metadata (only for a
        label whose files do not verify while its marker says a take never finished)."""
        paths = [self.paths.dump, self.paths.checksum, self.paths.meta] if with_backup else []
        for path in paths + self.paths.leftovers():
            _remove(path)

    def archive(self, label):
        """Keep the backup of this label under ``label`` (its dump, checksum and metadata renamed, the
        metadata saying which label it had); it stays verifiable and restorable under the new label."""
        target = BackupPaths(self.paths.dir, label, self.paths.format)
        if target.exists():
            raise BackupError("cannot keep the previous backup as %s: files with that label exist in %s"
                              % (label, self.paths.dir))
        meta = self.read_meta() if os.path.exists(self.paths.meta) else {}
        if os.path.exists(self.paths.dump):
            os.rename(self.paths.dump, target.dump)
        recorded = ""
        if os.path.exists(self.paths.checksum):
            with open(self.paths.checksum) as handle:
                recorded = (handle.read().split() or [""])[0]
            os.unlink(self.paths.checksum)
        if recorded:
            _write_private(target.checksum, "%s  %s\n" % (recorded, os.path.basename(target.dump)))
        meta.update(label=label, file=os.path.basename(target.dump), superseded_label=self.paths.label)
        _write_private(target.meta, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if os.path.exists(self.paths.meta):
            os.unlink(self.paths.meta)
        return target

    @staticmethod
    def _chmod_tree(path):
        if os.path.isdir(path):
            os.chmod(path, 0o700)
            for name in os.listdir(path):
                os.chmod(os.path.join(path, name), 0o600)
        else:
            os.chmod(path, 0o600)

    # -- restoring ------------------------------------------------------------------
    def target_state(self, target):
        """(exists, marker, table_count) for the target database."""
        maint = self.pg.for_database("postgres")
        rows = maint.query_json("SELECT d.datname, shobj_description(d.oid, 'pg_database') AS comment "
                                "FROM pg_database d WHERE d.datname = %s" % quote_literal(target))
        if not rows:
            return False, None, 0
        tables = self.pg.for_database(target).query_json(
            "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()")
        return True, rows[0].get("comment"), int(tables[0]["n"])

    def restore(self, target, meta, exists, force):
        """Restore into ``target``; with ``force`` an existing target is dropped and created again.

        Returns (row counts, marker, entries of the archive left out: see split_restore_list).
        """
        maint = self.pg.for_database("postgres")
        argv = [self.pg.tool("pg_restore"), "--no-password", "--no-owner", "--exit-on-error", "-d", target]
        if self.jobs > 1:
            argv += ["-j", str(self.jobs)]
        left_out = self._restore_list(argv)  # read before anything is dropped
        statements = []
        if exists and force:
            busy = maint.query_json("SELECT pid, usename, application_name, client_addr::text AS client FROM "
                                    "pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()" % quote_literal(target))
            if busy:
                raise BackupError("database %s has %d open connections (%s); stop the Kong nodes using it before it is "
                                  "replaced. Nothing was changed" % (target, len(busy), ", ".join(
                                      "%s@%s" % (b.get("usename"), b.get("client") or "local") for b in busy[:5])))
            statements = ["DROP DATABASE %s" % quote_ident(target)]
            exists = False
        started = datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"
        restoring = "COMMENT ON DATABASE %s IS %s" % (quote_ident(target), quote_literal(
            "%s%s sha256:%s since %s" % (RESTORING_PREFIX, meta["label"], meta["sha256"], started)))
        # One psql, one statement (and transaction) per -c: CREATE DATABASE cannot run inside one.
        maint.execute(*statements + ([] if exists else ["CREATE DATABASE %s" % quote_ident(target)]) + [restoring])
        target_pg = self.pg.for_database(target)
        rc, out, err = target_pg.run(argv + [self.paths.dump])
        if rc != 0:
            raise BackupError("pg_restore into %s failed: %s. The database is left as it is for inspection; "
                              "rerun with force=true to replace it" % (target, target_pg.explain(err or out)))

        def ask(sql):
            rc2, out2, err2 = target_pg.run([target_pg.tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                             "-c", sql])
            if rc2 != 0:
                raise PgError(target_pg.explain(err2))
            return out2.splitlines()

        counts = count_rows(ask)
        expected = meta.get("row_counts", {})
        wrong = {t: {"expected": n, "restored": counts.get(t)} for t, n in expected.items() if counts.get(t) != n}
        if wrong:
            raise BackupError("restored row counts differ from the backup metadata in %s: %s. The database is left "
                              "as it is for inspection" % (target, json.dumps(wrong, sort_keys=True)))
        now = datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"
        marker = "%s%s sha256:%s at %s" % (MARKER_PREFIX, meta["label"], meta["sha256"], now)
        maint.execute("COMMENT ON DATABASE %s IS %s" % (quote_ident(target), quote_literal(marker)))
        return counts, marker, left_out

    def _restore_list(self, argv):
        """Add `--use-list` to ``argv`` when entries must be left out of the restore; returns them."""
        out = self._listing
        if out is None:  # verify() keeps the listing it checked
            rc, out, err = self.pg.run([self.pg.tool("pg_restore"), "--list", self.paths.dump])
            if rc != 0:
                raise BackupError("pg_restore --list cannot read %s: %s" % (self.paths.dump, (err or out).strip()))
        kept, left_out = split_restore_list(out)
        if left_out:
            path = self.pg.private_path("restore.list")
            _write_private(path, "\n".join(kept) + "\n")
            argv += ["--use-list", path]
        return left_out
