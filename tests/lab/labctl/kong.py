"""Kong nodes of the lab: layout, kong.conf rendering and the ``kong`` CLI.

Every node has its prefix at ``run/nodes/<name>/`` and its configuration at
``run/nodes/<name>/kong.conf``. The database password is written into kong.conf as
``pg_password`` and the file is mode 0600, as operators do on real hosts; nothing
secret is ever passed on a command line. (The inventory carries the same password
as ``kong_pg_password`` for the collection, and is mode 0600 too.)

Node names and addresses: ``x<N>`` at 127.0.1.N, ``y<N>`` at 127.0.2.N, ``cp1`` at
127.0.3.1, each with Kong's standard ports (proxy 8000, admin 8001, cluster 8005,
status 8007). Every listener the lab does not need is set to ``off``, so no node
binds outside loopback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import LabError
from .paths import (
    KONG_ADMIN_PORT,
    KONG_CLUSTER_PORT,
    KONG_PROXY_PORT,
    KONG_STATUS_PORT,
    LAB_DIR,
    node_host,
)
from .proc import ProcRef, as_user_argv, clean_env, read_pidfile, run

MODES = ("traditional", "dbless", "hybrid")


def declarative_format(version: str) -> str:
    """``_format_version`` a Kong version writes (kong-facts 5): 2.1 for 2.x, 3.0 for 3.x."""
    return "2.1" if version.split(".")[0] == "2" else "3.0"


def _installer() -> Any:
    """``kongemu.install.install_version``, or ``$KONG_LAB_INSTALLER`` (``/path/file.py:func``
    or ``module:func``) to run the lab with other ``kong`` builds, e.g. real Kong packages."""
    spec = os.environ.get("KONG_LAB_INSTALLER")
    if spec:
        target, _sep, func = spec.rpartition(":")
        if not target or not func:
            raise LabError(f"KONG_LAB_INSTALLER must be 'module:function' or 'file.py:function', got {spec!r}")
        try:
            if target.endswith(".py"):
                mspec = importlib.util.spec_from_file_location("_lab_kong_installer", target)
                if mspec is None or mspec.loader is None:
                    raise ImportError(f"cannot load {target}")
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
            else:
                module = importlib.import_module(target)
            return getattr(module, func)
        except (ImportError, AttributeError, OSError) as exc:
            raise LabError(f"KONG_LAB_INSTALLER {spec!r} is not usable: {exc}") from exc
    if str(LAB_DIR) not in sys.path:
        sys.path.insert(0, str(LAB_DIR))
    try:
        return importlib.import_module("kongemu.install").install_version
    except ImportError as exc:
        raise LabError(f"the Kong emulator is not available (kongemu.install): {exc}") from exc


def install_version(version: str, run_root: Path) -> Path:
    """Install the emulated ``kong`` executable for ``version`` under ``run_root``.

    Delegates to ``kongemu.install.install_version`` (tests/lab/kongemu), whose
    launcher is ``<run_root>/versions/<version>/bin/kong``.
    """
    installer = _installer()
    try:
        path = Path(installer(version, run_root))
    except Exception as exc:  # the emulator's own error (unknown version, ...)
        raise LabError(f"could not install emulated Kong {version}: {exc}") from exc
    if not os.access(path, os.X_OK):
        raise LabError(f"emulated Kong {version} installed at {path} but it is not executable")
    return path


@dataclass
class PgSettings:
    host: str
    port: int
    user: str
    password: str
    database: str


@dataclass
class KongNode:
    """One Kong node (running or, for Y, only planned)."""

    name: str  # x1, y1, cp1: also the LB server name for x/y
    group: str  # x, y or cp
    index: int
    version: str
    executable: Path
    run_root: Path
    role: str = "traditional"  # traditional, data_plane, control_plane
    database: str = "postgres"  # postgres or off
    cluster_control_plane: str | None = None
    declarative_config: Path | None = None
    real: bool = False  # real Kong (nginx, LuaJIT) rather than the emulator
    run_user: str | None = None  # run the kong CLI (so the node) as this user (--connection ssh: kong)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return node_host(self.group, self.index)

    @property
    def prefix(self) -> Path:
        return self.run_root / "nodes" / self.name

    @property
    def conf_path(self) -> Path:
        return self.prefix / "kong.conf"

    @property
    def pidfile(self) -> Path:
        return self.prefix / "pids" / "nginx.pid"

    @property
    def proxy_listen(self) -> str:
        return f"{self.host}:{KONG_PROXY_PORT}"

    @property
    def admin_listen(self) -> str:
        return f"{self.host}:{KONG_ADMIN_PORT}"

    @property
    def status_listen(self) -> str:
        return f"{self.host}:{KONG_STATUS_PORT}"

    @property
    def cluster_listen(self) -> str | None:
        return f"{self.host}:{KONG_CLUSTER_PORT}" if self.role == "control_plane" else None

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy_listen}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_listen}"

    @property
    def status_url(self) -> str:
        return f"http://{self.status_listen}"

    def render_conf(self, pg: PgSettings, db_update_frequency: float) -> str:
        """kong.conf text (Kong option names). Contains pg_password: write it 0600."""
        opts: dict[str, str] = {
            "prefix": str(self.prefix),
            "role": self.role,
            "database": self.database,
        }
        if self.role == "control_plane":
            opts["proxy_listen"] = "off"
        else:
            opts["proxy_listen"] = self.proxy_listen
        opts["admin_listen"] = self.admin_listen
        opts["status_listen"] = self.status_listen
        opts["admin_gui_listen"] = "off"
        if self.role == "control_plane":
            opts["cluster_listen"] = self.cluster_listen or ""
        if self.role == "data_plane" and self.cluster_control_plane:
            opts["cluster_control_plane"] = self.cluster_control_plane
        if self.database == "postgres":
            opts.update(
                {
                    "pg_host": pg.host,
                    "pg_port": str(pg.port),
                    "pg_user": pg.user,
                    "pg_password": pg.password,
                    "pg_database": pg.database,
                    "db_update_frequency": _num(db_update_frequency),
                }
            )
        elif self.declarative_config is not None:
            opts["declarative_config"] = str(self.declarative_config)
        opts["anonymous_reports"] = "off"
        if self.real:
            # Sized for a 2-core lab that runs up to 7 nodes: one nginx worker, small caches.
            opts["nginx_worker_processes"] = "1"
            opts["mem_cache_size"] = "16m"
        opts.update(self.extra)
        header = [
            f"# kong.conf for lab node {self.name} (Kong {self.version}, role {self.role})",
            "# generated by labctl"
            + ("; mode 0600 because it holds pg_password" if "pg_password" in opts else ""),
        ]
        body = [f"{k} = {v}" for k, v in opts.items() if v != ""]
        return "\n".join(header + body) + "\n"

    def write_conf(self, pg: PgSettings, db_update_frequency: float) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.render_conf(pg, db_update_frequency))
        os.chmod(self.conf_path, 0o600)

    # ------------------------------------------------------------------ CLI

    def kong(self, *args: str, what: str, timeout: float = 120.0, check: bool = True,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run this node's ``kong`` binary (clean environment: no inherited KONG_*)."""
        return run(
            as_user_argv([str(self.executable), *args], self.run_user),
            what=f"{what} ({self.name}, Kong {self.version})",
            env=clean_env(env),
            cwd=self.run_root,
            timeout=timeout,
            check=check,
        )

    def start(self, timeout: float = 60.0) -> ProcRef:
        self.kong("start", "-c", str(self.conf_path), what="kong start", timeout=timeout)
        pid = read_pidfile(self.pidfile)
        if pid is None:
            raise LabError(f"kong start succeeded for {self.name} but {self.pidfile} has no pid")
        return ProcRef.of(pid)

    def running_pid(self) -> int | None:
        return read_pidfile(self.pidfile)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
