"""`kong migrations` subcommands, flags and messages beyond the upgrade walk (kong-facts 1, 2),
on both providers (the emulator and real Kong) unless a test says why not."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from conftest import KongDb, KongRunner

BOTH = pytest.mark.parametrize("provider", ["emulated", "real"])
NOT_A_TTY = "Error: not a tty: invoke 'reset' non-interactively with the --yes flag"
HINT = "\n\n  Run with --v (verbose) or --vv (debug) for more details\n"
NEEDS_BOOTSTRAP = "Database needs bootstrapping or is older than Kong 1.0."


@BOTH
def test_tables_bootstrap_twice_and_forced(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("3.4.2", "migrations", "bootstrap", env=env).returncode == 0
    cols = kong_db.query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                         "WHERE table_name IN ('schema_meta', 'locks') ORDER BY table_name, ordinal_position")
    assert cols == [
        ("locks", "key", "text"), ("locks", "owner", "text"), ("locks", "ttl", "timestamp with time zone"),
        ("schema_meta", "key", "text"), ("schema_meta", "subsystem", "text"), ("schema_meta", "last_executed", "text"),
        ("schema_meta", "executed", "ARRAY"), ("schema_meta", "pending", "ARRAY"),
    ]
    pkey = kong_db.query("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                         "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'schema_meta'::regclass AND i.indisprimary "
                         "ORDER BY a.attname")
    assert [r[0] for r in pkey] == ["key", "subsystem"]
    assert kong_db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'locks' AND indexname = 'locks_ttl_idx'")
    res = kong("3.4.2", "migrations", "bootstrap", env=env)
    assert (res.returncode, res.out) == (0, "Database already bootstrapped")
    kong_db.query("INSERT INTO consumers (id, username, ws_id) SELECT gen_random_uuid(), 'doomed', id FROM workspaces")
    res = kong("3.4.2", "migrations", "bootstrap", "--force", env=env)
    assert res.returncode == 0, res
    lines = res.stdout.splitlines()
    assert lines[:3] == ["Resetting database...", "Database successfully reset", "Bootstrapping database..."]
    assert lines[-1] == "Database is up-to-date"
    assert kong_db.query("SELECT count(*) FROM consumers")[0][0] == 0


@BOTH
def test_up_and_finish_need_bootstrap(kong: KongRunner, kong_db: KongDb) -> None:
    for cmd in ("up", "finish"):
        res = kong("3.4.2", "migrations", cmd, env=kong_db.env)
        assert res.returncode == 1, res
        assert res.stderr.startswith("Error: Cannot run migrations: Database needs bootstrapping or is older than "
                                     "Kong 1.0.\n\nTo start a new installation from scratch, run 'kong migrations "
                                     "bootstrap'.\n"), res
        assert res.stderr.endswith(HINT)


@BOTH
def test_reset_on_a_pipe_with_yes_without_locks_and_twice(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("3.4.2", "migrations", "bootstrap", env=env).returncode == 0
    res = kong("3.4.2", "migrations", "reset", env=env, stdin="y\n")
    assert (res.returncode, res.stderr) == (1, NOT_A_TTY + HINT)
    res = kong("3.4.2", "migrations", "reset", "--yes", env=env)
    assert (res.returncode, res.stdout) == (0, "Resetting database...\nDatabase successfully reset\n")
    assert kong("3.4.2", "migrations", "list", env=env).returncode == 3
    res = kong("3.4.2", "migrations", "reset", "-y", env=env)
    assert (res.returncode, res.out, res.stderr) == (1, "Database not bootstrapped, nothing to reset", "")
    # without a locks table the lock cannot be taken: reset goes on without it
    assert kong("3.4.2", "migrations", "bootstrap", env=env).returncode == 0
    kong_db.query("DROP TABLE locks")
    res = kong("3.4.2", "migrations", "reset", "--yes", env=env)
    assert res.returncode == 0, res
    assert re.search(r"\[error\] \[PostgreSQL error\] failed to insert cluster lock: .*locks.* - retrying without "
                     r"cluster lock", res.stderr), res
    assert res.stdout == "Resetting database...\nDatabase successfully reset\n"


def _reset_on_tty(kong: KongRunner, version: str, env: dict[str, str], answer: bytes) -> tuple[int, str]:
    master, slave = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KONG_")} | env
    proc = subprocess.Popen([str(kong.path(version)), "migrations", "reset"], stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, env=full_env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    sent = False
    while time.monotonic() < deadline:
        ready = select.select([master], [], [], 0.2)[0]
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"irreversible." in out:
            os.write(master, answer)
            sent = True
        if proc.poll() is not None and not ready:
            break
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, out.decode("utf-8", "replace").replace("\r\n", "\n")


@BOTH
@pytest.mark.parametrize(("version", "choices"), [("2.8.5", "[Y/n]"), ("3.4.2", "[y/n]")])
def test_reset_prompts_on_a_tty(kong: KongRunner, kong_db: KongDb, version: str, choices: str) -> None:
    env = kong_db.env
    assert kong(version, "migrations", "bootstrap", env=env).returncode == 0
    code, out = _reset_on_tty(kong, version, env, b"n\n")
    assert code == 0
    assert f"> Are you sure? This operation is irreversible. {choices} " in out
    assert out.rstrip().endswith("cancelled")
    code, out = _reset_on_tty(kong, version, env, b"y\n")
    assert code == 0
    assert "Database successfully reset" in out
    assert kong(version, "migrations", "list", env=env).returncode == 3


@BOTH
def test_force_reruns_are_reentrant(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("3.4.2", "migrations", "bootstrap", env=env).returncode == 0
    first = kong("3.4.2", "migrations", "up", "-f", env=env)
    second = kong("3.4.2", "migrations", "up", "-f", env=env)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and first.stderr == second.stderr == ""
    assert "migrating core on database" in first.stdout
    first = kong("3.4.2", "migrations", "finish", "-f", env=env)
    second = kong("3.4.2", "migrations", "finish", "--force", env=env)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    assert "No pending migrations to finish" not in first.stdout
    assert kong("3.4.2", "migrations", "list", env=env).returncode == 0


@BOTH
def test_up_force_skips_teardown_of_still_pending_migrations(kong: KongRunner, kong_db: KongDb) -> None:
    env = kong_db.env
    assert kong("2.8.5", "migrations", "bootstrap", env=env).returncode == 0
    assert kong("3.4.2", "migrations", "up", env=env).returncode == 0
    res = kong("3.4.2", "migrations", "up", "-f", env=env)
    assert res.returncode == 0, res
    assert "core migrated up to: 016_280_to_300" not in res.stdout
    assert res.stdout.endswith("\n\nDatabase has pending migrations; run 'kong migrations finish' when ready\n")
    assert kong("3.4.2", "migrations", "list", env=env).returncode == 4


@BOTH
def test_migrations_create_the_prefix(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    """`kong migrations` prepares the prefix: 2.8 says so first; 3.x's `bin/kong` does it in an
    outer process whose stdout is flushed when it exits, so on a pipe the line comes last."""
    for version, first in (("2.8.5", True), ("3.9.1", False)):
        prefix = tmp_path / f"new-{version}"
        res = kong(version, "migrations", "list", env=dict(kong_db.env, KONG_PREFIX=str(prefix)))
        assert res.returncode == 3, res
        line = f"prefix directory {prefix} not found, trying to create it"
        lines = res.stdout.splitlines()
        assert (lines[0] if first else lines[-1]) == line, res
        assert lines.count(line) == 1
        assert NEEDS_BOOTSTRAP in res.stdout
        assert {p.name for p in prefix.iterdir()} >= {"logs", "pids"}
        assert (prefix / "logs" / "error.log").is_file()
        assert not (prefix / ".kong_env").exists() and not (prefix / "nginx.conf").exists()
        assert (prefix / "sockets").is_dir() == (version == "3.9.1")


@BOTH
def test_verbose_prefixes_every_line(kong: KongRunner, kong_db: KongDb) -> None:
    res = kong("3.4.2", "migrations", "list", "--v", env=kong_db.env)
    assert res.returncode == 3
    lines = res.stdout.splitlines()
    assert re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[verbose\] Kong: 3\.4\.2$", lines[0])
    assert any(re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[info\] Database needs bootstrapping", line)
               for line in lines), res


@BOTH
def test_database_off_reports_everything_executed(kong: KongRunner, tmp_path: Path) -> None:
    env = {"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)}
    assert kong("3.4.2", "migrations", "bootstrap", env=env).out == "Database already bootstrapped"
    assert kong("3.4.2", "migrations", "up", env=env).out == "Database is already up-to-date"
    assert kong("3.4.2", "migrations", "finish", env=env).out == "No pending migrations to finish"
    res = kong("3.4.2", "migrations", "list", env=env)
    assert res.returncode == 0 and res.stdout.startswith("Executed migrations:\n")


@BOTH
def test_unreachable_database_and_wrong_password(kong: KongRunner, kong_db: KongDb) -> None:
    res = kong("3.4.2", "migrations", "list", env=dict(kong_db.env, KONG_PG_PORT="1"))
    assert res.returncode == 1
    assert res.stderr == ("Error: [PostgreSQL error] failed to retrieve PostgreSQL server_version_num: "
                          "connection refused" + HINT)
    res = kong("3.4.2", "migrations", "list", env=dict(kong_db.env, KONG_PG_PASSWORD="not-the-password-123"))
    assert res.returncode == 1
    # pgmoon's SCRAM client reports the server's rejection as a bad server signature
    assert res.stderr == ("Error: [PostgreSQL error] failed to retrieve PostgreSQL server_version_num: "
                          "authentication exchange unsuccessful" + HINT)
    assert "not-the-password-123" not in res.stderr + res.stdout


@BOTH
def test_db_timeout_bounds_a_database_that_never_answers(kong: KongRunner, kong_db: KongDb) -> None:
    """`--db-timeout` (seconds) is pg_timeout for the command: a server that accepts the
    connection and never answers fails the command after it, with `timeout`."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nothing ever answers
        env = dict(kong_db.env, KONG_PG_PORT=str(silent.getsockname()[1]))
        started = time.monotonic()
        res = kong("3.9.1", "migrations", "list", "--db-timeout", "1", env=env)
        elapsed = time.monotonic() - started
    assert res.returncode == 1, res
    assert res.stderr == ("Error: [PostgreSQL error] failed to retrieve PostgreSQL server_version_num: "
                          "receive_message: failed to get type: timeout" + HINT), res
    assert elapsed >= 1.0


