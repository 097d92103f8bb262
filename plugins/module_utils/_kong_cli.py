# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one node's `kong` CLI the way an operator would (kong-facts 1, 2, 8).

Private to the collection. Secrets go to the process environment, never the argv.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time

from ansible.module_utils.basic import env_fallback

from ansible_collections.kongops.upgrade.plugins.module_utils._version_rules import KongVersion, VersionError

KONG_NODE_ARGSPEC = dict(
    kong_executable=dict(type="path", default="kong"),
    conf=dict(type="path"),
    prefix=dict(type="path"),
    environment=dict(type="dict", default={}),
    pg_password=dict(type="str", no_log=True, fallback=(env_fallback, ["KONG_PG_PASSWORD"])),
    db_timeout=dict(type="int"),
    lock_timeout=dict(type="int", default=60),
)

SECRET_ENV = ("KONG_PG_PASSWORD", "KONG_PG_RO_PASSWORD")
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "_KEY", "CREDENTIAL")


def is_secret_setting(name):
    """Whether a Kong setting (``pg_password``, ``KONG_PG_PASSWORD``, ...) holds a secret."""
    name = str(name).upper()
    return name in SECRET_ENV or any(word in name for word in _SECRET_WORDS)


class KongCliError(Exception):
    """The CLI could not be run or said something we cannot go on from."""


class CommandResult:
    """One finished CLI call, safe to return to the user (no secrets in argv)."""

    def __init__(self, argv, rc, stdout, stderr):
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    @property
    def error_line(self):
        """Kong's `Error: ...` line on stderr, or the last stderr line."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        for line in lines:
            if line.startswith("Error:"):
                return line
        return lines[-1] if lines else ""

    def as_dict(self):
        return {
            "cmd": " ".join(self.argv),
            "rc": self.rc,
            "stdout_lines": self.stdout.splitlines(),
            "stderr_lines": self.stderr.splitlines(),
        }


class KongCli:
    """A `kong` executable with one node's configuration, prefix and environment."""

    def __init__(self, module, kong_executable="kong", conf=None, prefix=None, environment=None,
                 pg_password=None, db_timeout=None, lock_timeout=None):
        self.module = module
        self.executable = kong_executable
        self.conf = conf
        self.prefix = prefix
        self.db_timeout = db_timeout
        self.lock_timeout = lock_timeout
        self.environment = {}
        for key, value in (environment or {}).items():
            name = str(key).upper()
            if not name.startswith("KONG_"):
                name = "KONG_" + name
            self.environment[name] = "" if value is None else str(value)
        if pg_password:
            self.environment["KONG_PG_PASSWORD"] = pg_password

    @classmethod
    def from_params(cls, module):
        params = module.params
        # `environment` is a plain dict option: mask the secrets in it (pg_password, ...) wherever
        # Ansible shows the module's arguments, as it does for no_log options.
        for key, value in (params.get("environment") or {}).items():
            if value is not None and str(value) and is_secret_setting(key):
                module.no_log_values.add(str(value))
        return cls(module, params["kong_executable"], params.get("conf"), params.get("prefix"),
                   params.get("environment"), params.get("pg_password"), params.get("db_timeout"),
                   params.get("lock_timeout"))

    def resolve_executable(self):
        path = self.executable
        if os.sep not in path:
            found = self.module.get_bin_path(path)
            if not found:
                raise KongCliError(
                    "kong executable '%s' not found in PATH; set kong_executable to the path of "
                    "the Kong binary of the version to run" % path)
            return found
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise KongCliError("kong executable %s does not exist or is not executable; set "
                               "kong_executable to the Kong binary of the version to run" % path)
        return path

    def check_inputs(self):
        """Fail before running anything when a path the CLI needs is missing."""
        self.resolve_executable()
        if self.conf and not os.path.isfile(self.conf):
            raise KongCliError("kong.conf %s does not exist; set conf to the node's configuration file" % self.conf)

    def argv(self, args, with_conf=True, with_prefix=True, db_options=False):
        argv = [self.resolve_executable()] + list(args)
        if with_conf and self.conf:
            argv += ["-c", self.conf]
        if with_prefix and self.prefix:
            argv += ["-p", self.prefix]
        if db_options:
            if self.db_timeout is not None:
                argv += ["--db-timeout", str(self.db_timeout)]
            if self.lock_timeout is not None:
                argv += ["--lock-timeout", str(self.lock_timeout)]
        return argv

    def run(self, args, **argv_options):
        argv = self.argv(args, **argv_options)
        # Kong reads every KONG_* variable of its environment as a setting and writes them all to
        # <prefix>/.kong_env. The module's own environment is the caller's (with a local
        # connection, the controller's: KONG_ADMIN_TOKEN, KONG_PG_PASSWORD, ...), so those are
        # not passed on: the CLI gets the node's kong.conf and the settings given to the module.
        inherited = {name: os.environ.pop(name) for name in list(os.environ)
                     if name.upper().startswith("KONG_") and name not in self.environment}
        try:
            rc, out, err = self.module.run_command(argv, environ_update=self.environment, check_rc=False)
        finally:
            os.environ.update(inherited)
        return CommandResult(argv, rc, out or "", err or "")

    def version(self):
        result = self.run(["version"], with_conf=False, with_prefix=False)
        if result.rc != 0:
            raise KongCliError("`%s` failed (rc=%s): %s" % (" ".join(result.argv), result.rc, result.error_line))
        try:
            return KongVersion.parse(result.stdout.strip().splitlines()[-1])
        except (VersionError, IndexError) as exc:
            raise KongCliError("could not read the Kong version from `kong version`: %s" % exc) from exc


