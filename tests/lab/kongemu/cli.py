"""The emulated `kong` command line (kong-facts 1, 2, 5, 8): `kongemu.cli.main(version, argv)`.

Mirrors `kong/cmd/init.lua`: the command's lapp usage text declares its options (plus
the universal `--v`/`--vv`), usage errors go to stderr with exit 1, uncaught errors
print `Error: <msg>` + the `--v` hint (or a traceback with `--v`/`--vv`) and exit 1.

The process commands (start stop quit restart reload health prepare drain) are
implemented by `node.py`: `node.cmd_<name>(version_info, args, log) -> int`, where
``args`` holds the parsed options under Kong's long names (conf, prefix, nginx_conf,
run_migrations, db_timeout, lock_timeout, timeout, wait, v, vv, ...).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from typing import Any, Callable

from . import conf as confmod
from . import declarative, lapp, migrations, pg, schema, versions
from .errors import Exit, KongError, UsageError
from .logutil import Log
from .versions import VersionInfo

UNIVERSAL_OPTIONS = """ --v              verbose
 --vv             debug
"""

PROCESS_COMMANDS = ("start", "stop", "quit", "restart", "reload", "health", "prepare", "drain")

# 3.x bin/kong: commands that do not get the `inject_confs` stage (which prepares the prefix).
SKIP_INJECT_COMMANDS = ("version", "roar", "check", "stop", "quit", "health", "hybrid")

# Runtime versions shown by `kong version -a`, per release line (approximate, OpenResty of that release).
_RUNTIME = [
    ((3, 6, 0), ("10026", "1025003", "LuaJIT 2.1.0-20231117")),
    ((3, 4, 0), ("10025", "1021004", "LuaJIT 2.1.0-20230410")),
    ((3, 0, 0), ("10021", "1021004", "LuaJIT 2.1.0-20220411")),
    ((0, 0, 0), ("10020", "1019009", "LuaJIT 2.1.0-beta3")),
]


def runtime_versions(info: VersionInfo) -> tuple[str, str, str]:
    for since, values in _RUNTIME:
        if info.key >= since:
            return values
    return _RUNTIME[-1][1]


# ---------------------------------------------------------------------------
# Usage texts (kong/cmd/*.lua)


def _migrations_usage(info: VersionInfo) -> str:
    status = ("\n  status                            Dump the database migration status in JSON format\n"
              if info.has_migrations_status else "")
    if info.db_timeout_default is None:
        db_timeout = (" --db-timeout     (optional number) Timeout, in seconds, for all database\n"
                      "                                    operations.\n")
    else:
        cassandra = " (including schema consensus for\n                                    Cassandra)" \
            if info.has_cassandra else ""
        db_timeout = (" --db-timeout     (default 60)      Timeout, in seconds, for all database\n"
                      f"                                    operations{cassandra}.\n")
    reset = ("Reset the database. The `reset` command erases all of the data in Kong's database and deletes "
             "all of the schemas." if info.major >= 3 else "Reset the database.")
    return f"""Usage: kong migrations COMMAND [OPTIONS]

Manage database schema migrations.

The available commands are:
  bootstrap                         Bootstrap the database and run all
                                    migrations.

  up                                Run any new migrations.

  finish                            Finish running any pending migrations after
                                    'up'.

  list                              List executed migrations.

  reset                             {reset}
{status}
Options:
 -y,--yes                           Assume "yes" to prompts and run
                                    non-interactively.

 -q,--quiet                         Suppress all output.

 -f,--force                         Run migrations even if database reports
                                    as already executed.

{db_timeout}
 --lock-timeout   (default 60)      Timeout, in seconds, for nodes waiting on
                                    the leader node to finish running
                                    migrations.

 -c,--conf        (optional string) Configuration file.

 -p,--prefix      (optional string)   Override prefix directory.

"""


_CONFIG_USAGE = """Usage: kong config COMMAND [OPTIONS]

Use declarative configuration files with Kong.

