"""The lab's own PostgreSQL cluster: own data directory, own port, scram passwords.

As root the server runs as the ``postgres`` system user (PostgreSQL refuses root);
otherwise as the current user. Unix sockets are off: everything goes over
127.0.0.1 with scram-sha-256, like a remote database would.

Roles: ``lab_admin`` (superuser, the bootstrap user, used only by the lab) and
``kong`` (LOGIN CREATEDB, owner of database ``kong``), each with a random password
kept in ``run/secrets.json`` (mode 0600). Passwords never appear on a command line:
initdb reads a 0600 file that is deleted afterwards, and ``kong``'s password is sent
as a scram verifier computed on the client.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from . import LabError
from .proc import ProcRef, as_user_argv, clean_env, is_root, read_pidfile, run, user_ids, wait_until

PG_VERSION = "15"
ADMIN_USER = "lab_admin"


def pg_bindir() -> Path:
    """Directory with initdb/pg_ctl: $KONG_LAB_PG_BINDIR, Debian's path, or PATH."""
    env = os.environ.get("KONG_LAB_PG_BINDIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(f"/usr/lib/postgresql/{PG_VERSION}/bin"))
    for cand in candidates:
        if (cand / "pg_ctl").exists():
            return cand
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise LabError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install the "
        f"postgresql-{PG_VERSION} package or set KONG_LAB_PG_BINDIR"
    )


@dataclass
class PgCluster:
    """A PostgreSQL cluster in ``base`` (``base/data`` holds PGDATA)."""

    base: Path
    host: str
    port: int
    admin_password: str
    kong_user: str = "kong"
    kong_password: str = ""
    kong_database: str = "kong"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    @property
    def run_user(self) -> str | None:
        return "postgres" if is_root() else None

    def _argv(self, tool: str, *args: str) -> list[str]:
        return as_user_argv([str(pg_bindir() / tool), *args], self.run_user)

    def _chown(self, path: Path) -> None:
        if self.run_user:
            uid, gid = user_ids(self.run_user)
            os.chown(path, uid, gid)

    # ------------------------------------------------------------------ lifecycle

    def init(self) -> None:
        """initdb with scram auth and lab settings (loopback only, no fsync)."""
        if is_root():
            try:
                user_ids("postgres")
            except KeyError as exc:
                raise LabError(
                    "running as root, but there is no 'postgres' system user to run "
                    "PostgreSQL as; install the postgresql package or run the lab as an "
                    "ordinary user"
                ) from exc
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o700)
        self._chown(self.base)
        pwfile = self.base / ".initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.admin_password + "\n")
        self._chown(pwfile)
        try:
            run(
                self._argv(
                    "initdb",
                    "-D", str(self.data),
                    "-U", ADMIN_USER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ),
                what="initdb",
                env=clean_env(),
                cwd=self.base,
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data / "postgresql.conf"
        with open(conf, "a", encoding="utf-8") as fh:
            fh.write(
                "\n# --- kong lab ---\n"
                f"listen_addresses = '{self.host}'\n"
                f"port = {self.port}\n"
                "unix_socket_directories = ''\n"
                "max_connections = 500\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "password_encryption = 'scram-sha-256'\n"
                "log_min_messages = warning\n"
                "log_line_prefix = '%m [%p] %q%u@%d '\n"
            )
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            "# kong lab: TCP on 127.0.0.1 only, scram-sha-256 for everyone\n"
            f"host all all {self.host}/32 scram-sha-256\n",
            encoding="utf-8",
        )

    def start(self, timeout: float = 60.0) -> ProcRef:
        """Start the server and wait until it accepts logins; return the postmaster."""
        self.log.touch()
        self._chown(self.log)
        run(
            self._argv(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log),
                "-w", "-t", str(int(timeout)), "start",
            ),
            what="pg_ctl start",
            env=clean_env(),
            cwd=self.base,
            timeout=timeout + 10,
        )
        pid = read_pidfile(self.data / "postmaster.pid")
        if pid is None:
            raise LabError(f"PostgreSQL started but {self.data}/postmaster.pid has no pid")
        wait_until(
            self.accepts,
            timeout,
            f"PostgreSQL to accept connections on {self.host}:{self.port}",
            hint=f"see {self.log}",
        )
        return ProcRef.of(pid)

    def stop(self, timeout: float = 30.0) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        run(
            self._argv("pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                       "-t", str(int(timeout)), "stop"),
            what="pg_ctl stop",
            env=clean_env(),
            cwd=self.base,
            timeout=timeout + 10,
            check=False,
        )

    # ------------------------------------------------------------------ SQL

    def connect(self, user: str | None = None, password: str | None = None,
                dbname: str = "postgres") -> Any:
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=user or ADMIN_USER,
            password=password if password is not None else self.admin_password,
            dbname=dbname,
            connect_timeout=3,
        )

    def accepts(self) -> bool:
        try:
            conn = self.connect()
        except psycopg2.OperationalError:
            return False
        conn.close()
        return True

    def create_kong_database(self) -> None:
        """Create role ``kong`` (LOGIN CREATEDB) and database ``kong`` owned by it."""
        conn = self.connect()
        conn.autocommit = True
        try:
            verifier = psycopg2.extensions.encrypt_password(
                self.kong_password, self.kong_user, conn, "scram-sha-256"
            )
            with conn.cursor() as cur:
                cur.execute(
                    f'CREATE ROLE "{self.kong_user}" LOGIN CREATEDB PASSWORD %s',
                    (verifier,),
                )
                cur.execute(f'CREATE DATABASE "{self.kong_database}" OWNER "{self.kong_user}"')
        finally:
            conn.close()
        # prove the kong credentials work
        kconn = self.connect(self.kong_user, self.kong_password, self.kong_database)
        kconn.close()

    def server_version(self) -> str:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                row = cur.fetchone()
                return str(row[0]) if row else ""
        finally:
            with contextlib.suppress(Exception):
                conn.close()
