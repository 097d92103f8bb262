# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL access through the client tools (psql, pg_dump, pg_restore).

Private to the collection. The managed node needs the PostgreSQL client, which a
backup needs anyway; no Python driver is required. The password reaches the tools in
their environment (PGPASSWORD, which only their own user and root can read, in
/proc/<pid>/environ), never on a command line nor in a file: a password file would
outlive a module that is killed (SIGKILL, a crash of the host's Ansible run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

from ansible.module_utils.basic import env_fallback

POSTGRES_ARGSPEC = dict(
    pg_host=dict(type="str", default="127.0.0.1", fallback=(env_fallback, ["KONG_PG_HOST", "PGHOST"])),
    pg_port=dict(type="int", default=5432, fallback=(env_fallback, ["KONG_PG_PORT", "PGPORT"])),
    pg_user=dict(type="str", default="kong", fallback=(env_fallback, ["KONG_PG_USER", "PGUSER"])),
    pg_password=dict(type="str", no_log=True, fallback=(env_fallback, ["KONG_PG_PASSWORD", "PGPASSWORD"])),
    pg_database=dict(type="str", default="kong", fallback=(env_fallback, ["KONG_PG_DATABASE", "PGDATABASE"])),
    pg_sslmode=dict(type="str", default="prefer",
                    choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
    pg_bin_dir=dict(type="path"),
)

_VERSION_RE = re.compile(r"(\d+)(?:\.(\d+))?")


class PgError(Exception):
    """A PostgreSQL operation failed; the message says what and what to do."""


class PgClient:
    """Runs psql/pg_dump/pg_restore for one server, the password in their environment."""

    def __init__(self, module, host, port, user, password, database, sslmode="prefer", bin_dir=None):
        self.module = module
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.sslmode = sslmode
        self.bin_dir = bin_dir
        self._tmpdir = None
        # The options a refused login points at (another connection, as the superuser one, names its own).
        self.login_options = "pg_user and pg_password"

    @classmethod
    def from_params(cls, module, database=None):
        p = module.params
        return cls(module, p["pg_host"], p["pg_port"], p["pg_user"], p.get("pg_password"),
                   database or p["pg_database"], p["pg_sslmode"], p.get("pg_bin_dir"))

    def for_database(self, database):
        other = PgClient(self.module, self.host, self.port, self.user, self.password, database, self.sslmode, self.bin_dir)
        other._tmpdir = self._tmpdir
        other.login_options = self.login_options
        return other

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self):
        self._tmpdir = tempfile.mkdtemp(prefix="kongops-pg-")
        os.chmod(self._tmpdir, 0o700)
        return self

    def __exit__(self, *exc_info):
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._tmpdir = None
        return False

    def private_path(self, name):
        """A path for a file of this call in the private (0700) directory, removed at the end."""
        if not self._tmpdir:
            raise PgError("no private directory: use PgClient as a context manager")
        return os.path.join(self._tmpdir, name)

    # -- tools --------------------------------------------------------------------
    def tool(self, name):
        if self.bin_dir:
            path = os.path.join(self.bin_dir, name)
            if os.access(path, os.X_OK):
                return path
            raise PgError("%s not found in pg_bin_dir %s" % (name, self.bin_dir))
        found = self.module.get_bin_path(name)
        if not found:
            raise PgError("%s not found in PATH; install the PostgreSQL client (Debian: postgresql-client) "
                          "or set pg_bin_dir" % name)
        return found

    def env(self):
        env = {"PGHOST": str(self.host), "PGPORT": str(self.port), "PGUSER": str(self.user),
               "PGDATABASE": str(self.database), "PGSSLMODE": self.sslmode, "PGCONNECT_TIMEOUT": "10",
               "PGAPPNAME": "kongops.upgrade", "PGOPTIONS": "-c statement_timeout=0"}
        if self.password:
            env["PGPASSWORD"] = str(self.password)
        return env

    def run(self, argv, data=None):
        return self.module.run_command(argv, environ_update=self.env(), data=data, binary_data=data is not None)

    def spawn(self, argv, stdin=None, stdout=None, stderr=None):
        """Start ``argv`` (a list, never a shell) with this server's environment and return the
        subprocess.Popen, for tools that must run while this process does other work."""
        env = dict(os.environ)
        env.update(self.env())
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, close_fds=True)

    def tool_version(self, name):
        rc, out, err = self.module.run_command([self.tool(name), "--version"])
        match = _VERSION_RE.search(out or "")
        if rc != 0 or not match:
            raise PgError("could not read the version of %s: %s" % (name, (err or out).strip()))
        return out.strip(), int(match.group(1))

    # -- SQL ----------------------------------------------------------------------
    def query_json(self, sql):
        """Run one SELECT wrapped to return JSON; returns the decoded value."""
        wrapped = "SELECT coalesce(json_agg(q), '[]'::json) FROM (%s) q" % sql
        argv = [self.tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", wrapped]
        rc, out, err = self.run(argv)
        if rc != 0:
            raise PgError(self.explain(err or out))
        try:
            return json.loads(out.strip() or "[]")
        except ValueError as exc:
            raise PgError("psql returned something that is not JSON: %s" % out[:200]) from exc

    def execute(self, *statements):
        """Run each statement in its own transaction (one ``-c`` each), in one psql, stopping at the
        first that fails."""
        argv = [self.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        for sql in statements:
            argv += ["-c", sql]
        rc, out, err = self.run(argv)
        if rc != 0:
            raise PgError(self.explain(err or out))
        return out

    def explain(self, err):
        text = (err or "").strip()
        if "password authentication failed" in text or "no password supplied" in text:
            return "PostgreSQL refused user %s at %s:%s (%s); check %s" % (
                self.user, self.host, self.port, text.splitlines()[-1] if text else "", self.login_options)
        if "could not connect" in text or "Connection refused" in text or "timeout expired" in text:
            return "cannot connect to PostgreSQL at %s:%s (%s); check pg_host, pg_port and that the server runs" % (
                self.host, self.port, text.splitlines()[-1] if text else "")
        if "does not exist" in text and "database" in text:
            return "database %s does not exist on %s:%s (%s)" % (self.database, self.host, self.port, text)
        return "PostgreSQL error on %s:%s/%s: %s" % (self.host, self.port, self.database, text)

    def server_version_num(self):
        rows = self.query_json("SELECT current_setting('server_version_num')::int AS v")
        return int(rows[0]["v"])


def quote_ident(name):
    return '"%s"' % str(name).replace('"', '""')


def quote_literal(value):
    return "'%s'" % str(value).replace("'", "''")