The available commands are:
  init [<file>]                       Generate an example config file to
                                      get you started. If a filename
                                      is not given, ./kong.yml is used
                                      by default.

  db_import <file>                    Import a declarative config file into
                                      the Kong database.

  db_export [<file>]                  Export the Kong database into a
                                      declarative config file. If a filename
                                      is not given, ./kong.yml is used
                                      by default.

  parse <file>                        Parse a declarative config file (check
                                      its syntax) but do not load it into Kong.

Options:
 -c,--conf        (optional string)   Configuration file.
 -p,--prefix      (optional string)   Override prefix directory.
"""


_START_USAGE_37 = """Usage: kong start [OPTIONS]

Start Kong (Nginx and other configured services) in the configured
prefix directory.

Options:
 -c,--conf                 (optional string)   Configuration file.

 -p,--prefix               (optional string)   Override prefix directory.

 --nginx-conf              (optional string)   Custom Nginx configuration template.

 --run-migrations          (optional boolean)  Run migrations before starting.

 --db-timeout              (optional number)   Timeout, in seconds, for all database
                                               operations.

 --lock-timeout            (default 60)        When --run-migrations is enabled, timeout,
                                               in seconds, for nodes waiting on the
                                               leader node to finish running migrations.

 --nginx-conf-flags        (optional string)   Flags that can be used to control
                                               how Nginx configuration templates are rendered
"""


def _start_usage(info: VersionInfo) -> str:
    if info.db_timeout_default is None:
        # 3.7+ (real 3.9.1): without --db-timeout, `kong start` keeps pg_timeout
        return _START_USAGE_37
    flags = (" --nginx-conf-flags (optional string) Flags that can be used to control\n"
             "                                      how Nginx configuration templates are rendered\n\n"
             if info.has_nginx_conf_flags else "")
    return f"""Usage: kong start [OPTIONS]

Start Kong (Nginx and other configured services) in the configured
prefix directory.

Options:
 -c,--conf        (optional string)   Configuration file.

 -p,--prefix      (optional string)   Override prefix directory.

 --nginx-conf     (optional string)   Custom Nginx configuration template.

 --run-migrations (optional boolean)  Run migrations before starting.

 --db-timeout     (default 60)        Timeout, in seconds, for all database
                                      operations.

 --lock-timeout   (default 60)        When --run-migrations is enabled, timeout,
                                      in seconds, for nodes waiting on the
                                      leader node to finish running migrations.

{flags}"""


def _restart_usage(info: VersionInfo) -> str:
    if info.db_timeout_default is None:
        return """Usage: kong restart [OPTIONS]

Restart a Kong node (and other configured services like Serf)
in the given prefix directory.

This command is equivalent to doing both 'kong stop' and
'kong start'.

Options:
 -c,--conf                 (optional string)   configuration file
 -p,--prefix               (optional string)   prefix at which Kong should be running
 --nginx-conf              (optional string)   custom Nginx configuration template
 --run-migrations          (optional boolean)  optionally run migrations on the DB
 --db-timeout              (optional number)
 --lock-timeout            (default 60)
 --nginx-conf-flags        (optional string)   flags that can be used to control
                                               how Nginx configuration templates are rendered
"""
    flags = " --nginx-conf-flags (optional string) flags that can be used to control nginx\n" \
        if info.has_nginx_conf_flags else ""
    return f"""Usage: kong restart [OPTIONS]

Restart a Kong node (and other configured services like Serf)
in the given prefix directory.

This command is equivalent to doing both 'kong stop' and
'kong start'.

Options:
 -c,--conf        (optional string)   configuration file
 -p,--prefix      (optional string)   prefix at which Kong should be running
 --nginx-conf     (optional string)   custom Nginx configuration template
 --run-migrations (optional boolean)  optionally run migrations on the DB
 --db-timeout     (default 60)
 --lock-timeout   (default 60)
{flags}"""


def _reload_usage(info: VersionInfo) -> str:
    flags = " --nginx-conf-flags (optional string) flags that can be used to control nginx\n" \
        if info.has_nginx_conf_flags else ""
    return f"""Usage: kong reload [OPTIONS]

