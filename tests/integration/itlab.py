"""Helpers for the integration tests: the collection's modules, run through Ansible, against the lab.

Test modules import from here (``from itlab import ...``; a unique name, unlike ``conftest``).
Each test module brings up the lab it needs with ``lab_session(...)`` in a module-scoped
fixture (``tests/lab/lab up --kong real``, then ``lab down`` and a by-pid clean-up at the
end). Labs run real Kong by default; ``lab_session(..., kong="emulated")`` is for what real
Kong cannot do here, and the test says why. Only one lab runs at a time: opening another
closes the previous one. The lab's addresses and run directory come from ``KONG_LAB_NET`` /
``KONG_LAB_RUN_DIR`` like every lab command (``tests/conftest.py`` gives each pytest-xdist
worker its own), so two suites can run side by side.

Every module run is recorded (ansible_runner.RUN_LOG); after each test, the database
passwords of the running lab must appear in none of the results or Ansible output
(conftest.py's autouse fixture, with SECRETS from here).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LAB_TESTS = REPO / "tests" / "lab" / "tests"
if str(LAB_TESTS) not in sys.path:
    sys.path.insert(0, str(LAB_TESTS))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from labfixtures import LabHandle, poll, running_lab  # noqa: E402  (puts tests/lab on sys.path)

from labctl import realkong  # noqa: E402
from labctl.kong import install_version  # noqa: E402
from labctl.load import LoadGenerator, Sample  # noqa: E402
from labctl.proc import clean_env, is_alive  # noqa: E402

__all__ = ["Lab", "LoadGenerator", "MANAGER", "SECRETS", "Sample", "http_request", "http_status", "lab_session", "poll",
           "in_background", "share_of", "strip_conditional", "subcommands", "window_after"]

# How long a started node may take to answer on its status listener (real Kong on a busy 2-core lab).
NODE_READY_TIMEOUT = 60.0

# Passwords of the lab that is up now; checked against every module run's output.
SECRETS: set[str] = set()
# How long to retry `lab up` while another lab in the same parent directory is starting or stopping.
LAB_LOCK_WAIT = 180.0


class Lab:
    """A running lab plus what the integration tests do with it."""

    def __init__(self, handle: LabHandle) -> None:
        self.handle = handle
        self.run_dir = handle.run_dir
        self.vars = handle.group_vars
        self.password = str(self.vars["kong_pg_password"])
        secrets_file = self.run_dir / "secrets.json"
        self.secrets = json.loads(secrets_file.read_text(encoding="utf-8")) if secrets_file.exists() else {}
        self.started: list[str] = []

    # -- inventory ------------------------------------------------------------------
    def host(self, name: str) -> dict[str, Any]:
        return self.handle.host(name)

    def hosts(self, group: str) -> dict[str, dict[str, Any]]:
        return self.handle.hosts(group)

    @property
    def lb(self) -> dict[str, Any]:
        return self.handle.lb

    @property
    def frontend(self) -> str:
        return self.handle.frontend

    def pg_args(self, database: str | None = None) -> dict[str, Any]:
        """pg_* options for pg_backup / kong_config_freeze."""
        return {"pg_host": self.vars["kong_pg_host"], "pg_port": int(self.vars["kong_pg_port"]),
                "pg_user": self.vars["kong_pg_user"], "pg_password": self.password,
                "pg_database": database or self.vars["kong_pg_database"]}

    def connect(self, database: str | None = None) -> Any:
        """psycopg2 connection as the kong user (autocommit)."""
        conn = psycopg2.connect(host=self.vars["kong_pg_host"], port=int(self.vars["kong_pg_port"]),
                                user=self.vars["kong_pg_user"], password=self.password,
                                dbname=database or self.vars["kong_pg_database"], connect_timeout=5)
        conn.autocommit = True
        return conn

    def sql(self, statement: str, params: tuple[Any, ...] = (), database: str | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params or None)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        self.sql(f'CREATE DATABASE "{name}"', database="postgres")

    @property
    def real(self) -> bool:
        """Whether the lab's Kong nodes run real Kong."""
        return self.handle.kong_provider == "real"

    @property
    def echo_url(self) -> str:
        return str(self.vars["lab_echo_url"])

    def echo(self, **query: str) -> dict[str, Any]:
        """Ask the echo service itself (not through Kong), e.g. ``echo(echo_held="k")``."""
        from urllib.parse import urlencode

        status, body = http_request(self.echo_url + "/?" + urlencode(query))
        assert status == 200 and isinstance(body, dict), (status, body)
        return body

    # -- kong -----------------------------------------------------------------------
    def install(self, version: str) -> str:
        """The path of a `kong` of one more version, from the lab's provider: real Kong (installed or
        built from the kit, see labctl.realkong) or the emulator installed into this lab."""
        if self.real:
            return str(realkong.resolve(version).executable)
        return str(install_version(version, self.run_dir))

    def kong(self, executable: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a `kong` command as an operator would (no KONG_*/PG* from the test's environment)."""
        return subprocess.run([executable, *args], capture_output=True, text=True, timeout=timeout,
                              env=clean_env(), check=False)

    def write_node_conf(self, name: str, template: str = "x1", extra: dict[str, str] | None = None) -> Path:
        """Write node ``name``'s kong.conf the way the collection deploys a Y node: ``template``'s
        kong.conf (database settings included) with this node's prefix and listen addresses."""
        host = self.host(name)
        own = {"prefix": host["kong_prefix"], "proxy_listen": host["kong_proxy_listen"],
               "admin_listen": host["kong_admin_listen"], "status_listen": host["kong_status_listen"],
               **(extra or {})}
        lines = []
        for line in Path(self.host(template)["kong_conf_path"]).read_text(encoding="utf-8").splitlines():
            key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
            if key in own:
                continue
            lines.append(line)
        lines.append(f"# node {name}: written by the integration tests from {template}'s kong.conf")
        lines += [f"{key} = {value}" for key, value in own.items()]
        path = Path(host["kong_conf_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    def start_node(self, name: str, template: str = "x1", extra: dict[str, str] | None = None) -> None:
        """Write node ``name``'s kong.conf and `kong start` it with its own executable; the node is
        started once its status listener answers (real Kong can say `Kong started` and exit 0 while
        its workers die), else the test fails with what the node's error.log says."""
        host = self.host(name)
        conf = self.write_node_conf(name, template, extra)
        res = self.kong(host["kong_executable"], "start", "-c", str(conf))
        assert res.returncode == 0, f"kong start {name} failed: {res.stdout}\n{res.stderr}"
        self.started.append(name)
        try:
            poll(lambda: http_status(host["kong_status_url"] + "/status") == 200, NODE_READY_TIMEOUT,
                 f"{name} /status", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {name}'s error.log ends with:\n{self.error_log_tail(name)}") from None

    def error_log_tail(self, name: str, lines: int = 20) -> str:
        log = Path(self.host(name)["kong_prefix"]) / "logs" / "error.log"
        try:
            return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(cannot read {log}: {exc})"

    def stop_node(self, name: str) -> None:
        host = self.host(name)
        res = self.kong(host["kong_executable"], "stop", "-p", host["kong_prefix"])
        assert res.returncode == 0, f"kong stop {name} failed: {res.stderr}"

    def stop_started_nodes(self) -> None:
        """`kong stop` every node the tests or the modules started that still runs (Y nodes, which the lab
        never starts, and those of start_node), all at once, before `lab down`, which finds a real node it
        did not start by its pid file but not its executable, and then waits 15 s before it signals it."""
        names = dict.fromkeys([*self.started, *self.hosts("kong_y")])
        running = [name for name in names if (Path(self.host(name)["kong_prefix"]) / "pids" / "nginx.pid").exists()]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            list(pool.map(lambda name: self.kong(self.host(name)["kong_executable"], "stop", "-p",
                                                 self.host(name)["kong_prefix"]), running))

    def set_faults(self, name: str, faults: dict[str, Any] | None) -> None:
        """Emulator-only fault injection (kongemu.faults): ``None`` removes the file. Real Kong ignores
        it: use a real means there (a plugin, Kong's injected nginx directives)."""
        path = Path(self.host(name)["kong_prefix"]) / "emulator_faults.json"
        if faults is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(faults), encoding="utf-8")
            tmp.replace(path)

    # -- load balancer ------------------------------------------------------------------
    def lb_args(self) -> dict[str, Any]:
        """Driver options for lb_weight from the inventory's lb1."""
        lb = self.lb
        if lb["kong_lb_driver"] == "haproxy":
            return {"driver": "haproxy", "haproxy_socket": lb["kong_lb_haproxy_socket"],
                    "backend": lb["kong_lb_backend"], "haproxy_state_file": lb["kong_lb_haproxy_state_file"]}
        return {"driver": "nginx", "nginx_upstream_file": lb["kong_lb_nginx_upstream_file"],
                "nginx_binary": lb["kong_lb_nginx_binary"], "nginx_conf": lb["kong_lb_nginx_conf"],
                "nginx_prefix": lb["kong_lb_nginx_prefix"], "nginx_error_log": lb["kong_lb_nginx_error_log"],
                "nginx_pidfile": lb["kong_lb_nginx_pidfile"]}

    def haproxy(self, command: str) -> str:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.lb["kong_lb_haproxy_socket"])
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode()

    def haproxy_servers_up(self, names: list[str]) -> bool:
        out = self.haproxy(f"show servers state {self.lb['kong_lb_backend']}")
        header: list[str] = []
        up = set()
        for line in out.splitlines():
            if line.startswith("#"):
                header = line.lstrip("# ").split()
            elif header and line.strip():
                row = dict(zip(header, line.split()))
                if row.get("srv_op_state") == "2":
                    up.add(row.get("srv_name"))
        return set(names) <= up

    def load(self, rate: float | None = 400.0, concurrency: int = 8, duration: float = 600) -> LoadGenerator:
        return LoadGenerator(self.frontend, self.handle.load_targets, duration=duration, rate=rate,
                             concurrency=concurrency, timeout=10.0)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def http_request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
                 timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded JSON body or text) of one request on a fresh connection."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace")


# ----------------------------------------------------------------------------- traffic gates


def add_plugin(admin_url: str, body: dict[str, Any]) -> str:
    """Add a Kong plugin through the node's Admin API; its id."""
    status, answer = http_request(admin_url + "/plugins", "POST", body)
    assert status == 201, (status, answer)
    return answer["id"]


def haproxy_gate(lab: Lab, x_servers: list[str], y_servers: list[str], min_duration: float = 1,
                 **extra: Any) -> dict[str, Any]:
    """traffic_gate arguments that judge the step from HAProxy's counters of the servers."""
    return {"source": "haproxy", "haproxy_socket": lab.lb["kong_lb_haproxy_socket"],
            "backend": lab.lb["kong_lb_backend"], "x_servers": x_servers, "y_servers": y_servers,
            "min_requests": 300, "min_duration": min_duration, "max_duration": 30, "interval": 0.5, **extra}


def metrics_gate(lab: Lab, x_servers: list[str], y_servers: list[str], min_duration: float = 1,
                 **extra: Any) -> dict[str, Any]:
    """traffic_gate arguments that judge the step from each node's /metrics (prometheus plugin)."""
    def urls(names: list[str]) -> list[str]:
        return [lab.host(n)["kong_status_url"] + "/metrics" for n in names]
    return {"source": "kong_metrics", "x_servers": urls(x_servers), "y_servers": urls(y_servers),
            "min_requests": 300, "min_duration": min_duration, "max_duration": 30, "interval": 0.5, **extra}


# ----------------------------------------------------------------------------- load windows


def window_after(gen: LoadGenerator, after: float, count: int, timeout: float = 60) -> list[Sample]:
    """The first ``count`` samples sent at or after ``after`` (epoch seconds), waiting for them."""
    def enough() -> list[Sample] | None:
        picked = [s for s in list(gen.samples) if s.sent >= after]
        return picked if len(picked) >= count else None

    picked = poll(enough, timeout, f"{count} requests after {after}", interval=0.2)
    picked.sort(key=lambda s: s.sent)
    return picked[:count]


def share_of(samples: list[Sample], version: str) -> float:
    return 100.0 * sum(1 for s in samples if s.version == version) / len(samples)


# ----------------------------------------------------------------------------- lab lifecycle


class _LabManager:
    """At most one lab at a time: opening another closes the previous one."""

    def __init__(self) -> None:
        self.current: tuple[tuple[str, ...], Lab, contextlib.ExitStack] | None = None

    def open(self, *up_args: str, kong: str = "real") -> Lab:
        self.close()
        stack = contextlib.ExitStack()
        deadline = time.monotonic() + LAB_LOCK_WAIT
        while True:
            try:
                handle = stack.enter_context(running_lab(*up_args, kong=kong))
                break
            except AssertionError as exc:
                # `lab up` serialises on the run directory's parent (flock, no wait): another
                # lab in the same parent directory being brought up or down is not a failure.
                if "another `lab up`/`lab down` is running" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        lab = Lab(handle)
        SECRETS.add(lab.password)
        SECRETS.update(str(v) for k, v in lab.secrets.items() if "password" in k and v)
        self.current = (up_args, lab, stack)
        return lab

    def close(self, only: Lab | None = None) -> None:
        """Close the open lab (only when it is ``only``, if given)."""
        if self.current is None or (only is not None and self.current[1] is not only):
            return
        _args, lab, stack = self.current
        self.current = None
        try:
            with contextlib.suppress(Exception):
                lab.stop_started_nodes()
            stack.close()
        finally:
            leftovers = lab_processes(lab.run_dir)
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            SECRETS.clear()
        assert not leftovers, f"processes of the lab in {lab.run_dir} were still running after lab down: {leftovers}"


MANAGER = _LabManager()


@contextlib.contextmanager
def lab_session(*up_args: str, kong: str = "real") -> Iterator[Lab]:
    """``lab up --kong <kong> <up_args>`` for one test module; ``lab down`` and a leftover check after it.

    ``kong="real"`` (the default) skips the module's tests with the reason when real Kong of its
    versions cannot be had here (fails under CI=true: labfixtures.require_real_kong)."""
    lab = MANAGER.open(*up_args, kong=kong)
    try:
        yield lab
    finally:
        MANAGER.close(only=lab)


def lab_processes(run_dir: Path) -> list[int]:
    """Pids of live processes whose command line names ``run_dir`` (Kong nodes, HAProxy, NGINX, ...)."""
    needle = str(run_dir).rstrip("/") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if needle in cmdline and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def in_background(fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """Start ``fn()`` in a daemon thread now; its Future gives the result (for a module run that a
    test watches from outside while it waits)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def target() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001  handed to the test through the future
            future.set_exception(exc)

    threading.Thread(target=target, daemon=True).start()
    return future


def subcommands(commands: list[dict[str, Any]]) -> list[str]:
    """`migrations up` etc. from kong_migrations' returned commands."""
    out = []
    for command in commands:
        argv = command["cmd"].split()
        out.append(" ".join(argv[1:3] + (["-f"] if "-f" in argv else [])))
    return out


def strip_conditional(planned: list[str]) -> tuple[list[str], list[str]]:
    """(definite, conditional) steps of a kong_migrations plan."""
    definite = [p for p in planned if "(if " not in p]
    conditional = [re.sub(r"\s*\(if .*\)$", "", p) for p in planned if "(if " in p]
    return definite, conditional
