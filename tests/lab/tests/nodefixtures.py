"""Helpers for the node tests (test_node_*.py, test_dbless*.py, test_hybrid*.py).

Nodes are started with the `kong` launcher of kongemu.install (the same executable
the collection runs), each test on its own free loopback ports, and always stopped
by the pid in their pid file.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAB_DIR = Path(__file__).resolve().parent.parent
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

_INSTALLED: dict[tuple[str, str], Path] = {}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def poll(predicate: Callable[[], Any], timeout: float, what: str,
         interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def kong_bin(version: str, root: Path) -> Path:
    """The `kong` launcher for ``version`` (kongemu.install), installed once per root."""
    key = (version, str(root))
    if key not in _INSTALLED:
        from kongemu import install  # pylint: disable=import-outside-toplevel

        _INSTALLED[key] = Path(install.install_version(version, root))
    return _INSTALLED[key]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"rc={self.rc}\nstdout:\n{self.out}\nstderr:\n{self.err}"


def run_kong(binary: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> Result:
    """Run the launcher like the collection does; KONG_* of the test env are dropped."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KONG_")}
    base.update(env or {})
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True,
                          timeout=timeout, env=base, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class NodeSpec:
    """A node's kong.conf on free loopback ports."""

    version: str
    prefix: Path
    conf_path: Path
    proxy: int
    admin: int
    status: int
    cluster: int
    host: str = "127.0.0.1"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.proxy}"

    def write(self) -> None:
        lines = [f"prefix = {self.prefix}",
                 f"proxy_listen = {self.host}:{self.proxy}",
                 f"admin_listen = {self.host}:{self.admin}",
                 f"status_listen = {self.host}:{self.status}",
                 f"cluster_listen = {self.host}:{self.cluster}",
                 "db_update_frequency = 0.5",
                 "log_level = info"]
        lines += [f"{k} = {v}" for k, v in self.extra.items()]
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_spec(tmp: Path, name: str, version: str, **extra: Any) -> NodeSpec:
    base = tmp / name
    base.mkdir(parents=True, exist_ok=True)
    spec = NodeSpec(version=version, prefix=base / "prefix", conf_path=base / "kong.conf",
                    proxy=free_port(), admin=free_port(), status=free_port(),
                    cluster=free_port(), extra={k: str(v) for k, v in extra.items()})
    spec.write()
    return spec


def pg_extra(pg: Any) -> dict[str, str]:
    """kong.conf options for a PostgreSQL fixture object (host, port, user, ...)."""
    def attr(*names: str) -> Any:
        for name in names:
            if isinstance(pg, dict) and name in pg:
                return pg[name]
            if hasattr(pg, name):
                return getattr(pg, name)
        return None

    out = {"database": "postgres",
           "pg_host": str(attr("host", "pg_host")),
           "pg_port": str(attr("port", "pg_port")),
           "pg_user": str(attr("user", "pg_user")),
           "pg_database": str(attr("database", "dbname", "pg_database"))}
    password = attr("password", "pg_password")
    if password:
        out["pg_password"] = str(password)
    return out


def node_pid(prefix: Path) -> int | None:
    try:
        return int((prefix / "pids" / "nginx.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def kill_node(prefix: Path, pid: int | None = None) -> None:
    """Stop a node by its pid (TERM, then KILL)."""
    pid = pid or node_pid(prefix)
    if pid is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        if not alive(pid):
            return


@contextlib.contextmanager
def running_node(binary: Path, spec: NodeSpec, env: dict[str, str] | None = None,
                 ) -> Iterator[Result]:
    """`kong start` the node; always stop it by pid afterwards."""
    pid = None
    try:
        res = run_kong(binary, "start", "-c", str(spec.conf_path), env=env)
        pid = node_pid(spec.prefix)
        assert res.rc == 0, str(res)
        yield res
    finally:
        # the node started here, and whatever runs there now (after a restart in the test)
        current = node_pid(spec.prefix)
        if pid is not None:
            kill_node(spec.prefix, pid)
        if current is not None and current != pid:
            kill_node(spec.prefix, current)


def http_call(url: str, method: str = "GET", body: bytes | str | None = None,
              headers: dict[str, str] | None = None,
              timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a new connection: (status, lower-cased headers, body)."""
    from urllib.parse import urlsplit  # pylint: disable=import-outside-toplevel

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def http_json(url: str, method: str = "GET", payload: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = dict(headers or {})
    body = None
    if payload is not None:
        body = json.dumps(payload).encode()
        hdrs.setdefault("Content-Type", "application/json")
    status, _hdrs, data = http_call(url, method, body, hdrs)
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode("utf-8", "replace")


# ============================================================================ PostgreSQL
@dataclass
class PgInfo:
    """Connection settings of one database for kong.conf."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def conf(self) -> dict[str, str]:
        return {"database": "postgres", "pg_host": self.host, "pg_port": str(self.port),
                "pg_user": self.user, "pg_password": self.password,
                "pg_database": self.database}


class NodePg:
    """A private PostgreSQL cluster (labctl.pg.PgCluster) handing out fresh databases."""

    def __init__(self) -> None:
        import secrets  # pylint: disable=import-outside-toplevel
        import tempfile  # pylint: disable=import-outside-toplevel

        from labctl.pg import PgCluster  # pylint: disable=import-outside-toplevel

        self.base = Path(tempfile.mkdtemp(prefix="kongemu-node-pg-"))
        self.cluster = PgCluster(base=self.base, host="127.0.0.1", port=free_port(),
                                 admin_password=secrets.token_hex(12),
                                 kong_password=secrets.token_hex(12))
        self._count = 0

    def start(self) -> None:
        self.cluster.init()
        self.cluster.start()
        self.cluster.create_kong_database()

    def stop(self) -> None:
        import shutil  # pylint: disable=import-outside-toplevel

        with contextlib.suppress(Exception):
            self.cluster.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def fresh(self) -> PgInfo:
        self._count += 1
        name = f"kong_node_{os.getpid()}_{self._count}"
        conn = self.cluster.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}" OWNER "{self.cluster.kong_user}"')
        finally:
            conn.close()
        return PgInfo(self.cluster.host, self.cluster.port, self.cluster.kong_user,
                      self.cluster.kong_password, name)

    def pause(self) -> None:
        """Stop the server (database down) keeping its data."""
        self.cluster.stop()

    def resume(self) -> None:
        self.cluster.start()
