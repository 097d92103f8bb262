"""The running Kong node and the process-control commands (kong-facts 8).

The CLI side (`cmd_*`, called by cli.py) behaves like kong/cmd/{start,stop,quit,
restart,reload,health,prepare,drain}.lua. `kong start` daemonizes a node process
(double fork, setsid, then exec of a fresh interpreter running `daemon_main`), which
reads its configuration from `<prefix>/.kong_env` (the way nginx reads the
nginx.conf rendered from it), binds every listener, loads the configuration and
only then writes `<prefix>/pids/nginx.pid` and reports success through a pipe.

The node (`Node`) serves the proxy (proxy.py), Admin API (admin.py), status
(status.py) and, on a control plane, cluster (hybrid.py) listeners with the threaded
HTTP/1.1 server of httpserver.py, and handles SIGQUIT (graceful), SIGTERM/SIGINT
(fast) and SIGHUP (reload) like the nginx master.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

from . import conf as confmod
from . import versions
from .errors import KongError
from .httpserver import HTTPServer, Request, Response

PID_FILE = os.path.join("pids", "nginx.pid")
NODE_ID_FILE = "kong.id"
START_TIMEOUT = 120.0
GRACEFUL_DEADLINE = 60.0
LEVELS = {"debug": 0, "info": 1, "notice": 2, "warn": 3, "error": 4, "crit": 5,
          "alert": 6, "emerg": 7}


class CliLog(Protocol):
    def info(self, msg: str) -> None: ...
    def warn(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...
    def verbose(self, msg: str) -> None: ...
    def debug(self, msg: str) -> None: ...


# ============================================================================ prefix helpers
def pid_path(prefix: str) -> str:
    return os.path.join(prefix, PID_FILE)


def read_pid(prefix: str) -> int | None:
    try:
        text = Path(pid_path(prefix)).read_text(encoding="ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill -0; reap it if it is one.
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    return True


def is_running(prefix: str) -> bool:
    """Kong's kill.is_running: the pid file exists and `kill -0` succeeds."""
    pid = read_pid(prefix)
    return pid is not None and pid_alive(pid)


def node_id_for(prefix: str) -> str:
    """The node id persisted in the prefix (Kong's `kong.id`)."""
    path = os.path.join(prefix, NODE_ID_FILE)
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        uuid.UUID(text)
        return text
    except (OSError, ValueError):
        pass
    value = str(uuid.uuid4())
    os.makedirs(prefix, exist_ok=True)
    Path(path).write_text(value + "\n", encoding="ascii")
    return value


def keeps_node_id(conf: confmod.KongConf, version_info: versions.VersionInfo) -> bool:
    """Only data planes persist their node id (`kong.id`, pdk/private/node.lua, from 3.1:
    Kong/kong#9067); every other node draws a new one at each start (real 2.8.5, 3.4.2,
    3.9.1)."""
    return version_info.at_least(3, 1) and conf.role == "data_plane"


def workers_cannot_enter(prefix: str, version_info: versions.VersionInfo) -> bool:
    """nginx started as root runs its workers as `nobody`: a 3.x worker must open the LMDB
    environment in the prefix, so a prefix under a directory others cannot enter (a 0700
    temporary directory) kills it (real 3.4.2; 2.8.5, without LMDB, serves)."""
    if os.geteuid() != 0 or version_info.major < 3:
        return False
    path = os.path.abspath(prefix)
    while True:
        try:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return True
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


# nginx's limit for a unix socket path (sun_path, 108 bytes with the NUL)
UNIX_PATH_MAX = 107


def _check_socket_paths(prefix: str, version_info: versions.VersionInfo) -> None:
    """3.0-3.7 listen on `<prefix>/worker_events.sock`: a long prefix fails `kong start`
    like nginx's configuration test does (real 3.4.2). 3.8 moved the sockets to the
    shorter `<prefix>/sockets/`; 2.x has none."""
    if version_info.major < 3 or version_info.has_sockets_dir:
        return
    sock = os.path.join(prefix, "worker_events.sock")
    if len(sock.encode()) > UNIX_PATH_MAX:
        raise KongError(
            "nginx configuration is invalid (exit code 1):\n"
            f"nginx: [emerg] too long path in the unix domain socket in \"unix:{sock}\" of the \"listen\" "
            f"directive in {os.path.join(prefix, 'nginx-kong.conf')}:356\n"
            f"nginx: configuration file {os.path.join(prefix, 'nginx.conf')} test failed\n")


def _ts() -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S")


def _signal_node(prefix: str, sig: int) -> None:
    pid = read_pid(prefix)
    if pid is None or not pid_alive(pid):
        raise KongError(f"nginx not running in prefix: {prefix}")
    try:
        os.kill(pid, sig)
    except OSError as exc:
        raise KongError("could not send signal") from exc


