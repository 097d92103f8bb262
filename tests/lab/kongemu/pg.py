"""PostgreSQL connections for the emulator, with Kong's error wording (kong-facts 2.4).

Kong's postgres connector prefixes its errors with `[PostgreSQL error] ` (the
connector's `infos().strategy`). A failed connection while the CLI initialises the
connector reads `[PostgreSQL error] failed to retrieve PostgreSQL server_version_num:
<reason>`, where `<reason>` is the socket/driver error (`connection refused`,
`timeout`, `receive_message: failed to get type: timeout` when the server accepts and
never answers, `authentication exchange unsuccessful` for a wrong password, as pgmoon says it).

The password is handed to psycopg2 as a parameter, never on a command line, and is
never part of an error message.
"""

from __future__ import annotations

import math
import re
import socket

import psycopg2
import psycopg2.extensions

from .conf import KongConf
from .errors import KongError

STRATEGY = "PostgreSQL"
PREFIX = f"[{STRATEGY} error] "


class PgConnectError(KongError):
    """The connector could not connect: `[PostgreSQL error] failed to retrieve ...`."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{PREFIX}failed to retrieve PostgreSQL server_version_num: {reason}")
        self.reason = reason


def prefix_err(message: str) -> str:
    """Kong's `prefix_err`: `[PostgreSQL error] <message>`."""
    return PREFIX + message


def describe(exc: BaseException) -> str:
    """One line describing a psycopg2 error the way pgmoon/luasocket would."""
    text = str(exc).strip()
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "timeout expired" in lowered or "timed out" in lowered:
        return "timeout"
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return "host not found"
    if "no route to host" in lowered:
        return "no route to host"
    if "password authentication failed" in lowered:
        # pgmoon's SCRAM exchange reads the server's error as a bad server signature
        # (real 3.4.2 and 3.9.1 against a scram-sha-256 server)
        return "authentication exchange unsuccessful"
    match = re.search(r"(FATAL|ERROR):\s+(.*)", text)
    if match:
        return f"{match.group(1)}: {match.group(2).splitlines()[0].strip()}"
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        severity = getattr(diag, "severity", None) or "ERROR"
        return f"{severity}: {primary}"
    return text.splitlines()[0] if text else exc.__class__.__name__


def timeout_ms(conf: KongConf, override_ms: float | None = None) -> float:
    """The effective pg_timeout in milliseconds (Kong default 5000)."""
    if override_ms is not None:
        return float(override_ms)
    return conf.get_float("pg_timeout", 5000.0)


def _tcp_connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.5)):
            return True
    except OSError:
        return False


def connect(conf: KongConf, timeout: float | None = None, autocommit: bool = True,
            application_name: str = "kong") -> psycopg2.extensions.connection:
    """Open a connection from the Kong options; raise `PgConnectError` on failure.

    ``timeout`` is in milliseconds (Kong's `pg_timeout`, or the CLI `--db-timeout`
    converted); it bounds the connection attempt. The session uses UTC and, when
    `pg_schema` is set, that schema, as Kong's connector does.
    """
    ms = timeout_ms(conf, timeout)
    params: dict[str, object] = {
        "host": conf.get("pg_host", "127.0.0.1"),
        "port": conf.get_int("pg_port", 5432),
        "user": conf.get("pg_user", "kong"),
        "dbname": conf.get("pg_database", "kong"),
        "connect_timeout": max(2, math.ceil(ms / 1000.0)),
        "application_name": application_name,
    }
    password = conf.get("pg_password")
    if password:
        params["password"] = password
    if conf.get_bool("pg_ssl"):
        params["sslmode"] = "require"
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as exc:
        reason = describe(exc)
        if reason == "timeout" and _tcp_connects(str(params["host"]), int(str(params["port"])), ms / 1000.0):
            # connected, then no answer: pgmoon's read of the first message timed out (real 3.9.1)
            reason = "receive_message: failed to get type: timeout"
        raise PgConnectError(reason) from None
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            schema = (conf.get("pg_schema") or "").strip()
            if schema:
                cur.execute("SELECT set_config('search_path', %s, false)", (schema,))
        if not autocommit:
            conn.commit()
    except psycopg2.Error as exc:
        conn.close()
        raise PgConnectError(describe(exc)) from None
    return conn


def current_schema(conn: psycopg2.extensions.connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_schema()")
        row = cur.fetchone()
    return row[0] if row and row[0] else "public"


def table_exists(conn: psycopg2.extensions.connection, name: str) -> bool:
    """Kong's check: is `name` in information_schema.tables for CURRENT_SCHEMA."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = %s",
            (name,),
        )
        return cur.fetchone() is not None
