"""Bring the lab up, report on it, and take it down (by pid) again.

``run/lab.json`` records the options and every process the lab started (pid plus
its start time, so a reused pid is never signalled), written after each start so a
crashed ``lab up`` can still be cleaned up by ``lab down``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import http.client
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import LabError, realkong
from . import inventory as inv
from .haproxy import BACKEND, HAProxySetup, LbServer, haproxy_binary
from .kong import MODES, KongNode, PgSettings, declarative_format, install_version
from .kongdeb import PACKAGE_KONG, AptRepo, build_deb, installed_package, other_lab_repos
from .load import kong_version
from .nginx import UPSTREAM, NginxSetup, nginx_binary
from .paths import (
    ECHO_HOST,
    ECHO_PORT,
    FRONTEND_HOST,
    FRONTEND_PORT,
    HAPROXY_ADMIN_TCP,
    KONG_ADMIN_PORT,
    KONG_CLUSTER_PORT,
    KONG_PROXY_PORT,
    KONG_STATUS_PORT,
    LAB_DIR,
    LAB_NET,
    PG_HOST,
    PG_PORT,
    SSH_PORT,
    RunPaths,
    default_run_dir,
    node_host,
)
from .pg import PgCluster
from .proc import (
    ProcRef,
    clean_env,
    descendants,
    is_alive,
    port_in_use,
    read_pidfile,
    run,
    spawn_daemon,
    stop_process,
    tcp_accepts,
    wait_exit,
    wait_until,
)
from .seed import generate as generate_seed
from .ssh import SSH_USER, SshSetup, check_user, hand_over, sshd_binary

STATE_FORMAT = 1
LAB_LBS = ("haproxy", "nginx")
CONNECTIONS = ("local", "ssh")
Y_INSTALLS = ("lab", "package")


def _say(msg: str) -> None:
    """Progress goes to stderr, so stdout's last line stays the inventory path."""
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _vtuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3])


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 3.0) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: (status, headers with lower-case names, body)."""
    rest = url.split("://", 1)[1]
    hostport, _sep, path = rest.partition("/")
    host, _sep, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# --------------------------------------------------------------------------- options


@dataclass
class UpOptions:
    x_version: str = "3.4.2"
    y_version: str = "3.9.1"
    x_nodes: int = 3
    y_nodes: int = 3
    mode: str = "traditional"
    cp_version: str | None = None
    lb: str = "haproxy"
    seed_size: int = 50
    db_update_frequency: float = 1.0
    kong: str = "auto"  # real, emulated, or auto: real when it can be had for every version
    kong_install: tuple[str, ...] = ()
    # local: every host is this machine as root (ansible_connection: local); ssh: node and LB hosts
    # are reached through the lab's sshd as the unprivileged `kong` user, who runs the Kong nodes.
    connection: str = "local"
    # lab: Y is installed by the lab (a real Kong build); package: Y is left to the collection's
    # package method, from the lab's apt repository of Kong packages (needs --connection ssh).
    y_install: str = "lab"

    def validate(self) -> None:
        if self.kong not in ("auto", *realkong.PROVIDERS):
            raise LabError(f"--kong must be real, emulated or auto, got {self.kong!r}")
        for label, v in (("--x-version", self.x_version), ("--y-version", self.y_version),
                         ("--cp-version", self.cp_version)):
            if v is None:
                continue
            parts = v.split(".")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise LabError(f"{label} must be a Kong OSS version X.Y.Z, got {v!r}")
        if self.mode not in MODES:
            raise LabError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.connection not in CONNECTIONS:
            raise LabError(f"--connection must be one of {', '.join(CONNECTIONS)}, got {self.connection!r}")
        if self.y_install not in Y_INSTALLS:
            raise LabError(f"--y-install must be one of {', '.join(Y_INSTALLS)}, got {self.y_install!r}")
        if self.y_install == "package" and (self.connection != "ssh" or self.kong == "emulated"
                                            or self.x_version == self.y_version or self.mode == "hybrid"):
            raise LabError("--y-install package needs --connection ssh (apt runs through sudo, as on real hosts), "
                           "real Kong, X and Y of different versions, and no hybrid control plane (it would run Y)")
        if self.lb not in LAB_LBS:
            raise LabError(f"--lb must be one of {', '.join(LAB_LBS)}, got {self.lb!r}")
        if not 1 <= self.x_nodes <= 50:
            raise LabError("--x-nodes must be between 1 and 50")
        if not 0 <= self.y_nodes <= 50:
            raise LabError("--y-nodes must be between 0 and 50")
        if not 1 <= self.seed_size <= 200_000:
            raise LabError("--seed-size must be between 1 and 200000")
        if not 0.1 <= self.db_update_frequency <= 3600:
            raise LabError("--db-update-frequency must be between 0.1 and 3600 seconds")
        if self.mode != "hybrid" and self.cp_version is not None:
            raise LabError("--cp-version only applies to --mode hybrid")
        if self.mode == "hybrid":
            cp = _vtuple(self.effective_cp_version)
            x = _vtuple(self.x_version)
            if x[0] != cp[0] or x[1] > cp[1]:
                raise LabError(
                    f"hybrid: X data planes {self.x_version} would be rejected by a "
                    f"{self.effective_cp_version} control plane (kong-facts 9.1: same major, "
                    "DP minor <= CP minor); choose another --cp-version"
                )

    @property
    def effective_cp_version(self) -> str:
        return self.cp_version or self.y_version

    @property
    def versions(self) -> list[str]:
        """Every Kong version the lab runs or installs."""
        return sorted({self.x_version, self.y_version} | ({self.effective_cp_version} if self.mode == "hybrid" else set()))


# --------------------------------------------------------------------------- state


@dataclass
class LabState:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LabState | None:
        try:
            return cls(path, json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read lab state {path}: {exc}; remove it by hand after "
                           "checking no lab process runs") from exc

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    @property
    def processes(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("processes", {})

    def record(self, name: str, ref: ProcRef, kind: str, **info: Any) -> None:
        self.processes[name] = {**ref.to_json(), "kind": kind, **info}
        self.save()


@dataclass
class ComponentStatus:
    name: str
    kind: str
    pid: int | None
    alive: bool
    address: str
    note: str = ""


@contextlib.contextmanager
def _lab_lock(run_dir: Path) -> Iterator[None]:
    """Serialise up/down on one run directory (flock on `.<run dir name>.lock` beside it).

    The lock file sits beside the run directory, not in it (`lab down` removes the run
    directory), and is per run directory, so labs on other nets do not wait for each other.
    """
    parent = run_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    lock_file = parent / f".{run_dir.name}.lock"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LabError(f"another `lab up`/`lab down` is running on {run_dir}; wait for it") from exc
        yield
        if not run_dir.exists():
            # Nothing is left once the lab is down, not even its lock file.
            with contextlib.suppress(FileNotFoundError):
                lock_file.unlink()
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM (main thread only) so a second signal cannot cut a teardown short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _remove_tree(path: Path) -> None:
    """rmtree that tolerates files vanishing underneath it (a process exiting late)."""

    def onerror(func: Callable[..., Any], target: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    deadline = time.monotonic() + 10.0
    while path.exists():
        try:
            shutil.rmtree(path, onerror=onerror)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise LabError(f"could not remove {path}: {exc}") from exc
            time.sleep(0.1)


# --------------------------------------------------------------------------- the lab


class Lab:
    def __init__(self, run_dir: Path | None = None) -> None:
        self.paths = RunPaths((run_dir or default_run_dir()).resolve())

    @property
    def run_dir(self) -> Path:
        return self.paths.root

    def state(self) -> LabState | None:
        return LabState.load(self.paths.state_file)

    # ------------------------------------------------------------------ up

    def up(self, opts: UpOptions) -> Path:
        opts.validate()
        with _lab_lock(self.run_dir):
            existing = self.state()
            if existing and any(
                ProcRef.from_json(p).alive() for p in existing.processes.values()
            ):
                raise LabError(
                    f"a lab is already running from {self.run_dir} (see `tests/lab/lab status`); "
                    "run `tests/lab/lab down` first"
                )
            if self.run_dir.exists():
                _say(f"cleaning up leftovers in {self.run_dir}")
                self._down_locked()
            provider = self._preflight(opts)
            state = LabState(self.paths.state_file)
            started = time.monotonic()
            try:
                inventory = self._up(opts, state, provider)
            except BaseException as exc:
                reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
                _say(f"lab up failed: {reason}")
                _say("tearing down what was started")
                cleaned = True
                with _signals_ignored():
                    try:
                        self._down_locked(quiet=True)
                    except LabError as down_exc:
                        cleaned = False
                        _say(f"teardown problem: {down_exc}; run `tests/lab/lab down` again")
                if isinstance(exc, LabError):
                    raise
                if isinstance(exc, KeyboardInterrupt):
                    what = "everything it started was stopped" if cleaned else "teardown incomplete"
                    raise LabError(f"lab up interrupted; {what}") from exc
                raise LabError(f"lab up failed unexpectedly: {exc!r}") from exc
            _say(f"up in {time.monotonic() - started:.1f}s")
            return inventory

    def _preflight(self, opts: UpOptions) -> str:
        """Check what the lab needs before anything starts; returns the Kong provider to use."""
        provider = self._kong_provider(opts)
        if opts.lb == "haproxy":
            haproxy_binary()
        else:
            nginx_binary()
        from .pg import pg_bindir

        pg_bindir()
        if opts.connection == "ssh":
            sshd_binary()
            check_user()
        if opts.y_install == "package":
            self._package_preflight()
        addrs = [(PG_HOST, PG_PORT), (ECHO_HOST, ECHO_PORT), (FRONTEND_HOST, FRONTEND_PORT)]
        if opts.lb == "haproxy":
            addrs.append(HAPROXY_ADMIN_TCP)
        for group, count in (("x", opts.x_nodes), ("y", opts.y_nodes)):
            for i in range(1, count + 1):
                host = node_host(group, i)
                addrs += [(host, KONG_PROXY_PORT), (host, KONG_ADMIN_PORT), (host, KONG_STATUS_PORT)]
        if opts.mode == "hybrid":
            cp = node_host("cp", 1)
            addrs += [(cp, KONG_ADMIN_PORT), (cp, KONG_STATUS_PORT), (cp, KONG_CLUSTER_PORT)]
        if opts.connection == "ssh":
            addrs += [(a, SSH_PORT) for a in self._ssh_addresses(opts)]
        busy = [f"{h}:{p}" for h, p in addrs if port_in_use(h, p)]
        if busy:
            raise LabError(
                f"address(es) already in use: {', '.join(busy)}; another lab or Kong may be "
                "running (`tests/lab/lab status`, `tests/lab/lab down`)"
            )
        return provider

    def _apt_repo(self) -> AptRepo:
        return AptRepo(self.paths.root / "apt", f"kongops-lab-{LAB_NET}")

    def _package_preflight(self) -> None:
        """The package method installs Kong into this machine's /usr/local: only when nothing else did."""
        if os.geteuid() != 0:
            raise LabError("--y-install package needs root: it adds an apt source and removes the package on lab down")
        installed = installed_package()
        if installed:
            raise LabError(f"the kong package {installed} is installed on this machine; --y-install package would "
                           "replace it. Remove it (apt-get purge kong), or `lab down` the lab that installed it")
        if PACKAGE_KONG.exists():
            raise LabError(f"{PACKAGE_KONG} exists and no kong package owns it; --y-install package would overwrite it")
        others = other_lab_repos(self._apt_repo().name)
        if others:
            raise LabError(f"another lab serves Kong packages ({', '.join(map(str, others))}); one package lab at a time")

    @staticmethod
    def _ssh_addresses(opts: UpOptions) -> list[str]:
        """Where the lab sshd listens: the LB host's address and every node's."""
        nodes = [node_host("x", i) for i in range(1, opts.x_nodes + 1)]
        nodes += [node_host("y", i) for i in range(1, opts.y_nodes + 1)]
        nodes += [node_host("cp", 1)] if opts.mode == "hybrid" else []
        return [FRONTEND_HOST, *nodes]

    def _kong_provider(self, opts: UpOptions) -> str:
        """``real`` or ``emulated`` for ``--kong``: ``auto`` takes real Kong when every version can
        be had (installed, already built, or buildable from the kit) and says why it falls back."""
        if opts.kong == "emulated":
            return "emulated"
        reasons = []
        for version in opts.versions:
            ok, why = realkong.available(version, opts.kong_install)
            if not ok:
                reasons.append(why)
        if reasons and opts.kong == "real":
            raise realkong.RealKongMissing("; ".join(reasons))
        if reasons:
            _say(f"real Kong is not available ({'; '.join(reasons)}): using the emulator")
            return "emulated"
        bad = realkong.unreadable_for_workers(self.run_dir)
        if bad is not None:
            raise LabError(f"real Kong cannot run from {self.run_dir}: {bad} is closed to others (mode "
                           f"{bad.stat().st_mode & 0o777:o}), and nginx runs its workers as an "
                           "unprivileged user that must read the node prefixes; set KONG_LAB_RUN_DIR "
                           "to a directory others can traverse")
        return "real"

    def _up(self, opts: UpOptions, state: LabState, provider: str) -> Path:
        p = self.paths
        p.root.mkdir(parents=True, exist_ok=True)
        os.chmod(p.root, 0o755)
        state.data.update(
            {
                "format": STATE_FORMAT,
                "status": "starting",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "run_dir": str(p.root),
                "options": asdict(opts),
                "processes": {},
            }
        )
        state.save()
        secrets_data = {
            "pg_admin_password": secrets.token_urlsafe(24),
            "pg_kong_password": secrets.token_urlsafe(24),
        }
        fd = os.open(p.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(secrets_data, fh)

        # (1) Kong: real (installed or built from the kit) or emulated
        executables = self._install_kong(opts, provider, state)
        real = provider == "real"

        # (2) PostgreSQL
        pg = PgCluster(p.pg, PG_HOST, PG_PORT, secrets_data["pg_admin_password"],
                       kong_password=secrets_data["pg_kong_password"])
        pg.init()
        pg_ref = pg.start()
        state.record("postgres", pg_ref, "postgres", address=f"{PG_HOST}:{PG_PORT}",
                     data_dir=str(pg.data), match="postgres")
        pg.create_kong_database()
        _say(f"PostgreSQL {pg.server_version()} up on {PG_HOST}:{PG_PORT} (database kong)")
        pg_settings = PgSettings(PG_HOST, PG_PORT, pg.kong_user, pg.kong_password, pg.kong_database)

        # (3) echo upstream
        p.echo.mkdir(parents=True, exist_ok=True)
        echo_ref = spawn_daemon(
            [sys.executable, "-m", "labctl.echo", "--host", ECHO_HOST, "--port", str(ECHO_PORT)],
            log_path=p.echo / "echo.log",
            env=clean_env({"PYTHONPATH": str(LAB_DIR)}),
            cwd=LAB_DIR,
        )
        (p.echo / "echo.pid").write_text(f"{echo_ref.pid}\n", encoding="utf-8")
        state.record("echo", echo_ref, "echo", address=f"http://{ECHO_HOST}:{ECHO_PORT}",
                     match="labctl.echo")
        wait_until(lambda: http_get(f"http://{ECHO_HOST}:{ECHO_PORT}/")[0] == 200, 15,
                   "the echo service", hint=f"see {p.echo / 'echo.log'}")

        # (4) nodes and seed
        seed = generate_seed(opts.seed_size, declarative_format(opts.x_version), ECHO_HOST, ECHO_PORT)
        seed.write(p.declarative)
        state.data["seed"] = {"file": str(p.declarative), "units": seed.units, "counts": seed.counts,
                              "total": seed.total, "load_targets": seed.load_targets}
        state.save()
        x_nodes, y_nodes, cp_nodes = self._plan_nodes(opts, executables, real)
        if opts.y_install == "package":
            # Y comes from the lab's apt repository, installed by the collection's package method.
            kit = realkong.kit_dir()
            if kit is None:
                raise realkong.RealKongMissing("--y-install package packages Kong from the realkong kit, which is "
                                               "missing (KONG_LAB_REALKONG_KIT)")
            deb = build_deb(opts.y_version, kit)
            repo = self._apt_repo()
            state.data["apt_repo"] = {"base": str(repo.base), "name": repo.name, "sources": str(repo.sources_file),
                                      "package": deb.name, "version": opts.y_version}
            state.save()
            repo.create([deb])
            _say(f"apt repository {repo.base} serves {deb.name} ({repo.sources_file}); Y is not installed")
            for node in y_nodes:
                node.executable = PACKAGE_KONG
        if real and opts.mode == "hybrid":
            self._cluster_certificate(cp_nodes[0], [*cp_nodes, *x_nodes, *y_nodes])
        for node in [*cp_nodes, *x_nodes]:
            node.write_conf(pg_settings, opts.db_update_frequency)
        if opts.connection == "ssh":
            # The nodes run as the lab user, who owns their prefixes (the collection writes Y's
            # there), reads the cluster certificate and writes the backups (kong_upgrade_backup_dir).
            p.nodes.mkdir(parents=True, exist_ok=True)
            p.backups.mkdir(mode=0o700, exist_ok=True)
            if opts.mode == "dbless":
                shutil.copyfile(p.declarative, self._node_declarative(opts))
            hand_over([p.nodes, p.root / "cluster", p.backups])
            for node in [*cp_nodes, *x_nodes, *y_nodes]:
                node.run_user = SSH_USER

        if opts.mode in ("traditional", "hybrid"):
            db_node = cp_nodes[0] if opts.mode == "hybrid" else x_nodes[0]
            db_node.kong("migrations", "bootstrap", "-c", str(db_node.conf_path),
                         what="kong migrations bootstrap", timeout=300)
            t0 = time.monotonic()
            db_node.kong("config", "db_import", str(p.declarative), "-c", str(db_node.conf_path),
                         what="kong config db_import", timeout=900)
            _say(f"database bootstrapped with Kong {db_node.version}; seeded {seed.total} entities "
                 f"in {time.monotonic() - t0:.1f}s")
        for cp in cp_nodes:
            ref = cp.start()
            self._record_node(state, cp, ref)
            wait_until(lambda cp=cp: http_get(cp.admin_url + "/status")[0] == 200, 60,
                       f"control plane {cp.name} Admin API /status", hint=f"see {cp.prefix}/logs")
            _say(f"control plane {cp.name} (Kong {cp.version}) up at {cp.admin_url}")

        self._start_nodes(state, x_nodes)
        for node in x_nodes:
            self._wait_node_ready(state, node, cp_nodes)
        _say(f"{len(x_nodes)} X node(s) (Kong {opts.x_version}, {opts.mode}) up")

        # (5) load balancer
        servers = [LbServer(n.name, n.host, KONG_PROXY_PORT, KONG_STATUS_PORT, 100) for n in x_nodes]
        servers += [LbServer(n.name, n.host, KONG_PROXY_PORT, KONG_STATUS_PORT, 0) for n in y_nodes]
        lb_vars: dict[str, Any] = {
            "kong_lb_driver": opts.lb,
            "kong_lb_backend": BACKEND if opts.lb == "haproxy" else UPSTREAM,
            "kong_lb_frontend_url": f"http://{FRONTEND_HOST}:{FRONTEND_PORT}",
        }
        if opts.lb == "haproxy":
            hap = HAProxySetup(p.haproxy, FRONTEND_HOST, FRONTEND_PORT, HAPROXY_ADMIN_TCP, servers)
            ref = hap.start()
            state.record("haproxy", ref, "haproxy", address=f"http://{FRONTEND_HOST}:{FRONTEND_PORT}",
                         admin_socket=str(hap.admin_socket),
                         admin_tcp=f"{HAPROXY_ADMIN_TCP[0]}:{HAPROXY_ADMIN_TCP[1]}",
                         pidfile=str(hap.pidfile), match="haproxy")
            lb_vars.update(
                {
                    "kong_lb_haproxy_socket": str(hap.admin_socket),
                    "kong_lb_haproxy_admin_tcp": f"{HAPROXY_ADMIN_TCP[0]}:{HAPROXY_ADMIN_TCP[1]}",
                    "kong_lb_haproxy_state_file": str(hap.state_file),
                    "kong_lb_haproxy_config": str(hap.config),
                    "kong_lb_haproxy_pidfile": str(hap.pidfile),
                    "kong_lb_haproxy_master_socket": str(hap.master_socket),
                    "kong_lb_haproxy_binary": haproxy_binary(),
                }
            )
        else:
            ngx = NginxSetup(p.nginx, FRONTEND_HOST, FRONTEND_PORT, servers)
            ref = ngx.start()
            state.record("nginx", ref, "nginx", address=f"http://{FRONTEND_HOST}:{FRONTEND_PORT}",
                         pidfile=str(ngx.pidfile), conf=str(ngx.config), match="nginx")
            lb_vars.update(
                {
                    "kong_lb_nginx_upstream_file": str(ngx.upstream_file),
                    "kong_lb_nginx_binary": nginx_binary(),
                    "kong_lb_nginx_conf": str(ngx.config),
                    "kong_lb_nginx_prefix": str(ngx.base),
                    "kong_lb_nginx_pidfile": str(ngx.pidfile),
                    "kong_lb_nginx_error_log": str(ngx.error_log),
                }
            )
        frontend = f"http://{FRONTEND_HOST}:{FRONTEND_PORT}"
        wait_until(lambda: self._served_by(frontend + "/", opts.x_version), 30,
                   f"the {opts.lb} frontend {frontend} to proxy GET / to a Kong {opts.x_version} node")
        _say(f"{opts.lb} frontend {frontend} proxies to Kong {opts.x_version}")

        ssh: SshSetup | None = None
        if opts.connection == "ssh":
            ssh = SshSetup(p.ssh, self._ssh_addresses(opts), SSH_PORT)
            ssh.prepare()
            ref = ssh.start()
            state.record("sshd", ref, "sshd", address=f"port {SSH_PORT} on {len(ssh.addresses)} addresses",
                         pidfile=str(ssh.pidfile), match="sshd", user=ssh.user)
            _say(f"sshd up on port {SSH_PORT} (user {ssh.user}, key {ssh.client_key}) for the LB and "
                 f"{len(ssh.addresses) - 1} node address(es)")

        # (6) inventory
        lab_vars = {
            "lab_frontend_url": frontend,
            "lab_run_dir": str(p.root),
            "lab_state_file": str(p.state_file),
            "lab_mode": opts.mode,
            "lab_x_version": opts.x_version,
            "lab_y_version": opts.y_version,
            "lab_echo_url": f"http://{ECHO_HOST}:{ECHO_PORT}",
            "lab_declarative_config": str(p.declarative),
        }
        if opts.mode == "hybrid":
            lab_vars["lab_cp_version"] = opts.effective_cp_version
        data = inv.build(
            x_nodes=x_nodes, y_nodes=y_nodes, cp_nodes=cp_nodes,
            pg={"host": PG_HOST, "port": PG_PORT, "user": pg.kong_user,
                "password": pg.kong_password, "database": pg.kong_database},
            lb_vars=lb_vars, lab_vars=lab_vars,
            reach=ssh.reach if ssh else None, lb_address=FRONTEND_HOST,
        )
        inv.write(data, p.inventory)
        state.data.update({"status": "up", "frontend_url": frontend, "inventory": str(p.inventory),
                           "lb": opts.lb, "mode": opts.mode, "connection": opts.connection,
                           "y_install": opts.y_install,
                           "nodes": {n.name: self._node_info(n) for n in [*cp_nodes, *x_nodes, *y_nodes]}})
        state.save()
        return p.inventory

    def _install_kong(self, opts: UpOptions, provider: str, state: LabState) -> dict[str, Path]:
        """The ``kong`` executable of every version: real (installed, or built once from the kit)
        or emulated (a launcher under run/versions)."""
        executables: dict[str, Path] = {}
        described: dict[str, dict[str, str]] = {}
        for v in opts.versions:
            if provider == "real":
                found = realkong.resolve(v, opts.kong_install)
                executables[v] = found.executable
                described[v] = {"source": found.source, "root": str(found.root)}
                _say(f"Kong {v}: {found.describe()}")
            else:
                executables[v] = install_version(v, self.run_dir)
                described[v] = {"source": "emulated", "root": str(executables[v].parent.parent)}
        if provider != "real":
            _say(f"installed emulated Kong {', '.join(opts.versions)}")
        state.data["kong"] = {"provider": provider, "versions": described}
        state.save()
        return executables

    def _cluster_certificate(self, cp: KongNode, nodes: list[KongNode]) -> None:
        """Hybrid on real Kong: one shared-mode cluster certificate (``kong hybrid gen_cert``)."""
        cluster = self.paths.root / "cluster"
        cluster.mkdir(parents=True, exist_ok=True)
        cert, key = cluster / "cluster.crt", cluster / "cluster.key"
        cp.kong("hybrid", "gen_cert", str(cert), str(key), what="kong hybrid gen_cert")
        for node in nodes:
            node.extra.update({"cluster_cert": str(cert), "cluster_cert_key": str(key)})

    def _node_declarative(self, opts: UpOptions) -> Path:
        """The declarative file DB-less nodes load. Over SSH, a copy in the nodes' directory, which
        their user owns: the collection writes Y's copy at X's path, as it would on separate hosts."""
        return self.paths.nodes / "kong.yml" if opts.connection == "ssh" else self.paths.declarative

    def _plan_nodes(self, opts: UpOptions, executables: dict[str, Path],
                    real: bool = False) -> tuple[list[KongNode], list[KongNode], list[KongNode]]:
        root = self.paths.root
        cp_nodes: list[KongNode] = []
        cp_addr = None
        if opts.mode == "hybrid":
            cpv = opts.effective_cp_version
            cp = KongNode("cp1", "cp", 1, cpv, executables[cpv], root, role="control_plane",
                          database="postgres", real=real)
            cp_nodes.append(cp)
            cp_addr = f"{cp.host}:{KONG_CLUSTER_PORT}"

        def make(group: str, i: int, version: str) -> KongNode:
            if opts.mode == "traditional":
                return KongNode(f"{group}{i}", group, i, version, executables[version], root, real=real)
            if opts.mode == "dbless":
                return KongNode(f"{group}{i}", group, i, version, executables[version], root,
                                database="off", declarative_config=self._node_declarative(opts), real=real)
            return KongNode(f"{group}{i}", group, i, version, executables[version], root,
                            role="data_plane", database="off", cluster_control_plane=cp_addr, real=real)

        x_nodes = [make("x", i, opts.x_version) for i in range(1, opts.x_nodes + 1)]
        y_nodes = [make("y", i, opts.y_version) for i in range(1, opts.y_nodes + 1)]
        return x_nodes, y_nodes, cp_nodes

    @staticmethod
    def _node_info(node: KongNode) -> dict[str, Any]:
        return {"version": node.version, "executable": str(node.executable), "prefix": str(node.prefix),
                "conf": str(node.conf_path), "role": node.role, "database": node.database,
                "address": node.host, "group": node.group}

    def _record_node(self, state: LabState, node: KongNode, ref: ProcRef) -> None:
        state.record(f"node:{node.name}", ref, "kong", node=node.name, version=node.version,
                     executable=str(node.executable), prefix=str(node.prefix),
                     address=node.host, match="kong")

    def _start_nodes(self, state: LabState, nodes: list[KongNode]) -> None:
        errors: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
            futures = {pool.submit(n.start): n for n in nodes}
            for fut in concurrent.futures.as_completed(futures):
                node = futures[fut]
                try:
                    ref = fut.result()
                except LabError as exc:
                    errors.append(str(exc))
                    pid = node.running_pid()
                    if pid:
                        self._record_node(state, node, ProcRef.of(pid))
                    continue
                self._record_node(state, node, ref)
        if errors:
            raise LabError("; ".join(errors))

    def _wait_node_ready(self, state: LabState, node: KongNode, cp_nodes: list[KongNode]) -> None:
        hint = f"see {node.prefix}/logs/error.log"
        wait_until(lambda: http_get(node.status_url + "/status")[0] == 200, 60,
                   f"{node.name} status listener {node.status_url}/status", hint=hint)
        what = f"{node.name} to proxy GET / with the seeded configuration"
        if node.role != "data_plane":
            wait_until(lambda: self._served_by(node.proxy_url + "/", node.version), 60, what, hint=hint)
            return
        # A data plane gets its configuration from the control plane. Real Kong's CP sends it once,
        # when the DP connects; if its export fails then (a slow database on a loaded machine), the
        # DP stays connected with no configuration until the next change. Restart the DP once so it
        # reconnects, and say so, with the clustering lines of both logs.
        try:
            wait_until(lambda: self._served_by(node.proxy_url + "/", node.version), 30, what, hint=hint)
            return
        except LabError as exc:
            _say(f"{node.name}: {exc}; restarting it once so that it reconnects to the control plane. "
                 f"Clustering log lines: {self._clustering_lines([node, *cp_nodes]) or 'none'}")
        node.kong("quit", "-p", str(node.prefix), what="kong quit", timeout=60, check=False)
        wait_until(lambda: node.running_pid() is None, 30, f"{node.name} to stop after kong quit", hint=hint)
        self._record_node(state, node, node.start())
        wait_until(lambda: http_get(node.status_url + "/status")[0] == 200, 60,
                   f"{node.name} status listener {node.status_url}/status", hint=hint)
        try:
            wait_until(lambda: self._served_by(node.proxy_url + "/", node.version), 60, what, hint=hint)
        except LabError as exc:
            raise LabError(f"{exc}. Clustering log lines: "
                           f"{self._clustering_lines([node, *cp_nodes]) or 'none'}") from exc
        _say(f"{node.name} serves the seeded configuration after its restart")

    @staticmethod
    def _clustering_lines(nodes: list[KongNode], last: int = 4) -> str:
        """The last ``[clustering]`` lines of each node's error.log, for a message."""
        parts = []
        for n in nodes:
            try:
                text = (n.prefix / "logs" / "error.log").read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            lines = [ln.strip() for ln in text.splitlines() if "clustering" in ln]
            if lines:
                parts.append(f"{n.name}: " + " | ".join(lines[-last:]))
        return "; ".join(parts)

    @staticmethod
    def _served_by(url: str, version: str) -> bool:
        status, headers, _body = http_get(url)
        if status != 200:
            raise LabError(f"GET {url} answered {status}")
        got = kong_version(headers.get("via"), headers.get("server"))
        if got != version:
            raise LabError(f"GET {url} was answered by Kong {got}, expected {version}")
        return True

    # ------------------------------------------------------------------ down

    def down(self) -> list[str]:
        with _lab_lock(self.run_dir):
            return self._down_locked()

    def _down_locked(self, quiet: bool = False) -> list[str]:
        """Stop everything (LB, Kong nodes, echo, PostgreSQL), remove run/. Returns notes."""
        notes: list[str] = []

        def say(msg: str) -> None:
            notes.append(msg)
            if not quiet:
                _say(msg)

        if not self.run_dir.exists():
            return notes
        state = self.state() or LabState(self.paths.state_file, {})
        procs = state.processes

        # load balancers first: traffic stops before nodes go
        for name, pidfile, match in (("haproxy", self.paths.haproxy / "haproxy.pid", "haproxy"),
                                     ("nginx", self.paths.nginx / "nginx.pid", "nginx")):
            ref = self._ref(procs.get(name), pidfile, match)
            if ref is not None:
                self._stop_tree(ref, signal.SIGTERM, 15.0, say, name)

        # the lab sshd and every session it holds (Ansible's persistent connections)
        sshd = self._ref(procs.get("sshd"), self.paths.ssh / "sshd.pid", "sshd")
        if sshd is not None:
            self._stop_tree(sshd, signal.SIGTERM, 10.0, say, "sshd")

        # Kong nodes: every prefix under run/nodes (the lab's and any the collection
        # started); a second pass catches a node whose pid file appeared meanwhile
        for _pass in range(2):
            node_refs = self._running_nodes(state)
            if not node_refs:
                break
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(node_refs))) as pool:
                list(pool.map(lambda t: self._stop_kong(*t, say), node_refs))

        repo_info = state.data.get("apt_repo")
        if repo_info:
            # What the collection's package method installed from the lab's repository goes with it.
            installed = installed_package()
            if installed == repo_info.get("version"):
                res = run(["dpkg", "--purge", "kong"], what="dpkg --purge kong", timeout=300, check=False)
                say(f"removed the kong package {installed}" + ("" if res.returncode == 0 else
                                                               f" (dpkg failed: {res.stderr.strip()[-300:]})"))
            AptRepo(Path(repo_info["base"]), repo_info["name"]).remove()
            say(f"removed the apt source {repo_info['sources']}")

        echo = self._ref(procs.get("echo"), self.paths.echo / "echo.pid", "labctl.echo")
        if echo is not None:
            self._stop_tree(echo, signal.SIGTERM, 10.0, say, "echo")

        pg_info = procs.get("postgres")
        pg_ref = self._ref(pg_info, self.paths.pg / "data" / "postmaster.pid", "postgres")
        if pg_ref is not None:
            kids = descendants(pg_ref.pid)
            cluster = PgCluster(self.paths.pg, PG_HOST, PG_PORT, "")
            try:
                cluster.stop()
            except LabError as exc:
                say(f"pg_ctl stop: {exc}")
            left = wait_exit([pg_ref, *(ProcRef.of(k) for k in kids)], 30.0)
            for r in left:
                stop_process(r, signal.SIGQUIT, 5.0)
            say(f"stopped PostgreSQL (pid {pg_ref.pid})")

        leftovers = [n for n, i in procs.items() if ProcRef.from_json(i).alive()]
        if leftovers:
            raise LabError(f"could not stop: {', '.join(leftovers)}; state kept in {self.run_dir}")
        _remove_tree(self.run_dir)
        say(f"removed {self.run_dir}")
        return notes

    def _running_nodes(self, state: LabState) -> list[tuple[str, ProcRef, Path | None, Path]]:
        """Running Kong nodes: (name, process, kong executable, prefix); data planes and
        traditional nodes before control planes. A node the lab did not start (a Y node the
        collection started) is found by its prefix's pid file, checked against the process's
        command line (real nginx names its prefix there, the emulator names kong), and stopped
        with its own version's ``kong`` from the lab state."""
        procs = state.processes
        planned = state.data.get("nodes", {})
        found: list[tuple[str, ProcRef, Path | None, Path]] = []
        seen: set[int] = set()
        nodes_dir = self.paths.nodes
        # (over SSH the nodes' directory also holds their declarative file: prefixes only)
        prefixes = sorted(d for d in nodes_dir.iterdir() if d.is_dir()) if nodes_dir.is_dir() else []
        prefixes.sort(key=lambda d: d.name.startswith("cp"))
        for prefix in prefixes:
            info = procs.get(f"node:{prefix.name}")
            ref = self._ref(info, prefix / "pids" / "nginx.pid", "kong", str(prefix))
            if ref is None:
                continue
            seen.add(ref.pid)
            known = (info or {}).get("executable") or planned.get(prefix.name, {}).get("executable")
            exe = Path(known) if known else self._any_kong(state)
            found.append((prefix.name, ref, exe, prefix))
        for name, info in procs.items():
            if info.get("kind") == "kong":
                ref = ProcRef.from_json(info)
                if ref.pid not in seen and ref.alive():
                    found.append((name, ref, None, Path(info.get("prefix", "."))))
        return found

    def _ref(self, info: dict[str, Any] | None, pidfile: Path, *match: str) -> ProcRef | None:
        """The process to stop: the recorded one if alive, else a pidfile's, whose command line
        must contain one of ``match``."""
        if info:
            ref = ProcRef.from_json(info)
            if ref.alive():
                return ref
        pid = read_pidfile(pidfile)
        if pid and is_alive(pid) and any(m in _cmdline(pid) for m in match):
            return ProcRef.of(pid)
        return None

    def _any_kong(self, state: LabState) -> Path | None:
        """Some ``kong`` of this lab (to stop a node of unknown version): the real Kongs it used,
        else the emulator's launchers under run/versions."""
        roots = [Path(i["root"]) for i in state.data.get("kong", {}).get("versions", {}).values()
                 if i.get("source") != "emulated"]
        for exe in [r / "bin" / "kong" for r in roots] + sorted(self.paths.versions.glob("*/bin/kong")):
            if os.access(exe, os.X_OK):
                return exe
        return None

    def _stop_kong(self, name: str, ref: ProcRef, exe: Path | None, prefix: Path,
                   say: Callable[[str], None]) -> None:
        kids = [ProcRef.of(k) for k in descendants(ref.pid)]
        if exe is not None and (prefix / "pids" / "nginx.pid").exists():
            with contextlib.suppress(LabError):
                run([str(exe), "stop", "-p", str(prefix)], what=f"kong stop ({name})",
                    env=clean_env(), timeout=30, check=False)
        killed = False
        if wait_exit([ref], 15.0):
            killed = stop_process(ref, signal.SIGTERM, 5.0)
        for kid in wait_exit(kids, 5.0):
            stop_process(kid, signal.SIGKILL, 2.0)
        say(f"stopped Kong node {name} (pid {ref.pid}){' forcefully' if killed else ''}")

    def _stop_tree(self, ref: ProcRef, sig: int, timeout: float, say: Callable[[str], None],
                   name: str) -> None:
        kids = [ProcRef.of(k) for k in descendants(ref.pid)]
        killed = stop_process(ref, sig, timeout)
        for kid in wait_exit(kids, 5.0):
            stop_process(kid, signal.SIGKILL, 2.0)
        say(f"stopped {name} (pid {ref.pid}){' forcefully' if killed else ''}")

    # ------------------------------------------------------------------ status

    def status(self) -> tuple[dict[str, Any] | None, list[ComponentStatus]]:
        state = self.state()
        if state is None:
            return None, []
        comps: list[ComponentStatus] = []
        for name, info in state.processes.items():
            ref = ProcRef.from_json(info)
            alive = ref.alive()
            address = str(info.get("address", ""))
            kind = str(info.get("kind", ""))
            note = ""
            if kind == "kong":
                host = address
                node_name = info.get("node", name)
                address = (f"proxy {host}:{KONG_PROXY_PORT} admin {host}:{KONG_ADMIN_PORT} "
                           f"status {host}:{KONG_STATUS_PORT}")
                note = f"Kong {info.get('version')}"
                name = str(node_name)
                if alive:
                    with contextlib.suppress(OSError, ValueError, LabError):
                        code = http_get(f"http://{host}:{KONG_STATUS_PORT}/status", timeout=1.0)[0]
                        note += f", /status {code}"
            elif kind == "haproxy":
                note = f"runtime API {info.get('admin_socket')} and {info.get('admin_tcp')}"
            elif kind == "sshd":
                note = f"Ansible logs in as {info.get('user')}"
            comps.append(ComponentStatus(name, kind, ref.pid, alive, address, note))
        recorded = {c.name for c in comps}
        nodes = state.data.get("nodes", {})
        for node_name, info in sorted(nodes.items()):
            if node_name in recorded:
                continue
            pid = read_pidfile(Path(info["prefix"]) / "pids" / "nginx.pid")
            alive = bool(pid and is_alive(pid))
            what = "started outside the lab" if alive else "not started (configuring Y is the collection's job)"
            note = f"Kong {info['version']}, {what}"
            comps.append(ComponentStatus(node_name, "kong-y" if info.get("group") == "y" else "kong",
                                         pid if alive else None, alive, str(info.get("address", "")), note))
        return state.data, comps


def lab_all_up(data: dict[str, Any] | None, comps: list[ComponentStatus]) -> bool:
    """True when the lab finished coming up and every process it started is alive."""
    if not data or data.get("status") != "up":
        return False
    return all(c.alive for c in comps if c.kind != "kong-y")


def lab_pids(run_dir: Path | None = None) -> list[int]:
    """Every live pid the lab recorded, plus their descendants (for tests)."""
    lab = Lab(run_dir)
    state = lab.state()
    if state is None:
        return []
    pids: set[int] = set()
    for info in state.processes.values():
        ref = ProcRef.from_json(info)
        if ref.alive():
            pids.add(ref.pid)
            pids.update(descendants(ref.pid))
    return sorted(pids)


def wait_lab_down(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if is_alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if is_alive(p)]


__all__ = ["Lab", "UpOptions", "LabState", "ComponentStatus", "lab_all_up", "lab_pids",
           "wait_lab_down", "http_get", "tcp_accepts"]