def _wait_exit(prefix: str, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is None or not pid_alive(pid):
            return True
        time.sleep(0.05)
    return pid is None or not pid_alive(pid)


# ============================================================================ configuration
def _load_conf(version_info: versions.VersionInfo, args: dict[str, Any]) -> confmod.KongConf:
    return confmod.load(version_info, args.get("conf"), args.get("prefix"))


def _running_conf(version_info: versions.VersionInfo, args: dict[str, Any]) -> confmod.KongConf:
    """What stop/quit/health/drain do: find the prefix, then load `.kong_env`."""
    default = confmod.load(version_info, None, args.get("prefix"))
    prefix = default.prefix
    if not os.path.exists(prefix):
        raise KongError(f"no such prefix: {prefix}")
    return confmod.load(version_info, os.path.join(prefix, confmod.KONG_ENV), prefix, env={})


def _validate(conf: confmod.KongConf, version_info: versions.VersionInfo, log: CliLog) -> None:
    errors = confmod.validate(conf, version_info)
    if errors:
        for err in errors:
            log.error(err)
        raise KongError("\n".join(errors))


def _masked_line(key: str, value: str) -> str:
    if key in confmod.SECRET_KEYS and value:
        value = "******"
    return f"{key} = {value}"


def prepare_prefix(conf: confmod.KongConf, version_info: versions.VersionInfo,
                   log: CliLog) -> None:
    """Write the prefix like prefix_handler.prepare_prefix (kong-facts 8)."""
    prefix = conf.prefix
    message = confmod.create_prefix(prefix, version_info)  # 3.x: cli's inject_confs stage did it
    if message is not None:
        log.info(message)
    if keeps_node_id(conf, version_info):
        node_id_for(prefix)
    confmod.write_kong_env(conf)
    _write_nginx_conf(conf, version_info)


def _write_nginx_conf(conf: confmod.KongConf, version_info: versions.VersionInfo) -> None:
    """An informative nginx.conf / nginx-kong.conf (the emulator does not read them)."""
    prefix = conf.prefix
    lines = [
        "# Rendered by the Kong emulator (kongemu) for Kong " + version_info.version,
        "# The emulated node reads .kong_env; this file documents what it serves.",
        "pid pids/nginx.pid;",
        "error_log logs/error.log " + conf.get("log_level", "notice") + ";",
        "include 'nginx-kong.conf';",
    ]
    Path(os.path.join(prefix, "nginx.conf")).write_text("\n".join(lines) + "\n",
                                                        encoding="utf-8")
    kong_lines = ["# listeners of this node"]
    for key in ("proxy_listen", "admin_listen", "status_listen", "cluster_listen"):
        if key == "cluster_listen" and conf.role != "control_plane":
            continue
        try:
            listeners = conf.listeners(key)
        except KongError:
            listeners = []
        for lst in listeners:
            note = "  # ssl: not served by the emulator" if lst.ssl else ""
            kong_lines.append(f"# {key}: listen {lst} {' '.join(lst.flags)};{note}")
    Path(os.path.join(prefix, "nginx-kong.conf")).write_text("\n".join(kong_lines) + "\n",
                                                             encoding="utf-8")


# ============================================================================ CLI commands
def cmd_start(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    conf = _load_conf(version_info, args)
    _validate(conf, version_info, log)
    if args.get("db_timeout") is not None:
        values = dict(conf.values)
        values["pg_timeout"] = str(int(float(args["db_timeout"]) * 1000))
        conf = confmod.KongConf(values, conf.conf_path, dict(conf.sources))
    prefix = conf.prefix
    if is_running(prefix):
        raise KongError(f"Kong is already running in {prefix}")
    prepare_prefix(conf, version_info, log)
    _check_socket_paths(prefix, version_info)  # nginx -t of `kong start`
    try:
        if conf.database != "off":
            _check_migrations(conf, version_info, args, log)
        pid = _spawn_daemon(version_info, prefix, log)
        _wait_listeners(conf)
    except BaseException:
        log.verbose("could not start Kong, stopping services")
        _cleanup_failed_start(prefix)
        log.verbose("stopped services")
        raise
    log.verbose(f"nginx started with pid {pid}")
    log.info("Kong started")
    return 0


def _check_migrations(conf: confmod.KongConf, version_info: versions.VersionInfo,
                      args: dict[str, Any], log: CliLog) -> None:
    """kong-facts 4.2/4.3: refuse with new migrations, notice pending ones."""
    from . import migrations  # pylint: disable=import-outside-toplevel

    timeout_ms = None
    if args.get("db_timeout") is not None:
        timeout_ms = float(args["db_timeout"]) * 1000.0
    lock_timeout = float(args["lock_timeout"]) if args.get("lock_timeout") is not None else 60.0
    migrations.prepare_start(conf, version_info, log,
                             run_migrations=bool(args.get("run_migrations")),
                             lock_timeout=lock_timeout, timeout_ms=timeout_ms)


def _cleanup_failed_start(prefix: str) -> None:
    pid = read_pid(prefix)
    if pid is not None and pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        _wait_exit(prefix, pid, 5.0)
    try:
        os.unlink(pid_path(prefix))
    except OSError:
        pass


def _wait_listeners(conf: confmod.KongConf, timeout: float = 10.0) -> None:
    """Return once every (non-ssl) listener of the node accepts a connection."""
    for lst in _served_listeners(conf):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((lst.host, lst.port), timeout=2.0):
                    break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise KongError(f"listener {lst} does not accept connections: {exc}") from exc
                time.sleep(0.05)


def _served_listeners(conf: confmod.KongConf) -> list[confmod.Listener]:
    keys = ["proxy_listen", "admin_listen", "status_listen"]
    if conf.role == "data_plane":
        keys.remove("admin_listen")
    if conf.role == "control_plane":
        keys.append("cluster_listen")
    if conf.role == "control_plane":
        keys.remove("proxy_listen")
    out = []
    for key in keys:
        out.extend(lst for lst in conf.listeners(key) if not lst.ssl)
    return out


def _spawn_daemon(version_info: versions.VersionInfo, prefix: str, log: CliLog) -> int:
    """Double fork + setsid + exec the node; wait for its ready report."""
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    lab_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from kongemu.node import daemon_main; daemon_main(sys.argv[2:])")
    argv = [sys.executable, "-c", code, lab_dir, version_info.version, prefix, str(write_fd)]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the intermediate child
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            os.umask(0o022)
            devnull = os.open(os.devnull, os.O_RDWR)
            err = os.open(os.path.join(prefix, "logs", "error.log"),
                          os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(err, 2)
            keep = {0, 1, 2, write_fd}
            for fd in _open_fds():
                if fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            os.execve(sys.executable, argv, _daemon_env())
        except BaseException:  # pylint: disable=broad-except
            os._exit(127)
        os._exit(127)
    os.close(write_fd)
    os.waitpid(child, 0)
    report = _read_report(read_fd, START_TIMEOUT)
    os.close(read_fd)
    if report.startswith("OK "):
        return int(report.split()[1])
    if report.startswith("ERR "):
        raise KongError(report[4:].strip())
    tail = _error_log_tail(prefix)
    raise KongError(tail or "nginx: could not start the node (no report from it)")


def _daemon_env() -> dict[str, str]:
    """nginx keeps almost no environment (only TZ unless `env` directives say more):
    the node gets no KONG_*/PG* variables, its configuration is `.kong_env` alone."""
    keep = ("PATH", "TZ", "LANG", "HOME", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def _read_report(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while time.monotonic() < deadline:
        left = max(1, int((deadline - time.monotonic()) * 1000))
        if not poller.poll(left):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


def _error_log_tail(prefix: str) -> str:
    try:
        lines = Path(prefix, "logs", "error.log").read_text(encoding="utf-8",
                                                            errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-50:]):
        if "[emerg]" in line or "[error]" in line or "[crit]" in line:
            return line.split("] ", 1)[-1]
    return ""


def cmd_stop(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    conf = _running_conf(version_info, args)
    pid = read_pid(conf.prefix)
    log.verbose(f"sending TERM signal to nginx running at {pid_path(conf.prefix)}")
    _signal_node(conf.prefix, signal.SIGTERM)
    # nginx exits within milliseconds on TERM; wait briefly so `stop; start` works.
    _wait_exit(conf.prefix, pid, 5.0)
    if not args.get("_quiet"):
        log.info("Kong stopped")
    return 0


def cmd_quit(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    conf = _running_conf(version_info, args)
    wait = float(args.get("wait") or 0)
    if wait > 0:
        log.verbose(f"waiting {wait:g} seconds before quitting")
        time.sleep(wait)
    prefix = conf.prefix
    pid = read_pid(prefix)
    log.verbose(f"sending QUIT signal to nginx running at {pid_path(prefix)}")
    _signal_node(prefix, signal.SIGQUIT)
    log.verbose("waiting for nginx to finish processing requests")
    timeout = max(float(args.get("timeout") if args.get("timeout") is not None else 10), 1.0)
    if _wait_exit(prefix, pid, timeout):
        log.info("Kong stopped (gracefully)")
        return 0
    log.verbose(f"nginx is still running at {prefix}, forcing shutdown")
    _signal_node(prefix, signal.SIGTERM)
    _wait_exit(prefix, pid, 5.0)
    log.info("Timeout, Kong stopped forcefully")
    return 0


def cmd_restart(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    try:
        if args.get("prefix"):
            conf = _running_conf(version_info, args)
        else:
            conf = _load_conf(version_info, args)
    except KongError:
        conf = None
    if conf is not None:
        pid = read_pid(conf.prefix)
        try:
            cmd_stop(version_info, dict(args, prefix=conf.prefix, _quiet=True), _SilentLog())
        except KongError:
            pass
        _wait_exit(conf.prefix, pid, 5.0)
        if not args.get("conf") and os.path.isfile(conf.kong_env_path):
            # `kong restart -p <prefix>` without -c starts from the node's own config.
            args = dict(args, conf=conf.kong_env_path)
    return cmd_start(version_info, args, log)


def cmd_reload(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    default = confmod.load(version_info, args.get("conf"), args.get("prefix"))
    prefix = default.prefix
    if not os.path.exists(prefix):
        raise KongError(f"no such prefix: {prefix}")
    if not is_running(prefix):
        raise KongError(f"nginx not running in prefix: {prefix}")
    log.verbose(f"reloading kong from {prefix}")
    running = confmod.read_kong_env(prefix) if os.path.isfile(
        os.path.join(prefix, confmod.KONG_ENV)) else {}
    new = confmod.load(version_info, args.get("conf"), args.get("prefix"))
    values = dict(running)
    for key, value in new.values.items():
        if new.sources.get(key) != "default" or key not in values:
            values[key] = value
    values["prefix"] = prefix
    merged = confmod.KongConf(values, new.conf_path, dict(new.sources))
    _validate(merged, version_info, log)
    prepare_prefix(merged, version_info, _SilentLog())
    _signal_node(prefix, signal.SIGHUP)
    log.info("Kong reloaded")
    return 0


def cmd_health(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    default = confmod.load(version_info, None, args.get("prefix"))
    prefix = default.prefix
    if not os.path.exists(prefix):
        raise KongError(f"no such prefix: {prefix}")
    if not os.path.isfile(os.path.join(prefix, confmod.KONG_ENV)):
        raise KongError(f"Kong is not running at {prefix}")
    running = is_running(prefix)
    log.info("nginx".ljust(12, ".") + ("running" if running else "not running"))
    log.info("")
    if not running:
        raise KongError(f"Kong is not running at {prefix}")
    log.info(f"Kong is healthy at {prefix}")
    return 0


def cmd_prepare(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    conf = _load_conf(version_info, args)
    _validate(conf, version_info, log)
    try:
        prepare_prefix(conf, version_info, log)
    except KongError as exc:
        raise KongError(f"could not prepare Kong prefix at {conf.prefix}: {exc.message}") from exc
    except OSError as exc:
        raise KongError(f"could not prepare Kong prefix at {conf.prefix}: {exc}") from exc
    return 0


def cmd_drain(version_info: versions.VersionInfo, args: dict[str, Any], log: CliLog) -> int:
    import http.client  # pylint: disable=import-outside-toplevel

    default = confmod.load(version_info, args.get("conf"), args.get("prefix"))
    conf = default
    if os.path.isfile(default.kong_env_path):
        conf = confmod.load(version_info, args.get("conf"), args.get("prefix"),
                            use_kong_env=True)
    listeners = conf.listeners("status_listen")
    if not listeners:
        log.info("No status listeners found in configuration.")
        return 0
    lst = listeners[0]
    scheme = "https" if lst.ssl else "http"
    url = f"{scheme}://{lst}/status/ready"
    log.verbose(f"sending POST {url} status=draining")
    try:
        cls = http.client.HTTPSConnection if lst.ssl else http.client.HTTPConnection
        connection = cls(lst.host, lst.port, timeout=10)
        connection.request("POST", "/status/ready", body="status=draining",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        res = connection.getresponse()
        body = res.read().decode("utf-8", "replace")
        connection.close()
    except OSError as exc:
        raise KongError(f"failed to connect to status listener at {url}: "
                        f"{exc.strerror or exc}") from exc
    if res.status != 204:
        raise KongError(f"failed to set the status to 'draining' at {url}: "
                        f"HTTP {res.status} {body.strip()}")
    log.info("Kong's status successfully changed to 'draining'")
    return 0


class _SilentLog:
    def info(self, msg: str) -> None:
        del msg

    warn = error = verbose = debug = info


# ============================================================================ node logging
class ErrorLog:
    """nginx-like error.log writer: `YYYY/MM/DD HH:MM:SS [level] pid#0: msg`."""

    def __init__(self, path: str, level: str = "notice") -> None:
        self.path = path
        self.lock = threading.Lock()
        self.level = LEVELS.get(level, 2)
        self.handle = open(path, "a", encoding="utf-8", buffering=1)  # pylint: disable=consider-using-with
        self.pid = os.getpid()

    def set_level(self, level: str) -> None:
        self.level = LEVELS.get(level.strip().lower(), 2)

    def write(self, level: str, msg: str) -> None:
        if LEVELS.get(level, 4) < self.level:
            return
        line = f"{_ts()} [{level}] {self.pid}#0: {msg}\n"
        with self.lock:
            try:
                self.handle.write(line)
            except (OSError, ValueError):
                pass

    def debug(self, msg: str) -> None:
        self.write("debug", msg)

    def info(self, msg: str) -> None:
        self.write("info", msg)

    def notice(self, msg: str) -> None:
        self.write("notice", msg)

    def warn(self, msg: str) -> None:
        self.write("warn", msg)

    def error(self, msg: str) -> None:
        self.write("error", msg)

    def crit(self, msg: str) -> None:
        self.write("crit", msg)


class AccessLog:
    """nginx `combined`-style access log lines."""

    def __init__(self, path: str | None) -> None:
        self.lock = threading.Lock()
        self.handle = None
        if path:
            self.handle = open(path, "a", encoding="utf-8", buffering=1)  # pylint: disable=consider-using-with

    def write(self, request: Request, response: Response) -> None:
        if self.handle is None:
            return
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        agent = request.header("user-agent", "-")
        referer = request.header("referer", "-")
        line = (f'{request.client_addr[0]} - - [{stamp}] "{request.method} {request.target} '
                f'{request.version}" {response.status} {len(response.body)} "{referer}" '
                f'"{agent}"\n')
        with self.lock:
            try:
                self.handle.write(line)
            except (OSError, ValueError):
                pass


def _log_path(prefix: str, value: str | None) -> str | None:
    if not value or value.strip().lower() == "off":
        return None
    value = value.split()[0]
    return value if os.path.isabs(value) else os.path.join(prefix, value)


# ============================================================================ the node
class StartupError(Exception):
    """The node could not start; the message is what `kong start` prints."""


class Node:
    """One running emulated Kong node (the nginx master + workers)."""

    def __init__(self, version_info: versions.VersionInfo, prefix: str) -> None:
        self.version_info = version_info
        self.prefix = prefix
        self.conf = self._read_conf()
        self.log = ErrorLog(os.path.join(prefix, "logs", "error.log"),
                            self.conf.get("log_level", "notice"))
        self.proxy_access = AccessLog(_log_path(prefix, self.conf.get("proxy_access_log")))
        self.admin_access = AccessLog(_log_path(prefix, self.conf.get("admin_access_log")))
        self.node_id = node_id_for(prefix) if keeps_node_id(self.conf, version_info) else str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.server = HTTPServer(self.log, idle_timeout=75.0)  # nginx keepalive_timeout default
        self.stop_event = threading.Event()
        self.exiting = False
        self.draining = False
        # What the proxy and the APIs read; swapped atomically.
        self.router: Any = None
        self.config_error: Exception | None = None
        self.config_hash: str | None = None
        self.db_ok = True
        self.backend: Any = None
        self._reload_lock = threading.Lock()
        self._change = threading.Event()
        self._kinds_lock = threading.Lock()
        self._pending_kinds: set[str] = set()
        self.config: Any = None
        self._threads: list[threading.Thread] = []
        from . import status  # pylint: disable=import-outside-toplevel

        self.metrics = status.Metrics(self)
        from .faults import Faults  # pylint: disable=import-outside-toplevel

        self.faults = Faults(prefix)
        self.admin_app: Any = None
        self.hybrid: Any = None
        self.proxy_app: Any = None
        self.status_app: Any = None
        self._since: Any = None

    # ------------------------------------------------------------------ config
    def _read_conf(self) -> confmod.KongConf:
        return confmod.load(self.version_info, os.path.join(self.prefix, confmod.KONG_ENV),
                            self.prefix, env={})

    @property
    def role(self) -> str:
        return self.conf.role

    @property
    def database(self) -> str:
        return self.conf.database

    @property
    def dbless(self) -> bool:
        return self.conf.database == "off"

    def header_enabled(self, name: str) -> bool:
        value = self.conf.get("headers", self.version_info.headers_default)
        items = [item.strip().lower() for item in value.split(",")]
        if "off" in items:
            return False
        return name in items

    def set_config(self, config: Any, config_hash: str | None = None) -> None:
        """Build the router from a loaded configuration and swap it in."""
        from . import proxy  # pylint: disable=import-outside-toplevel

        router = proxy.Router(config, self.version_info)
        self.router = router
        self.config = config
        if config_hash is not None:
            self.config_hash = config_hash
        self.config_error = None

    # ------------------------------------------------------------------ lifecycle
    def run(self, report: Callable[[str], None]) -> int:
        signals = {signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            self._startup()
        except StartupError as exc:
            self.log.write("emerg" if "bind()" in str(exc) else "error", str(exc))
            report(f"ERR {exc}")
            return 1
        except Exception as exc:  # pylint: disable=broad-except
            self.log.error(f"init_by_lua error: {exc!r}\n{traceback.format_exc()}")
            report(f"ERR nginx: [error] init_by_lua error: {exc}")
            return 1
        tmp = pid_path(self.prefix) + ".tmp"
        Path(tmp).write_text(f"{self.pid}\n", encoding="ascii")
        os.replace(tmp, pid_path(self.prefix))
        if workers_cannot_enter(self.prefix, self.version_info):
            # What real 3.x does: the master (root) binds and reports success, `kong start`
            # says `Kong started` and exits 0; the one worker (nobody) cannot open the LMDB
            # environment in the prefix and exits for good; connections are never served.
            self.log.notice("start worker processes")
            self.log.notice(f"start worker process {self.pid + 1}")
            self.log.crit("unable to open LMDB environment: Permission denied")
            self.log.notice(f"worker process {self.pid + 1} exited with code 2")
            self.log.write("alert", f"worker process {self.pid + 1} exited with fatal code 2 and cannot be "
                                    "respawned")
            report(f"OK {self.pid}")
            return self._signal_loop(signals)
        self.server.start()
        self._start_background()
        self.log.notice("start worker processes")
        report(f"OK {self.pid}")
        return self._signal_loop(signals)

    def _startup(self) -> None:
        self.log.notice('using the "epoll" event method')
        self.log.notice(f"kong/{self.version_info.version} (kongemu, python "
                        f"{sys.version.split()[0]})")
        self.log.notice(f"OS: {os.uname().sysname} {os.uname().release}")
        self._init_backend()
        self._bind_all()

    def _init_backend(self) -> None:
        from . import hybrid  # pylint: disable=import-outside-toplevel

        if self.role == "data_plane":
            self.hybrid = hybrid.DataPlane(self)
            self.hybrid.load_cache()
        elif self.dbless:
            self._load_declarative_at_start()
        else:
            self.backend = PgBackend(self)
            try:
                self._since = self.backend.invalidation_cursor()
                config = self.backend.call("load_config")
            except Exception as exc:  # pylint: disable=broad-except
                raise StartupError(f"nginx: [error] init_by_lua error: {_err_text(exc)}") from exc
            self.set_config(config)
            self._log_schema_state()
            if self.role == "control_plane":
                self.hybrid = hybrid.ControlPlane(self)
        self._make_admin()

    def _log_schema_state(self) -> None:
        """What Kong's init phase logs (kong-facts 4.3): pending/missing migrations."""
        from . import migrations  # pylint: disable=import-outside-toplevel

        try:
            state = migrations.state_for(self.conf, self.version_info)
        except Exception as exc:  # pylint: disable=broad-except
            self.log.warn(f"could not read the schema state: {_err_text(exc)}")
            return
        if state.missing_migrations:
            self.log.warn(f"database is missing some migrations:\n{state.missing_migrations}")
        if state.pending_migrations:
            self.log.warn(f"database has pending migrations:\n{state.pending_migrations}")

    def _make_admin(self) -> None:
        if not self.conf.listeners("admin_listen"):
            self.admin_app = None
            return
        try:
            from . import admin  # pylint: disable=import-outside-toplevel
        except ImportError as exc:
            self.log.error(f"the Admin API is not available: {exc}")
            self.admin_app = None
            return
        self.admin_app = admin.AdminApp(NodeContext(self))

    def _load_declarative_at_start(self) -> None:
        from . import declarative  # pylint: disable=import-outside-toplevel

        path = (self.conf.get("declarative_config") or "").strip()
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise StartupError(
                    f"nginx: [error] init_by_lua error: error parsing declarative config "
                    f"file {path}:\n{exc.strerror}: {path}") from exc
            try:
                store = dbless_load(declarative, text, self.version_info)
            except Exception as exc:  # pylint: disable=broad-except
                raise StartupError(
                    f"nginx: [error] init_by_lua error: error parsing declarative config "
                    f"file {path}:\n{_err_text(exc)}") from exc
            self.persist_dbless(text)
        else:
            saved = self._saved_dbless()
            store = None
            if saved is not None:
                try:
                    store = dbless_load(declarative, saved, self.version_info)
                except Exception as exc:  # pylint: disable=broad-except
                    self.log.error(f"[declarative] could not load the saved configuration: {_err_text(exc)}")
            if store is None:
                store = dbless_empty(declarative, self.version_info)
        self.install_store(store)
        if path and self.version_info.major < 3:
            # 2.x reports the empty hash for a declarative_config loaded at start (real 2.8.5)
            self.config_hash = "0" * 32

    # 3.x keeps the last DB-less configuration in LMDB (<prefix>/dbless.lmdb), so a node
    # started without declarative_config comes back with what /config last loaded (real
    # 3.4.2 and 3.9.1); declarative_config, when set, replaces it. 2.x keeps nothing.
    def _dbless_file(self) -> str:
        return os.path.join(self.prefix, "dbless.lmdb", "emulator-config")

    def persist_dbless(self, text: str) -> None:
        if self.version_info.major < 3 or self.role == "data_plane":
            return
        path = self._dbless_file()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)

    def _saved_dbless(self) -> str | None:
        if self.version_info.major < 3:
            return None
        try:
            return Path(self._dbless_file()).read_text(encoding="utf-8")
        except OSError:
            return None

    def install_store(self, store: Any) -> None:
        """DB-less/DP: swap the in-memory store and rebuild the router."""
        config = store_config(store)
        self.backend = store
        self.set_config(config, store_hash(store))

    def _bind_all(self) -> None:
        from . import proxy, status  # pylint: disable=import-outside-toplevel

        self.proxy_app = proxy.ProxyApp(self)
        self.status_app = status.StatusApp(self)
        failed: list[str] = []
        for key, name, handler in self._listener_specs():
            for lst in self.conf.listeners(key):
                try:
                    self._bind(key, name, lst, handler)
                except StartupError as exc:
                    failed.append(str(exc))
        if failed:
            # nginx tries every listener 5 times (0.5 s apart) before it gives up (real 3.4.2)
            raise StartupError("\n".join(failed * 5 + ["nginx: [emerg] still could not bind()"]))

    def _listener_specs(self) -> list[tuple[str, str, Callable[[Request], Response]]]:
        specs: list[tuple[str, str, Callable[[Request], Response]]] = []
        if self.role != "control_plane":
            specs.append(("proxy_listen", "proxy", self.proxy_app.handle))
        if self.role != "data_plane":  # no Admin API on data planes (nginx_kong.lua, real 2.8.5 to 3.9.1)
            specs.append(("admin_listen", "admin", self._admin_handle))
        specs.append(("status_listen", "status", self.status_app.handle))
        if self.role == "control_plane" and self.hybrid is not None:
            specs.append(("cluster_listen", "cluster", self.hybrid.handle))
        return specs

    def _bind(self, key: str, name: str, lst: confmod.Listener,
              handler: Callable[[Request], Response]) -> None:
        if lst.ssl:
            self.log.warn(f"{key}: {lst} has the ssl flag; the emulator serves plain "
                          "HTTP only, this listener is skipped")
            return
        backlog = 1024
        for flag in lst.flags:
            if flag.startswith("backlog="):
                backlog = min(int(flag.split("=", 1)[1]), 4096)
        try:
            self.server.add_listener(name, lst.host, lst.port, handler, backlog)
        except OSError as exc:
            raise StartupError(
                f"nginx: [emerg] bind() to {lst} failed ({exc.errno}: {exc.strerror})"
            ) from exc

    def _admin_handle(self, request: Request) -> Response:
        start = time.monotonic()
        app = self.admin_app
        if app is None:
            return Response(404, [("Content-Type", "application/json; charset=utf-8")],
                            b'{"message":"Not found"}')
        status, headers, body = app.handle(request.method, request.path, request.query(),
                                           request.header_map(), request.body)
        out = list(headers.items()) if isinstance(headers, dict) else list(headers)
        names = {name.lower() for name, _value in out}
        if "server" not in names and self.header_enabled("server_tokens"):
            out.append(("Server", f"kong/{self.version_info.version}"))
        if "x-kong-admin-latency" not in names and self.header_enabled("latency_tokens"):
            out.append(("X-Kong-Admin-Latency", str(int((time.monotonic() - start) * 1000))))
        if isinstance(body, str):
            body = body.encode("utf-8")
        response = Response(status, out, body or b"")
        self.admin_access.write(request, response)
        return response

    def _start_background(self) -> None:
        if self.backend is not None and isinstance(self.backend, PgBackend):
            self._spawn("config-refresh", self._refresh_loop)
        if self.hybrid is not None:
            self.hybrid.start()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _signal_loop(self, signals: set[int]) -> int:
        while True:
            info = signal.sigtimedwait(signals, 1.0)
            if info is None:
                continue
            signum = info.si_signo
            if signum == signal.SIGHUP:
                self.log.notice("signal 1 (SIGHUP) received, reconfiguring")
                try:
                    self.reload()
                except Exception as exc:  # pylint: disable=broad-except
                    self.log.error(f"reload failed: {exc!r}")
                continue
            if signum == signal.SIGQUIT:
                self.log.notice("signal 3 (SIGQUIT) received, shutting down")
                return self._graceful_watching_term()
            self.log.notice(f"signal {signum} ({signal.Signals(signum).name}) received, exiting")
            return self.fast_exit()

    def _graceful_watching_term(self) -> int:
        """Graceful exit in a helper thread; a TERM/INT meanwhile turns it into a fast one."""
        result: list[int] = []
        worker = threading.Thread(target=lambda: result.append(self.graceful_exit()),
                                  name="graceful-exit", daemon=True)
        worker.start()
        while worker.is_alive():
            info = signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, 0.1)
            if info is not None:
                self.log.notice(f"signal {info.si_signo} "
                                f"({signal.Signals(info.si_signo).name}) received while "
                                "shutting down gracefully, exiting")
                return self.fast_exit()
        return result[0] if result else 0

    def graceful_exit(self) -> int:
        self.exiting = True
        self.log.notice("gracefully shutting down")
        done = self.server.shutdown(time.monotonic() + GRACEFUL_DEADLINE)
        if not done:
            self.log.warn(f"{self.server.connection_count()} connections still open after "
                          f"{GRACEFUL_DEADLINE:g}s; closing them")
        self.stop_event.set()
        self._cleanup()
        self.log.notice("exiting")
        return 0

    def fast_exit(self) -> int:
        self.exiting = True
        self.server.close_now()
        self.stop_event.set()
        self._cleanup()
        self.log.notice("exit")
        return 0

    def _cleanup(self) -> None:
        if read_pid(self.prefix) == self.pid:
            try:
                os.unlink(pid_path(self.prefix))
            except OSError:
                pass
        if isinstance(self.backend, PgBackend):
            self.backend.close()

    # ------------------------------------------------------------------ reload
    def reload(self) -> None:
        with self._reload_lock:
            old = self.conf
            new = self._read_conf()
            self.conf = new
            self.log.set_level(new.get("log_level", "notice"))
            if new.role != old.role or new.database != old.database:
                self.log.warn("role/database changes need a restart; keeping "
                              f"role={old.role} database={old.database}")
            self._rebind(old, new)
            if self.role == "data_plane":
                pass
            elif self.dbless:
                if new.get("declarative_config") and \
                        new.get("declarative_config") != old.get("declarative_config"):
                    self._load_declarative_at_start()
                elif new.get("declarative_config"):
                    self._load_declarative_at_start()
            else:
                self.refresh(full=True)
            if (old.get("admin_listen") != new.get("admin_listen")) or self.admin_app is None:
                self._make_admin()
            self.log.notice("reconfigure done")

    def _rebind(self, old: confmod.KongConf, new: confmod.KongConf) -> None:
        specs = {key: (name, handler) for key, name, handler in self._listener_specs()}
        for key, (name, handler) in specs.items():
            try:
                before = {str(lst) for lst in old.listeners(key) if not lst.ssl}
                after = list(new.listeners(key))
            except KongError as exc:
                self.log.error(f"reload: {exc.message}")
                continue
            for lst in after:
                if str(lst) not in before:
                    try:
                        self._bind(key, name, lst, handler)
                    except StartupError as exc:
                        self.log.write("emerg", str(exc))
            for addr in before - {str(lst) for lst in after}:
                self.server.remove_listener(name, addr)
        self.server.start()

    # ------------------------------------------------------------------ DB cache
    def notify_change(self, entity: str | None = None) -> None:
        """A local Admin write of ``entity`` happened (None: everything): refresh now what
        it affects (other nodes learn it through cluster_events)."""
        from .admin import cache_kind  # pylint: disable=import-outside-toplevel

        with self._kinds_lock:
            self._pending_kinds.add("all" if entity is None else cache_kind(entity))
        self._change.set()

    def _refresh_loop(self) -> None:
        while not self.stop_event.is_set():
            period = max(self.conf.get_float("db_update_frequency", 5.0), 0.1)
            self._change.wait(period)
            if self.stop_event.is_set():
                return
            self._change.clear()
            with self._kinds_lock:
                kinds, self._pending_kinds = self._pending_kinds, set()
            try:
                self.refresh(kinds=kinds)
            except Exception as exc:  # pylint: disable=broad-except
                self.log.error(f"[cache] refresh failed: {exc!r}")

    def _event_kinds(self, events: list[Any]) -> set[str]:
        """What the polled cluster events make this node rebuild. Router and plugins
        events count only on this release's core cache channel (3.7 gave it its own, so
        3.4 and 3.9 nodes on one database do not see each other's route and plugin writes);
        consumers and credentials come through `invalidations` in every release."""
        from .admin import cache_kind  # pylint: disable=import-outside-toplevel

        kinds = set()
        for event in events:
            kind = cache_kind(str(event.get("data") or "").split(":", 1)[0])
            if kind == "consumers" or event.get("channel") == self.version_info.core_cache_channel:
                kinds.add(kind)
        return kinds

    def refresh(self, full: bool = False, kinds: set[str] | None = None) -> None:
        """Poll invalidations and probe the database (db_update_frequency). Rebuilds like
        Kong: the router on router events, the plugins iterator on plugin events (so an
        older node keeps its cached plugins until a plugin write or a restart)."""
        from . import schema  # pylint: disable=import-outside-toplevel

        backend = self.backend
        if not isinstance(backend, PgBackend):
            return
        kinds = set(kinds or ())
        if full or self.config_error is not None or not self.db_ok:
            kinds.add("all")
        try:
            events, cursor = backend.poll(self._since)
            kinds |= self._event_kinds(events)
            if kinds:
                config = backend.call("load_config")
                current = self.config
                if "all" not in kinds and current is not None:
                    if "router" not in kinds:
                        for name in ("services", "routes", "upstreams", "targets"):
                            setattr(config, name, getattr(current, name))
                    if "plugins" not in kinds:
                        config.plugins = current.plugins
                self.set_config(config)
                if self.hybrid is not None:
                    self.hybrid.config_changed()
            else:
                backend.call("probe")
            self._since = cursor
            if not self.db_ok:
                self.log.notice("[cache] database is reachable again")
            self.db_ok = True
        except schema.IncompatibleSchema as exc:
            self.db_ok = True
            if self.config_error is None:
                self.log.error(f"[cache] the database schema is incompatible with Kong "
                               f"{self.version_info.version}: {exc}")
            self.config_error = exc
        except Exception as exc:  # pylint: disable=broad-except
            if _is_db_down(exc):
                if self.db_ok:
                    self.log.error(f"[cache] failed to connect to database: {_err_text(exc)}")
                self.db_ok = False
            else:
                raise

    def db_reachable(self) -> bool:
        if not isinstance(self.backend, PgBackend):
            return True
        return self.db_ok


def _err_text(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return str(text).strip()


def _is_db_down(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"OperationalError", "InterfaceError", "DatabaseError",
                         "ConnectionError", "OSError", "PgConnectError"})


# ============================================================================ backends
class PgBackend:
    """A small pool of `schema.EntityStore` objects, one psycopg2 connection each.

    `backend.<method>(...)` borrows a store for the duration of the call, so
    admin.py can use it from any request thread.
    """

    MAX_IDLE = 4
    OVERLAP = 2.0

    def __init__(self, node: Node) -> None:
        self._node = node
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def _new_store(self) -> Any:
        from . import pg, schema  # pylint: disable=import-outside-toplevel

        conn = pg.connect(self._node.conf, application_name="kong-node")
        return schema.EntityStore(conn, self._node.version_info)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            store = self._idle.pop() if self._idle else None
        if store is None:
            store = self._new_store()
        try:
            result = getattr(store, method)(*args, **kwargs)
        except BaseException:
            # Whatever failed (schema, connection, bug), do not reuse this connection.
            _close_store(store)
            raise
        self._release(store)
        return result

    def _release(self, store: Any) -> None:
        conn = getattr(store, "conn", None)
        if conn is None or getattr(conn, "closed", 0):
            _close_store(store)
            return
        with self._lock:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(store)
                return
        _close_store(store)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, *args, **kwargs)

        return method

    def invalidation_cursor(self) -> Any:
        """Where polling starts: the database clock now."""
        return float(self.call("db_now"))

    def poll(self, since: Any) -> tuple[list[Any], Any]:
        """New invalidations since ``since`` (epoch s); returns (events, new cursor).

        Polls a little before the cursor (events whose transaction committed late
        carry an earlier `at`) and drops the ids already seen.
        """
        if since is None:
            return [], self.invalidation_cursor()
        rows = self.call("poll_invalidations", float(since) - self.OVERLAP,
                         sorted({"invalidations", self._node.version_info.core_cache_channel}))
        fresh = []
        cursor = float(since)
        for row in rows:
            event_id = str(row.get("id"))
            at = float(row.get("at") or 0.0)
            cursor = max(cursor, at)
            if event_id in self._seen:
                continue
            self._seen[event_id] = at
            fresh.append(row)
        for event_id, at in list(self._seen.items()):
            if at < cursor - 4 * self.OVERLAP:
                del self._seen[event_id]
        return fresh, cursor

    def close(self) -> None:
        with self._lock:
            stores, self._idle = self._idle, []
        for store in stores:
            _close_store(store)


def _close_store(store: Any) -> None:
    conn = getattr(store, "conn", None)
    if conn is not None:
        try:
            conn.close()
        except Exception:  # pylint: disable=broad-except
            pass


# DB-less helpers (adapters around declarative.py).
def dbless_load(declarative: Any, text: str, version_info: versions.VersionInfo) -> Any:
    """Parse and validate a declarative configuration into a MemoryStore.

    JSON text (what the control plane sends, or a JSON body) skips the YAML parser,
    which dominates the cost for large configurations.
    """
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return dbless_load_doc(declarative, doc, version_info)
    return declarative.load_store(text, version_info)


def dbless_load_doc(declarative: Any, doc: dict[str, Any],
                    version_info: versions.VersionInfo) -> Any:
    """A MemoryStore from an already parsed declarative document."""
    entities, _format = declarative.load(doc, version_info)
    return declarative.MemoryStore(entities)


def dbless_empty(declarative: Any, version_info: versions.VersionInfo) -> Any:
    return declarative.empty_store(version_info)


def store_config(store: Any) -> Any:
    return store.load_config()


def store_hash(store: Any) -> str | None:
    return getattr(store, "hash", None)


# ============================================================================ admin context
class NodeContext:
    """What admin.AdminApp reads from the node (see NOTES-node.md)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def node(self) -> Node:
        return self._node

    @property
    def version_info(self) -> versions.VersionInfo:
        return self._node.version_info

    @property
    def conf(self) -> confmod.KongConf:
        return self._node.conf

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def hostname(self) -> str:
        return self._node.hostname

    @property
    def pids(self) -> dict[str, Any]:
        return {"master": self._node.pid, "workers": [self._node.pid]}

    @property
    def backend(self) -> Any:
        return self._node.backend

    @property
    def configuration_hash(self) -> str | None:
        return self._node.config_hash

    @property
    def config_error(self) -> Exception | None:
        return self._node.config_error

    @property
    def is_control_plane(self) -> bool:
        return self._node.role == "control_plane"

    @property
    def role(self) -> str:
        return self._node.role

    def db_reachable(self) -> bool:
        return self._node.db_reachable()

    def server_stats(self) -> dict[str, int]:
        return self._node.server.stats.snapshot()

    def status_body(self, query: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        from . import status  # pylint: disable=import-outside-toplevel

        return status.status_body(self._node, query or {})

    def notify_change(self, entity: str | None = None) -> None:
        self._node.notify_change(entity)

    def load_declarative(self, config: Any, check_hash: bool = False) -> tuple[bool, Any]:
        """DB-less POST /config: validate, swap atomically, persist in the prefix."""
        return load_declarative_into(self._node, config, check_hash)


def load_declarative_into(node: Node, config: Any, check_hash: bool) -> tuple[bool, Any]:
    from . import declarative  # pylint: disable=import-outside-toplevel

    if isinstance(config, (bytes, bytearray)):
        config = config.decode("utf-8")
    if isinstance(config, dict):
        store = dbless_load_doc(declarative, config, node.version_info)
    else:
        store = dbless_load(declarative, config, node.version_info)
    new_hash = store_hash(store)
    if check_hash and new_hash is not None and new_hash == node.config_hash:
        return False, node.backend
    node.install_store(store)
    node.persist_dbless(json.dumps(config) if isinstance(config, dict) else config)
    return True, store


# ============================================================================ daemon entry
def daemon_main(argv: list[str]) -> None:
    """Entry point of the exec'd node process: <version> <prefix> <report fd>."""
    version, prefix, fd_text = argv[0], argv[1], argv[2]
    report_fd = int(fd_text)
    reported = False

    def report(line: str) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        try:
            os.write(report_fd, (line + "\n").encode("utf-8"))
            os.close(report_fd)
        except OSError:
            pass

    code = 1
    try:
        node = Node(versions.get(version), prefix)
        code = node.run(report)
    except Exception as exc:  # pylint: disable=broad-except
        sys.stderr.write(f"{_ts()} [emerg] {os.getpid()}#0: {exc!r}\n"
                         f"{traceback.format_exc()}")
        sys.stderr.flush()
        report(f"ERR nginx: [emerg] {exc}")
    finally:
        report("ERR nginx: node exited")
    sys.stderr.flush()
    os._exit(code)
