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
import re
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


# ============================================================================ providers
# The conformance suite runs against two providers of `kong`: the emulator and real Kong
# (labctl.realkong: an installed Kong or a build from the realkong kit). Real Kong exists
# for the kit's versions only; the emulator computes any OSS version 2.8.0-3.10.x.
PROVIDERS = ("emulated", "real")
REAL_VERSIONS = ("2.8.5", "3.4.2", "3.9.0", "3.9.1")
_REAL: dict[str, Path | str] = {}
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def missing_real_kong(reason: str) -> None:
    """Skip the test with the reason; under CI (``CI=true``) fail it: CI must run real Kong.

    The same rule as labfixtures.require_real_kong."""
    import pytest  # pylint: disable=import-outside-toplevel

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real Kong missing: {reason} (CI=true: real Kong is required)", pytrace=False)
    pytest.skip(f"real Kong missing: {reason}")


def real_kong_bin(version: str) -> Path:
    """``bin/kong`` of real Kong ``version`` (installed, or already built from the kit: the
    suite never builds; `make real-kong` / `tests/lab/lab kong build` do). Skips (fails under
    CI) when it cannot be had here."""
    if version not in _REAL:
        from labctl import LabError, realkong  # pylint: disable=import-outside-toplevel

        try:
            _REAL[version] = realkong.resolve(version, build_missing=False).executable
        except LabError as exc:
            _REAL[version] = str(exc)
    found = _REAL[version]
    if isinstance(found, str):
        missing_real_kong(found)
        raise AssertionError("unreachable")
    return found


def provider_bin(provider: str, version: str, root: Path) -> Path:
    """The `kong` executable of ``version`` for ``provider`` ("emulated" or "real")."""
    if provider == "real":
        return real_kong_bin(version)
    if provider != "emulated":
        raise ValueError(f"unknown provider {provider!r}")
    return kong_bin(version, root)


def _versions_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if _VERSION_RE.match(value) else []
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _versions_of(item)]
    return [v for name in ("old", "new", "version") if isinstance(getattr(value, name, None), str)
            for v in _versions_of(getattr(value, name))]


def _case_id(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "-".join(_case_id(v) for v in value)
    return str(getattr(value, "id", value))


def provider_params(cases: list[Any], providers: tuple[str, ...] = PROVIDERS, fixture: bool = False) -> list[Any]:
    """``pytest.param(provider, *case)`` for every case and every provider that has all of the
    case's versions: real Kong only for REAL_VERSIONS, the emulator for any. A case is a tuple
    of arguments (or one argument); versions are its X.Y.Z strings (and ``.old``/``.new``).
    ``fixture=True`` gives one value per param, the tuple ``(provider, *case)`` (for
    ``@pytest.fixture(params=...)``)."""
    import pytest  # pylint: disable=import-outside-toplevel

    out = []
    for case in cases:
        args = tuple(case) if isinstance(case, tuple) else (case,)
        for provider in providers:
            if provider == "real" and not set(_versions_of(args)) <= set(REAL_VERSIONS):
                continue
            values = ((provider, *args),) if fixture else (provider, *args)
            out.append(pytest.param(*values, id=f"{provider}-{_case_id(args)}"))
    return out


def traversable_dir(prefix: str = "kn-") -> Path:
    """A new directory that nginx workers running as ``nobody`` can enter (mode 0755 up to /).

    pytest's tmp_path is under a 0700 directory: a real Kong prefix there starts (`kong start`
    prints `Kong started` and exits 0) while every worker exits at once."""
    import tempfile  # pylint: disable=import-outside-toplevel

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


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
        # Sized like the lab's real nodes (one nginx worker, small cache), nothing else bound.
        # worker_state_update_frequency: real Kong rebuilds its router and plugins iterator
        # that often after an invalidation (default 5 s); the emulator rebuilds at once
        lines += ["admin_gui_listen = off", "nginx_worker_processes = 1", "mem_cache_size = 16m",
                  "anonymous_reports = off", "worker_state_update_frequency = 1"]
        lines += [f"{k} = {v}" for k, v in self.extra.items()]
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold pg_password
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


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
