"""kong.conf, KONG_* environment variables and the prefix (kong-facts 1, 8).

Lookup order, as Kong's conf_loader: built-in defaults, then the file (`-c`, else
/etc/kong/kong.conf, else /etc/kong.conf), then `KONG_<OPTION>` variables. A
running node's rendered configuration lives in `<prefix>/.kong_env`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from . import conf_keys
from .errors import KongError
from .versions import VersionInfo

DEFAULT_PATHS = ("/etc/kong/kong.conf", "/etc/kong.conf")
KONG_ENV = ".kong_env"

# Kong's defaults (kong/templates/kong_defaults.lua), the options the emulator uses.
_DEFAULTS: dict[str, str] = {
    "prefix": "/usr/local/kong/",
    "log_level": "notice",
    "proxy_access_log": "logs/access.log",
    "proxy_error_log": "logs/error.log",
    "admin_access_log": "logs/admin_access.log",
    "admin_error_log": "logs/error.log",
    "status_access_log": "off",
    "status_error_log": "logs/status_error.log",
    "plugins": "bundled",
    "proxy_listen": "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384",
    "admin_listen": "127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl reuseport backlog=16384",
    "admin_gui_listen": "0.0.0.0:8002, 0.0.0.0:8445 ssl",
    "cluster_listen": "0.0.0.0:8005",
    "cluster_control_plane": "127.0.0.1:8005",
    "cluster_data_plane_purge_delay": "1209600",
    "role": "traditional",
    "nginx_worker_processes": "auto",
    "database": "postgres",
    "pg_host": "127.0.0.1",
    "pg_port": "5432",
    "pg_timeout": "5000",
    "pg_user": "kong",
    "pg_database": "kong",
    "pg_ssl": "off",
    "db_update_frequency": "5",
    "db_update_propagation": "0",
    "db_cache_ttl": "0",
    "worker_state_update_frequency": "5",
    "lua_package_path": "./?.lua;./?/init.lua;",
    "anonymous_reports": "on",
}

SECRET_KEYS = frozenset({"pg_password", "pg_ro_password", "cluster_cert_key", "ssl_cert_key",
                         "admin_ssl_cert_key", "status_ssl_cert_key"})

_LISTEN_FLAGS = re.compile(
    r"^(ssl|http2|proxy_protocol|deferred|bind|reuseport|backlog=\d+|ipv6only=(on|off)|"
    r"so_keepalive=(on|off|\w*:\w*:\d*))$"
)


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    flags: tuple[str, ...] = ()

    @property
    def ssl(self) -> bool:
        return "ssl" in self.flags

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class KongConf(Mapping[str, str]):
    """The loaded configuration: Kong option names to string values."""

    values: dict[str, str]
    conf_path: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def prefix(self) -> str:
        """The prefix, normalised the way the CLI prints it (no trailing slash)."""
        raw = self.values.get("prefix") or _DEFAULTS["prefix"]
        return os.path.normpath(os.path.abspath(raw))

    @property
    def kong_env_path(self) -> str:
        return os.path.join(self.prefix, KONG_ENV)

    @property
    def database(self) -> str:
        return self.values.get("database", "postgres").strip().lower()

    @property
    def role(self) -> str:
        return self.values.get("role", "traditional").strip().lower()

    def get_bool(self, key: str, default: bool = False) -> bool:
        raw = self.values.get(key)
        if raw is None or raw == "":
            return default
        return raw.strip().lower() in ("on", "true", "yes", "1")

    def get_int(self, key: str, default: int) -> int:
        raw = self.values.get(key)
        try:
            return int(float(raw)) if raw not in (None, "") else default
        except ValueError as exc:
            raise KongError(f"{key} is not a number") from exc

    def get_float(self, key: str, default: float) -> float:
        raw = self.values.get(key)
        try:
            return float(raw) if raw not in (None, "") else default
        except ValueError as exc:
            raise KongError(f"{key} is not a number") from exc

    def get_list(self, key: str) -> list[str]:
        raw = self.values.get(key) or ""
        return [item.strip() for item in raw.split(",") if item.strip()]

    def listeners(self, key: str) -> list[Listener]:
        return parse_listen(key, self.values.get(key, "off"))

    def masked(self) -> dict[str, str]:
        """The configuration with secrets replaced by ****** (GET / configuration)."""
        return {k: ("******" if k in SECRET_KEYS and v else v) for k, v in self.values.items()}

    def with_prefix(self, prefix: str) -> KongConf:
        values = dict(self.values)
        values["prefix"] = prefix
        return KongConf(values, self.conf_path, dict(self.sources))


def parse_listen(name: str, value: str) -> list[Listener]:
    """Parse a `*_listen` value; `off` gives no listener."""
    result: list[Listener] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        if entry == "off":
            return []
        parts = entry.split()
        addr, flags = parts[0], tuple(parts[1:])
        match = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", addr) or re.match(
            r"^([^:\[\]\s]+):(\d+)$", addr
        )
        if not match or not all(_LISTEN_FLAGS.match(f) for f in flags):
            raise KongError(
                f"{name} must be of form: [off] | <ip>:<port> [ssl] [http2] "
                "[proxy_protocol] [deferred] [bind] [reuseport] [backlog=%d+] "
                "[ipv6only=on] [ipv6only=off] [so_keepalive=on] [so_keepalive=off] "
                "[so_keepalive=%w*:%w*:%d*], [... next entry ...]"
            )
        port = int(match.group(2))
        if not 0 < port < 65536:
            raise KongError(f"{name}: port {port} out of range")
        result.append(Listener(match.group(1), port, flags))
    return result


def _strip_comment(line: str) -> str:
    out = []
    escaped = False
    for char in line:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "#":
            break
        else:
            out.append(char)
    return "".join(out)


def parse_conf_text(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = _strip_comment(raw).strip()
        if not line or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip().lower()] = value.strip()
    return values


def defaults(version: VersionInfo) -> dict[str, str]:
    values = dict(_DEFAULTS)
    values["status_listen"] = version.status_listen_default
    values["headers"] = version.headers_default
    return values


def load(
    version: VersionInfo,
    conf_path: str | None = None,
    prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    use_kong_env: bool = False,
) -> KongConf:
    """Load the configuration the way `kong <cmd> -c <conf> -p <prefix>` does.

    With ``use_kong_env``, the running node's `<prefix>/.kong_env` is laid over the
    file (as `kong config` and the process commands do when it exists).
    """
    env = os.environ if env is None else env
    values = defaults(version)
    sources = {k: "default" for k in values}
    path = None
    if conf_path is not None:
        path = os.path.abspath(conf_path)
        if not os.path.isfile(path):
            raise KongError(f"no file at: {conf_path}")
    else:
        for candidate in DEFAULT_PATHS:
            if os.path.isfile(candidate):
                path = candidate
                break
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise KongError(f"could not read configuration file at {path}: {exc.strerror}") from exc
        for key, value in parse_conf_text(text).items():
            values[key] = value
            sources[key] = "file"
    for name, value in env.items():
        # Only Kong's own settings (and dynamic nginx directives): real Kong ignores any other
        # KONG_* variable, so it never reaches .kong_env (DIFFERENCES.md, fixed).
        if name.startswith("KONG_") and len(name) > 5 and conf_keys.is_setting(name[5:].lower()):
            key = name[5:].lower()
            values[key] = value
            sources[key] = "env"
    if prefix is not None:
        values["prefix"] = prefix
        sources["prefix"] = "cli"
    conf = KongConf(values, path, sources)
    if use_kong_env and os.path.isfile(conf.kong_env_path):
        running = read_kong_env(conf.prefix)
        for key, value in running.items():
            if sources.get(key) not in ("env", "cli"):
                values[key] = value
                sources[key] = "kong_env"
    return conf


def read_kong_env(prefix: str) -> dict[str, str]:
    path = os.path.join(prefix, KONG_ENV)
    try:
        return parse_conf_text(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KongError(f"could not read {path}: {exc.strerror}") from exc


def write_kong_env(conf: KongConf) -> str:
    """Render `<prefix>/.kong_env` (mode 0640), as `kong prepare`/`start` do."""
    path = conf.kong_env_path
    lines = ["# DO NOT EDIT: this file is generated by Kong and overwritten at start"]
    for key in sorted(conf.values):
        value = conf.values[key].replace("#", "\\#")
        lines.append(f"{key} = {value}")
    os.makedirs(conf.prefix, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(path, 0o640)
    return path


def validate(conf: KongConf, version: VersionInfo) -> list[str]:
    """Return configuration errors the way `kong check` lists them."""
    errors: list[str] = []
    database = conf.database
    allowed = ["postgres", "cassandra", "off"] if version.has_cassandra else ["postgres", "off"]
    if database not in allowed:
        if database == "cassandra":
            errors.append("Cassandra as a datastore for Kong is not supported in versions "
                          "3.4 and above. Please use Postgres.")
        else:
            errors.append(f"database has an invalid value: '{database}' "
                          f"({', '.join(allowed)})")
    role = conf.role
    if role not in ("traditional", "control_plane", "data_plane"):
        errors.append(f"role has an invalid value: '{role}' "
                      "(traditional, control_plane, data_plane)")
    if role == "data_plane" and database != "off":
        errors.append('only in-memory storage can be used when role = "data_plane"\n'
                      "Hint: set database = off in your kong.conf")
    if role == "control_plane" and database == "off":
        errors.append('in-memory storage can not be used when role = "control_plane"')
    for key in ("proxy_listen", "admin_listen", "status_listen", "cluster_listen"):
        try:
            conf.listeners(key)
        except KongError as exc:
            errors.append(exc.message)
    for key in ("pg_port", "pg_timeout", "db_update_frequency", "db_cache_ttl"):
        raw = conf.values.get(key, "")
        try:
            float(raw)
        except ValueError:
            errors.append(f"{key} is not a number")
    return errors


def create_prefix(prefix: str, version: VersionInfo) -> str | None:
    """The directories `prefix_handler.prepare_prefix` makes without writing the nginx
    configuration (`skip_write`): the prefix, `pids/`, `logs/` with its three log files,
    `sockets/` from 3.8. Returns Kong's `prefix directory <p> not found, trying to create
    it` when the prefix was created, else None. (Real Kong also writes `ssl/` default
    certificates and, in 3.x, `.ca_combined`: the emulator serves no TLS.)"""
    message = None
    if not os.path.exists(prefix):
        message = f"prefix directory {prefix} not found, trying to create it"
        try:
            os.makedirs(prefix)
        except OSError as exc:
            raise KongError(f"could not create prefix directory {prefix}: {exc.strerror}") from exc
    if not os.path.isdir(prefix):
        raise KongError(f"{prefix} is not a directory")
    for sub in ["pids", "logs"] + (["sockets"] if version.has_sockets_dir else []):
        os.makedirs(os.path.join(prefix, sub), exist_ok=True)
    for rel in ("logs/error.log", "logs/access.log", "logs/admin_access.log"):
        path = os.path.join(prefix, rel)
        if not os.path.exists(path):
            with open(path, "a", encoding="utf-8"):
                pass
    return message
