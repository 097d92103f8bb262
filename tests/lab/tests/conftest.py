"""Shared fixtures for the emulator tests: a throwaway PostgreSQL cluster, fresh
databases, installed `kong` launchers and a runner for them.

The cluster is started with the PostgreSQL 15 binaries on 127.0.0.1 and a free port,
with password (scram) authentication for the `kong` user. As root, the server runs as
the `postgres` user (`runuser`); otherwise as the current user. Teardown stops it by
the pid in `postmaster.pid` and removes its directory. Passwords are written to
files and environment variables, never to a command line.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pytest

LAB_DIR = Path(__file__).resolve().parent.parent
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

import nodefixtures  # noqa: E402

from kongemu import conf as confmod  # noqa: E402
from kongemu import install, versions  # noqa: E402

PG_BIN = Path(os.environ.get("KONGEMU_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    """A running throwaway PostgreSQL cluster."""

    host: str
    port: int
    superuser_password: str
    user: str
    password: str
    datadir: Path
    pid: int
    _counter: int = field(default=0, repr=False)

    def admin_connect(self, dbname: str = "postgres") -> Any:
        conn = psycopg2.connect(host=self.host, port=self.port, user="postgres",
                                password=self.superuser_password, dbname=dbname)
        conn.autocommit = True
        return conn

    def create_database(self, prefix: str = "kong") -> str:
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        conn = self.admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        finally:
            conn.close()
        return name

    def drop_database(self, name: str) -> None:
        conn = self.admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            conn.close()


def _run_as_postgres(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def _start_cluster(base: Path) -> PgCluster:
    datadir = base / "data"
    pwfile = base / "pwfile"
    super_pw = secrets.token_hex(12)
    pwfile.write_text(super_pw + "\n", encoding="utf-8")
    os.chmod(base, 0o700)
    os.chmod(pwfile, 0o600)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (base, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    _run_as_postgres([str(PG_BIN / "initdb"), "-D", str(datadir), "-U", "postgres", "--pwfile", str(pwfile),
                      "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
                      "--locale=C.UTF-8"])
    pwfile.unlink()
    port = _free_port()
    with open(datadir / "postgresql.auto.conf", "a", encoding="utf-8") as handle:
        handle.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}'\n"
                     "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
                     "log_min_messages = warning\n")
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(datadir / "postgresql.auto.conf", entry.pw_uid, entry.pw_gid)
    _run_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l", str(base / "postgres.log"),
                      "-w", "-t", "60", "start"])
    pid = int((datadir / "postmaster.pid").read_text(encoding="utf-8").splitlines()[0])
    kong_pw = secrets.token_hex(12)
    cluster = PgCluster("127.0.0.1", port, super_pw, "kong", kong_pw, datadir, pid)
    try:
        conn = cluster.admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE ROLE kong LOGIN PASSWORD %s", (kong_pw,))
                cur.execute("CREATE DATABASE kong OWNER kong")
        finally:
            conn.close()
    except BaseException:
        _stop_cluster(cluster)
        raise
    return cluster


def _stop_cluster(cluster: PgCluster) -> None:
    try:
        os.kill(cluster.pid, signal.SIGINT)  # fast shutdown
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(cluster.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(cluster.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    base = Path(tempfile.mkdtemp(prefix="kongemu-pg-"))
    cluster = None
    try:
        cluster = _start_cluster(base)
        yield cluster
    finally:
        if cluster is not None:
            _stop_cluster(cluster)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class KongDb:
    """A fresh database plus the KONG_* environment pointing at it."""

    cluster: PgCluster
    name: str
    prefix: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "KONG_DATABASE": "postgres",
            "KONG_PG_HOST": self.cluster.host,
            "KONG_PG_PORT": str(self.cluster.port),
            "KONG_PG_USER": self.cluster.user,
            "KONG_PG_PASSWORD": self.cluster.password,
            "KONG_PG_DATABASE": self.name,
            "KONG_PREFIX": str(self.prefix),
        }

    def conf(self, version: str = "3.4.3", **extra: str) -> confmod.KongConf:
        env = dict(self.env)
        env.update({f"KONG_{k.upper()}": v for k, v in extra.items()})
        return confmod.load(versions.get(version), None, env=env)

    def connect(self) -> Any:
        conn = psycopg2.connect(host=self.cluster.host, port=self.cluster.port, user=self.cluster.user,
                                password=self.cluster.password, dbname=self.name)
        conn.autocommit = True
        return conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()


@pytest.fixture
def kong_db(pg_cluster: PgCluster, tmp_path: Path) -> Iterator[KongDb]:
    name = pg_cluster.create_database()
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    try:
        yield KongDb(pg_cluster, name, prefix)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def kong_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kongemu-versions")
    for version in versions.EMULATED_VERSIONS:
        install.install_version(version, root)
    return root


@dataclass
class KongResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.strip()


class KongRunner:
    """Runs the `kong` executable of a version as a subprocess: the installed emulator
    launcher (provider ``emulated``) or real Kong's ``bin/kong`` (provider ``real``; the
    test is skipped, or fails under CI, when real Kong cannot be had here)."""

    def __init__(self, root: Path, provider: str = "emulated") -> None:
        self.root = root
        self.provider = provider

    @property
    def real(self) -> bool:
        return self.provider == "real"

    def path(self, version: str) -> Path:
        if self.real:
            return nodefixtures.real_kong_bin(version)
        return install.install_version(version, self.root)

    def __call__(self, version: str, *argv: str, env: dict[str, str] | None = None, stdin: str | None = None,
                 timeout: float = 60, cwd: str | None = None) -> KongResult:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KONG_")}
        full_env.update(env or {})
        proc = subprocess.run([str(self.path(version)), *argv], env=full_env, input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False, cwd=cwd)
        return KongResult(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, version: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KONG_")}
        full_env.update(env or {})
        return subprocess.Popen([str(self.path(version)), *argv], env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture
def provider() -> str:
    """``emulated`` unless a test parametrizes ``provider`` (nodefixtures.provider_params)."""
    return "emulated"


@pytest.fixture
def kong(kong_root: Path, provider: str) -> KongRunner:
    return KongRunner(kong_root, provider)


@pytest.fixture(scope="session")
def node_base() -> Iterator[Path]:
    """A directory real Kong's nginx workers (``nobody``) can enter, for node prefixes."""
    base = nodefixtures.traversable_dir("kong-conformance-")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node_tmp(node_base: Path) -> Path:
    """Like tmp_path, but usable as the parent of a real Kong prefix (mode 0755)."""
    # short: real Kong 3.0-3.7 listen on <prefix>/worker_events.sock, and a unix socket path
    # longer than 107 bytes fails nginx's configuration test
    path = Path(tempfile.mkdtemp(prefix="t", dir=node_base))
    path.chmod(0o755)
    return path


class _QuietLog:
    def error(self, msg: str) -> None:
        del msg

    warn = info = debug = notice = error


@pytest.fixture(scope="session")
def echo_port() -> Iterator[int]:
    """An upstream for the nodes under test, in the test process: answers 200 with JSON
    ``{"method", "path"}`` to every request (http-log's POSTs included)."""
    import json

    from kongemu.httpserver import HTTPServer, Request, Response

    def handle(request: Request) -> Response:
        return Response(200, [("Content-Type", "application/json")],
                        json.dumps({"method": request.method, "path": request.target}).encode())

    srv = HTTPServer(_QuietLog())
    srv.add_listener("echo", "127.0.0.1", 0, handle)
    port = int(srv._listeners[0].sock.getsockname()[1])  # noqa: SLF001
    srv.start()
    try:
        yield port
    finally:
        srv.close_now()