Reload a Kong node (and start other configured services
if necessary) in given prefix directory.

This command sends a HUP signal to Nginx, which will spawn
new workers (taking configuration changes into account),
and stop the old ones when they have finished processing
current requests.

Options:
 -c,--conf        (optional string) configuration file
 -p,--prefix      (optional string) prefix Kong is running at
 --nginx-conf     (optional string) custom Nginx configuration template
{flags}"""


_STOP_USAGE = """Usage: kong stop [OPTIONS]

Stop a running Kong node (Nginx and other configured services) in given
prefix directory.

This command sends a SIGTERM signal to Nginx.

Options:
 -p,--prefix      (optional string) prefix Kong is running at
"""

_QUIT_USAGE = """Usage: kong quit [OPTIONS]

Gracefully quit a running Kong node (Nginx and other
configured services) in given prefix directory.

This command sends a SIGQUIT signal to Nginx, meaning all
requests will finish processing before shutting down.
If the timeout delay is reached, the node will be forcefully
stopped (SIGTERM).

Options:
 -p,--prefix      (optional string) prefix Kong is running at
 -t,--timeout     (default 10) timeout before forced shutdown
 -w,--wait        (default 0) wait time before initiating the shutdown
"""

_HEALTH_USAGE = """Usage: kong health [OPTIONS]

Check if the necessary services are running for this node.

Options:
 -p,--prefix      (optional string) prefix at which Kong should be running
"""

_PREPARE_USAGE = """Usage: kong prepare [OPTIONS]

Prepare the Kong prefix in the configured prefix directory. This command can
be used to start Kong from the nginx binary without using the 'kong start'
command.

Example usage:
 kong migrations up
 kong prepare -p /usr/local/kong -c kong.conf
 nginx -p /usr/local/kong -c /usr/local/kong/nginx.conf

Options:
 -c,--conf       (optional string) configuration file
 -p,--prefix     (optional string) override prefix directory
 --nginx-conf    (optional string) custom Nginx configuration template
"""

_DRAIN_USAGE = """Usage: kong drain [OPTIONS]

Make status listeners(`/status/ready`) return 503 Service Unavailable.

Options:
 -c,--conf        (optional string)   Configuration file.
 -p,--prefix      (optional string)   Override prefix directory.
"""

_VERSION_USAGE = """Usage: kong version [OPTIONS]

Print Kong's version. With the -a option, will print
the version of all underlying dependencies.

Options:
 -a,--all         get version of all dependencies
"""

_CHECK_USAGE = """Usage: kong check <conf>

Check the validity of a given Kong configuration file.

<conf> (default /etc/kong/kong.conf) configuration file
"""

_ROAR_USAGE = """Usage: kong roar

The Kong jungle roar.
"""

_HYBRID_USAGE = """Usage: kong hybrid COMMAND [OPTIONS]

Hybrid mode utilities for Kong.

The available commands are:
  gen_cert [<cert> <key>]           Generate a certificate/key pair that is suitable
                                    for use in hybrid mode deployment.
                                    Cert and key will be written to
                                    './cluster.crt' and './cluster.key' inside
                                    the current directory unless filenames are
                                    given.

Options:
 -d,--days        (optional number) Override certificate validity duration.
                                    Default: 1095 days (3 years)
"""

_VAULT_USAGE = """Usage: kong vault COMMAND [OPTIONS]

Vault utilities for Kong.

Example usage:
 TEST=hello kong vault get env/test

The available commands are:
  get <reference>  Retrieves a value for <reference>

Options:
 -c,--conf    (optional string)  configuration file
 -p,--prefix  (optional string)  override prefix directory