def read_conf_file(path):
    """`key = value` settings of a kong.conf (comments stripped, as Kong's loader does)."""
    values = {}
    if not path or not os.path.isfile(path):
        return values
    with open(path) as handle:
        for raw in handle:
            line = re.sub(r"(?<!\\)#.*$", "", raw).strip()
            if "=" not in line:
                continue
            key, value = line.split("=", 1)
            values[key.strip().lower()] = value.strip().replace("\\#", "#")
    return values


def error_log_path(settings, prefix):
    """The file nginx's master and workers log errors to (``proxy_error_log``, relative to the prefix), or
    None when it is not a file (``off``, ``syslog:``, ``/dev/stderr``)."""
    value = (settings.get("proxy_error_log") or "logs/error.log").strip()
    if value in ("off", "") or value.startswith("syslog:") or value.startswith("/dev/"):
        return None
    if not os.path.isabs(value):
        if not prefix:
            return None
        value = os.path.join(prefix, value)
    return value


_LOG_LEVEL = re.compile(r"\[(emerg|alert|crit|error)\]")
# nginx's master gives up on a worker that exits with code 2 (it failed to initialise: chdir, setuid, a
# module's init): no worker will ever serve.
_FATAL = re.compile(r"exited with fatal code|cannot be respawned|\[emerg\]")


def error_log_problems(text, limit=4):
    """(the most telling error-log lines, whether one of them is fatal) from error-log text: the last
    [emerg]/[alert]/[crit] lines, else the last [error] lines, each without its timestamp and pid prefix."""
    serious, errors = [], []
    for line in text.splitlines():
        match = _LOG_LEVEL.search(line)
        if not match:
            continue
        short = line[match.start():].strip()
        (errors if match.group(1) == "error" else serious).append(short)
    chosen = serious[-limit:] if serious else errors[-limit:]
    return chosen, any(_FATAL.search(line) for line in serious)


def database_settings(cli):
    """The node's effective pg_* settings: kong.conf, then KONG_* variables, then the module's environment."""
    values = read_conf_file(cli.conf)
    for name, value in os.environ.items():
        if name.startswith("KONG_PG_"):
            values[name[5:].lower()] = value
    for name, value in cli.environment.items():
        if name.startswith("KONG_PG_"):
            values[name[5:].lower()] = value
    return {
        "host": values.get("pg_host", "127.0.0.1"),
        "port": int(values.get("pg_port", "5432") or 5432),
        "user": values.get("pg_user", "kong"),
        "password": values.get("pg_password"),
        "database": values.get("pg_database", "kong"),
        "database_kind": values.get("database", "postgres"),
    }


def proxy_endpoints(prefix):
    """The (host, port) pairs a running node's proxy listens on, from ``<prefix>/.kong_env`` (what
    `kong start` resolved): a wildcard address is reached on the loopback of the same family."""
    listen = read_conf_file(os.path.join(prefix, ".kong_env") if prefix else None).get("proxy_listen", "")
    endpoints = []
    for entry in listen.split(","):
        words = entry.split()
        if not words or words[0] == "off":
            continue
        match = re.match(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s]+)):(?P<port>\d+)$", words[0])
        if not match:
            continue
        host = match.group("v6") or match.group("host")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}.get(host, host)
        endpoints.append((host, int(match.group("port"))))
    return endpoints


class ListenWatch:
    """Watches, in a thread, the moment a node's proxy stops accepting connections: `kong quit`
    closes nginx's listening sockets when its signal arrives, long before the command returns, and
    that moment (not the launch of the command) is when clients lose the node. ``stopped_at`` is
    the epoch of the first poll that found every endpoint refusing, or None (never seen, or nothing
    to watch)."""

    def __init__(self, endpoints, interval=0.05):
        self.endpoints = list(endpoints)
        self.interval = interval
        self.stopped_at = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _accepts(host, port):
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except ConnectionRefusedError:
            return False
        except OSError:
            # Unreachable or timing out is not "refused": keep watching (a busy node is still up).
            return True

    def _run(self):
        while not self._done.is_set():
            now = time.time()
            if not any(self._accepts(host, port) for host, port in self.endpoints):
                self.stopped_at = now
                return
            self._done.wait(self.interval)

    def __enter__(self):
        if self.endpoints:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(2)
        return False