@BOTH
def test_usage_errors(kong: KongRunner, kong_db: KongDb) -> None:
    res = kong("3.4.2", "migrations", "invalid", env=kong_db.env)
    assert res.returncode == 1
    assert res.stderr.startswith("No such command for migrations: invalid\n\nUsage: kong migrations COMMAND")
    res = kong("2.8.5", "migrations", "status", env=kong_db.env)
    assert res.returncode == 1 and res.stderr.startswith("No such command for migrations: status\n\n")
    res = kong("3.4.2", "migrations", env=kong_db.env)
    assert res.returncode == 1 and res.stderr.startswith("Usage: kong migrations COMMAND [OPTIONS]")
    res = kong("3.4.2", "migrations", "list", "--bogus", env=kong_db.env)
    assert res.returncode == 1 and res.stderr.startswith("kong: unrecognized parameter: bogus\n\nUsage:")
    res = kong("3.4.2", "migrations", "list", "--db-timeout", "abc", env=kong_db.env)
    assert res.returncode == 1 and res.stderr.startswith("kong: unable to convert to number: abc")
    res = kong("3.4.2", "migrations", "--help")
    assert res.returncode == 1 and "--lock-timeout" in res.stderr and res.stdout == ""
    res = kong("3.9.1", "migrations", "list", "-p", "/dev/null", env=kong_db.env)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr.startswith("Error: /dev/null is not a directory")


def test_db_timeout_default_by_version() -> None:
    """Emulator only: how the emulator's option parser reads the 3.7 change of `--db-timeout`
    (`(default 60)` -> `(optional number)`); real Kong's usage texts are checked by
    test_usage_errors and test_conformance."""
    from kongemu import cli, lapp, versions

    old = lapp.parse(cli._migrations_usage(versions.get("3.6.1")) + cli.UNIVERSAL_OPTIONS, ["list"])
    new = lapp.parse(cli._migrations_usage(versions.get("3.9.1")) + cli.UNIVERSAL_OPTIONS, ["list"])
    assert old["db_timeout"] == 60 and old["lock_timeout"] == 60
    assert new["db_timeout"] is None
    parsed = lapp.parse(cli._migrations_usage(versions.get("3.9.1")) + cli.UNIVERSAL_OPTIONS,
                        ["up", "--db-timeout=5", "-yf", "--v"])
    assert parsed["db_timeout"] == 5 and parsed["yes"] and parsed["force"] and parsed["v"] and parsed[1] == "up"