"""


def _usage_for(info: VersionInfo, name: str) -> str:
    table: dict[str, str | Callable[[VersionInfo], str]] = {
        "migrations": _migrations_usage, "config": _CONFIG_USAGE, "start": _start_usage,
        "restart": _restart_usage, "reload": _reload_usage, "stop": _STOP_USAGE, "quit": _QUIT_USAGE,
        "health": _HEALTH_USAGE, "prepare": _PREPARE_USAGE, "drain": _DRAIN_USAGE, "version": _VERSION_USAGE,
        "check": _CHECK_USAGE, "roar": _ROAR_USAGE, "hybrid": _HYBRID_USAGE, "vault": _VAULT_USAGE,
    }
    entry = table[name]
    return entry(info) if callable(entry) else entry


def commands(info: VersionInfo) -> list[str]:
    names = ["start", "stop", "quit", "restart", "reload", "health", "check", "prepare", "migrations",
             "version", "config", "roar", "hybrid", "vault"]
    if info.has_drain:
        names.append("drain")
    return sorted(names)


def sub_commands(info: VersionInfo, name: str) -> list[str] | None:
    if name == "migrations":
        subs = ["bootstrap", "up", "finish", "list", "reset"]
        if info.has_migrations_status:
            subs.append("status")
        return subs
    if name == "config":
        return ["init", "db_import", "db_export", "parse"]
    if name == "hybrid":
        return ["gen_cert"]
    if name == "vault":
        return ["get"]
    return None


def global_help(info: VersionInfo) -> str:
    return ("Usage: kong COMMAND [OPTIONS]\n\nThe available commands are:\n " + "\n ".join(commands(info))
            + "\n\nOptions:\n" + UNIVERSAL_OPTIONS)


# ---------------------------------------------------------------------------
# Entry point


def main(version: str, argv: list[str], log: Log | None = None) -> int:
    """Run `kong <argv>` as release ``version``; return the exit code."""
    info = versions.get(version)
    log = log or Log()
    try:
        return _dispatch(info, list(argv), log)
    except lapp.LappQuit as exc:
        log.stderr.write(exc.render())
        log.stderr.flush()
        return 1
    except UsageError as exc:
        log.stderr.write(exc.message + "\n\n" + (exc.usage or ""))
        log.stderr.flush()
        return 1
    except Exit as exc:
        return exc.code


def _dispatch(info: VersionInfo, argv: list[str], log: Log) -> int:
    help_text = global_help(info)
    if not argv:
        raise lapp.LappQuit(None, help_text)
    name = argv.pop(0)
    if name not in commands(info):
        raise lapp.LappQuit(f"No such command: {name}", help_text)
    usage = _usage_for(info, name) + UNIVERSAL_OPTIONS
    args = lapp.parse(usage, argv)
    subs = sub_commands(info, name)
    if subs is not None:
        positional = [args.pop(k) for k in sorted(k for k in args if isinstance(k, int))]
        if not positional:
            raise lapp.LappQuit(None, usage)
        sub = positional.pop(0)
        if sub not in subs:
            raise lapp.LappQuit(f"No such command for {name}: {sub}", usage)
        args["command"] = sub
        for index, value in enumerate(positional, start=1):
            args[index] = value
    deferred: str | None = None
    if info.major >= 3 and name not in SKIP_INJECT_COMMANDS:
        try:
            deferred = _inject_confs(info, args)
        except KongError as exc:
            _report_error(exc, name, args, log)
            return 1
        if deferred is not None and _isatty(log.stdout):
            log.stdout.write(deferred + "\n")
            log.stdout.flush()
            deferred = None
    if args.get("v"):
        log.set_level("verbose")
    elif args.get("vv"):
        log.set_level("debug")
    ngx_lua, nginx, lua = runtime_versions(info)
    log.verbose("Kong: %s", info.version)
    log.debug("ngx_lua: %s", ngx_lua)
    log.debug("nginx: %s", nginx)
    log.debug("Lua: %s", lua)
    try:
        return _run(info, name, args, log)
    except KongError as exc:
        _report_error(exc, name, args, log)
        return 1
    finally:
        if deferred is not None:
            log.stdout.write(deferred + "\n")
            log.stdout.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _inject_confs(info: VersionInfo, args: dict[Any, Any]) -> str | None:
    """The `inject_confs` stage of 3.x `bin/kong` (real 3.4.2, 3.9.1): before the command
    runs, it loads the configuration and prepares the prefix (directories only). Its
    `prefix directory ... not found, trying to create it` goes to that outer process's
    stdout, which is flushed when it exits: last on a pipe, first on a terminal. The
    message is returned for the caller to print at that point."""
    conf = confmod.load(info, args.get("conf"), prefix=args.get("prefix"))
    errors = confmod.validate(conf, info)
    if errors:
        raise KongError("\n".join(errors))
    return confmod.create_prefix(conf.prefix, info)


def _report_error(exc: KongError, name: str, args: dict[Any, Any], log: Log) -> None:
    if args.get("v") or args.get("vv"):
        text = (f"Error: \n/usr/local/share/lua/5.1/kong/cmd/{name}.lua:0: {exc.message}\n"
                "stack traceback:\n\t[C]: in function 'error'\n"
                f"\t/usr/local/share/lua/5.1/kong/cmd/{name}.lua: in function 'cmd_exec'\n"
                "\t/usr/local/share/lua/5.1/kong/cmd/init.lua: in function </usr/local/share/lua/5.1/kong/cmd/init.lua>\n"
                "\t[C]: in function 'xpcall'\n")
    else:
        text = f"Error: {exc.message}\n\n  Run with --v (verbose) or --vv (debug) for more details\n"
    log.stderr.write(text)
    log.stderr.flush()


def _run(info: VersionInfo, name: str, args: dict[Any, Any], log: Log) -> int:
    if name in PROCESS_COMMANDS:
        return _process_command(info, name, args, log)
    handlers: dict[str, Callable[[VersionInfo, dict[Any, Any], Log], int]] = {
        "version": cmd_version, "check": cmd_check, "migrations": cmd_migrations, "config": cmd_config,
        "roar": cmd_roar, "hybrid": cmd_hybrid, "vault": cmd_vault,
    }
    return handlers[name](info, args, log)


def _process_command(info: VersionInfo, name: str, args: dict[Any, Any], log: Log) -> int:
    try:
        node = importlib.import_module(f"{__package__}.node")
    except ImportError as exc:
        raise KongError(f"kong {name} is not available in this emulator build: {exc}") from None
    func = getattr(node, f"cmd_{name}", None)
    if func is None:
        raise KongError(f"kong {name} is not available in this emulator build")
    return int(func(info, {k: v for k, v in args.items() if isinstance(k, str)} | {"args": _positional(args)}, log))


def _positional(args: dict[Any, Any]) -> list[str]:
    return [args[k] for k in sorted(k for k in args if isinstance(k, int))]


# ---------------------------------------------------------------------------
# Commands


def load_conf(info: VersionInfo, args: dict[Any, Any], use_kong_env: bool = False) -> confmod.KongConf:
    """`assert(conf_loader(args.conf, {prefix = args.prefix}))`."""
    conf = confmod.load(info, args.get("conf"), prefix=args.get("prefix"), use_kong_env=use_kong_env)
    errors = confmod.validate(conf, info)
    if errors:
        raise KongError("\n".join(errors))
    return conf


def _prepare_prefix(info: VersionInfo, conf: confmod.KongConf, log: Log) -> None:
    """`prefix_handler.prepare_prefix(conf, nil, true)` of `kong migrations` (skip_write:
    directories and log files only): `-p /dev/null` -> `/dev/null is not a directory`; a
    missing prefix is created with `prefix directory <p> not found, trying to create it`
    (real 2.8.5; on 3.x the inject_confs stage has created it already)."""
    message = confmod.create_prefix(conf.prefix, info)
    if message is not None:
        log(message)


def cmd_version(info: VersionInfo, args: dict[Any, Any], log: Log) -> int:
    if args.get("all"):
        ngx_lua, nginx, lua = runtime_versions(info)
        log.print(f"Kong: {info.version}\nngx_lua: {ngx_lua}\nnginx: {nginx}\nLua: {lua}")
    else:
        log.print(info.version)
    return 0


def cmd_check(info: VersionInfo, args: dict[Any, Any], log: Log) -> int:
    path = args.get("conf") or "/etc/kong/kong.conf"
    try:
        conf = confmod.load(info, path)
    except KongError as exc:
        log.error(exc.message)
        return 1
    errors = confmod.validate(conf, info)
    if errors:
        for err in errors:
            log.error(err)
        return 1
    log("configuration at %s is valid", path)
    return 0


def cmd_migrations(info: VersionInfo, args: dict[Any, Any], log: Log) -> int:
    if args.get("db_timeout") is None and info.db_timeout_default is not None:
        args["db_timeout"] = info.db_timeout_default
    # `-q` is accepted but silences nothing: Kong's configuration loader turns the log back
    # on (log.enable() at its end) right after `migrations` disabled it (real 2.8.5 to 3.9.1).
    conf = load_conf(info, args)
    _prepare_prefix(info, conf, log)
    return migrations.execute(info, conf, args, log)


def cmd_roar(info: VersionInfo, args: dict[Any, Any], log: Log) -> int:
    log("Kong, Monolith destroyer.\n\n"
        "     /\\  ____\n"
        "     <> ( oo )\n"
        "     <>_| ^^ |_\n"
        "     <>   @    \\\n"
        "    /~~\\ . . _ |\n"
        "   /~~~~\\    | |\n"
        "  /~~~~~~\\/ _| |\n"
        "  |[][][]|\\/   \\\n"
        "  |[][][]|     |\n"
        "  |[][][]|_____|")
    return 0


def cmd_hybrid(info: VersionInfo, args: dict[Any, Any], log: Log) -> int:
    cert = os.path.abspath(args.get(1) or "cluster.crt")
    key = os.path.abspath(args.get(2) or "cluster.key")
    for path in (cert, key):
        if os.path.exists(path):
            raise KongError(f"{path} already exists.\nWill not overwrite it.")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise KongError("could not generate certificate: openssl not found")
    days = str(int(args.get("days") or 1095))
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes",
         "-keyout", key, "-out", cert, "-days", days, "-subj", "/CN=kong_clustering"],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KongError(f"could not generate certificate: {result.stderr.strip()}")
    os.chmod(key, 0o600)
    log("Successfully generated certificate/key pairs, they have been written to: '%s' and '%s'.", cert, key)
    return 0


def cmd_vault(info: VersionInfo, args: dict[Any, Any], log: Log) -> int:
    reference = args.get(1)
    if not reference:
        raise KongError("the 'get' command needs a <reference> argument\nkong vault get <reference>")
    ref = reference[len("{vault://"):-1] if reference.startswith("{vault://") else reference
    parts = ref.split("/", 1)
    if len(parts) != 2 or parts[0] != "env":
        raise KongError(f"vault not found ({parts[0]}) [{reference}]")
    name = parts[1].upper().replace("-", "_")
    value = os.environ.get(name)
    if value is None:
        raise KongError(f"could not get value from external vault (no value found "
                        f"(environment variable \"{name}\" not found)) [{reference}]")
    log.print(value)
    return 0


# -- kong config (kong/cmd/config.lua, kong-facts 5) ---------------------------------

DEFAULT_DECLARATIVE_FILE = "./kong.yml"

KONG_YML_TEMPLATE = """# ------------------------------------------------------------------------------
# This is an example file to get you started with using
# declarative configuration in Kong.
# ------------------------------------------------------------------------------

# Metadata fields start with an underscore (_)
# Fields that do not start with an underscore represent Kong entities and attributes

# _format_version is mandatory,
# it specifies the minimum version of Kong that supports the format

_format_version: "{fmt}"

# _transform is optional, defaulting to true.
# It specifies whether schema transformations should be applied when importing this file
# as a rule of thumb, leave this setting to true if you are importing credentials
# with plain passwords, which need to be encrypted/hashed before storing on the database.
# On the other hand, if you are reimporting a database with passwords already encrypted/hashed,
# set it to false.

_transform: true

# Each Kong entity (core entity or custom entity introduced by a plugin)
# can be listed in the top-level as an array of objects:

# services:
# - name: example-service
#   url: http://example.com
#   # Entities can store tags as metadata
#   tags:
#   - example
#   # Entities that have a foreign-key relationship can be nested:
#   routes:
#   - name: example-route
#     paths:
#     - /
#   plugins:
#   - name: key-auth
# - name: another-service
#   url: https://example.org

# routes:
# - name: another-route
#   # Relationships can also be specified between top-level entities,
#   # either by name or by id
#   service: example-service
#   hosts: ["hello.com"]

# consumers:
# - username: example-user
#   # Custom entities from plugin can also be specified
#   # If they specify a foreign-key relationshp, they can also be nested
#   keyauth_credentials:
#   - key: my-key
#   plugins:
#   - name: rate-limiting
#     _comment: "these are default values for the rate-limiting plugin"
#     config:
#       minute: 20
#       policy: local
"""


def cmd_config(info: VersionInfo, args: dict[Any, Any], log: Log) -> int:
    command = args["command"]
    if command == "init":
        path = os.path.abspath(args.get(1) or DEFAULT_DECLARATIVE_FILE)
        if os.path.exists(path):
            raise KongError(f"{path} already exists.\nWill not overwrite it.")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(KONG_YML_TEMPLATE.format(fmt=info.declarative_format))
        return 0
    log.disable()
    try:
        conf = load_conf(info, args, use_kong_env=True)
    finally:
        log.enable()
    if command == "db_import" and conf.database == "off":
        raise KongError("'kong config db_import' only works with a database.\n"
                        "When using database=off, reload your declarative configuration\n"
                        "using the /config endpoint.")
    if command == "db_export" and conf.database == "off":
        raise KongError("'kong config db_export' only works with a database.")
    enabled = migrations.loaded_plugins(info, conf)
    store: schema.EntityStore | None = None
    if conf.database != "off":
        store = schema.EntityStore(pg.connect(conf), info, enabled)
    try:
        if command == "db_export":
            return _db_export(info, store, args)
        return _parse_or_import(info, conf, store, args, log, enabled)
    finally:
        if store is not None:
            store.close()


def _db_export(info: VersionInfo, store: schema.EntityStore | None, args: dict[Any, Any]) -> int:
    path = os.path.abspath(args.get(1) or DEFAULT_DECLARATIVE_FILE)
    if os.path.exists(path):
        raise KongError(f"{path} already exists. Will not overwrite it.")
    if store is None:
        raise KongError("'kong config db_export' only works with a database.")
    try:
        entities = store.export()
    except schema.StoreError as exc:
        raise KongError(str(exc)) from None
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(declarative.export_yaml(entities, info))
    return 0


def _parse_or_import(info: VersionInfo, conf: confmod.KongConf, store: schema.EntityStore | None,
                     args: dict[Any, Any], log: Log, enabled: list[str]) -> int:
    command = args["command"]
    filename = args.get(1)
    if not filename:
        raise KongError("expected a declarative configuration file; see `kong config --help`")
    path = os.path.abspath(filename)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise KongError(f"Failed parsing:\n{path}: {exc.strerror}") from None
    try:
        entities = declarative.load_text(text, info, enabled, random_ids=command == "db_import")[0]
    except declarative.DeclarativeError as exc:
        raise KongError("Failed parsing:\n" + exc.text) from None
    if command == "parse":
        log("parse successful")
        return 0
    log("parse successful, beginning import")
    if store is None:
        raise KongError("'kong config db_import' only works with a database.")
    try:
        store.import_entities(entities)
        store.import_parameters(entities.get("parameters") or [])
    except schema.StoreError as exc:
        # the DAO error as the postgres strategy words it (real 3.4.2)
        raise KongError("Failed importing:\n[postgres] " + str(exc)) from None
    log("import successful")
    return 0


def run(version: str, argv: list[str]) -> int:
    """Convenience for tests: run and return the exit code with the process streams."""
    return main(version, argv, Log(sys.stdout, sys.stderr))
