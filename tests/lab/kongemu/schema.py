"""The emulator's entity tables in PostgreSQL, expand/contract per migration, and the
EntityStore (CRUD for the Admin API, config loading for the router, import/export).

Tables
------
`core 000_base` creates every table Kong-like: workspaces (with the `default`
workspace), services, routes, consumers, plugins (config JSONB), keyauth_credentials,
upstreams, targets, and the tables a serving Kong writes: cluster_events,
clustering_data_planes, ratelimiting_metrics, response_ratelimiting_metrics,
sessions, oauth2_tokens, acme_storage, parameters (with `cluster_id`). Every entity
row carries `ws_id`; timestamps are TIMESTAMPTZ and the API shows epoch seconds.

Expand and contract (kong-facts 4.1, corrected against real Kong)
-----------------------------------------------------------------
Migrations change *data*, as Kong's do, not the shape every read depends on: after a
newer `finish` an older release keeps reading and writing (real 2.8.5 after 3.4.2's
finish, real 3.4.2 after 3.9.1's), and only the objects a migration rewrote break, when
the older release reads them again. The emulated data steps (``migration_steps``) are
those of Kong's migration modules:

* core `016_280_to_300` up: regex route paths become `~<path>` (migrate_path_280_300);
* http-log `001_280_to_300` teardown: header value arrays become `", "`-joined strings;
* pre-/post-function `001_280_to_300` up copies `functions` to `access`, teardown drops
  `functions`;
* rate-limiting `006_350_to_360` and response-ratelimiting `001_350_to_360` up add
  `redis` from the `redis_*` fields, teardown removes the `redis_*` fields; acme
  `003_350_to_360` the same for `storage_config.redis`; in 3.6.x (no teardown yet) the
  up does both at once;
* opentelemetry `001_331_to_332` teardown: `queue.max_batch_size` 1 becomes 200;
  ai-proxy `001_360_to_370` teardown: anthropic completions stop logging statistics.

Every other migration only records itself (the emulator's tables are the same for every
release). How older releases then trip over rewritten objects is in entities.py
(validation) and proxy.py (plugins).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from .entities import (  # noqa: F401  (re-exported: schema.SchemaViolation etc., ARCHITECTURE.md)
    ALL_SPECS,
    CONFIG_ENTITIES,
    SPECS,
    DatabaseError,
    EntitySpec,
    Field,
    ForeignKeyViolation,
    IncompatibleSchema,
    InvalidOffset,
    InvalidOptions,
    InvalidSize,
    NotFound,
    PrimaryKeyViolation,
    SchemaViolation,
    StoreError,
    UniqueViolation,
    cache_key,
    cache_key_fields,
    is_uuid,
    now_epoch,
    to_export,
    validate,
)
from .pg import describe, prefix_err
from .versions import Migration, VersionInfo

psycopg2.extras.register_uuid()

DEFAULT_WORKSPACE = "default"
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
CLUSTER_EVENTS_TTL = 3600  # seconds an invalidation event is kept

# ---------------------------------------------------------------------------
# DDL of core 000_base


def base_ddl() -> list[str]:
    """The statements of `core 000_base` up: every table."""
    return [
        """CREATE TABLE IF NOT EXISTS workspaces (
  id UUID PRIMARY KEY, name TEXT NOT NULL, comment TEXT,
  created_at TIMESTAMPTZ DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  updated_at TIMESTAMPTZ DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  meta JSONB, config JSONB,
  CONSTRAINT workspaces_name_key UNIQUE (name))""",
        "INSERT INTO workspaces (id, name) VALUES (gen_random_uuid(), 'default') ON CONFLICT (name) DO NOTHING",
        """CREATE TABLE IF NOT EXISTS services (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
  name TEXT, retries BIGINT, protocol TEXT, host TEXT, port BIGINT, path TEXT,
  connect_timeout BIGINT, write_timeout BIGINT, read_timeout BIGINT, tags TEXT[],
  client_certificate JSONB, tls_verify BOOLEAN, tls_verify_depth SMALLINT, ca_certificates TEXT[],
  enabled BOOLEAN DEFAULT TRUE,
  ws_id UUID NOT NULL REFERENCES workspaces (id),
  CONSTRAINT services_ws_id_name_unique UNIQUE (ws_id, name))""",
        """CREATE TABLE IF NOT EXISTS routes (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
  name TEXT, service_id UUID REFERENCES services (id),
  protocols TEXT[], methods TEXT[], hosts TEXT[], paths TEXT[], headers JSONB, snis TEXT[],
  sources JSONB, destinations JSONB,
  https_redirect_status_code INTEGER, regex_priority BIGINT, strip_path BOOLEAN, path_handling TEXT,
  preserve_host BOOLEAN, request_buffering BOOLEAN, response_buffering BOOLEAN, tags TEXT[],
  ws_id UUID NOT NULL REFERENCES workspaces (id),
  CONSTRAINT routes_ws_id_name_unique UNIQUE (ws_id, name))""",
        "CREATE INDEX IF NOT EXISTS routes_service_id_idx ON routes (service_id)",
        """CREATE TABLE IF NOT EXISTS consumers (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
  username TEXT, custom_id TEXT, tags TEXT[],
  ws_id UUID NOT NULL REFERENCES workspaces (id),
  CONSTRAINT consumers_ws_id_username_unique UNIQUE (ws_id, username),
  CONSTRAINT consumers_ws_id_custom_id_unique UNIQUE (ws_id, custom_id))""",
        """CREATE TABLE IF NOT EXISTS plugins (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
  name TEXT NOT NULL, instance_name TEXT,
  consumer_id UUID REFERENCES consumers (id) ON DELETE CASCADE,
  service_id UUID REFERENCES services (id) ON DELETE CASCADE,
  route_id UUID REFERENCES routes (id) ON DELETE CASCADE,
  config JSONB NOT NULL, enabled BOOLEAN NOT NULL, protocols TEXT[], tags TEXT[], cache_key TEXT,
  ws_id UUID NOT NULL REFERENCES workspaces (id),
  CONSTRAINT plugins_cache_key_key UNIQUE (cache_key),
  CONSTRAINT plugins_ws_id_instance_name_unique UNIQUE (ws_id, instance_name))""",
        "CREATE INDEX IF NOT EXISTS plugins_name_idx ON plugins (name)",
        """CREATE TABLE IF NOT EXISTS keyauth_credentials (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ,
  consumer_id UUID REFERENCES consumers (id) ON DELETE CASCADE,
  key TEXT, tags TEXT[], ttl TIMESTAMPTZ,
  ws_id UUID NOT NULL REFERENCES workspaces (id),
  CONSTRAINT keyauth_credentials_ws_id_key_unique UNIQUE (ws_id, key))""",
        "CREATE INDEX IF NOT EXISTS keyauth_credentials_consumer_id_idx ON keyauth_credentials (consumer_id)",
        """CREATE TABLE IF NOT EXISTS upstreams (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
  name TEXT, algorithm TEXT, hash_on TEXT, hash_fallback TEXT, hash_on_header TEXT,
  hash_fallback_header TEXT, hash_on_cookie TEXT, hash_on_cookie_path TEXT, hash_on_query_arg TEXT,
  hash_fallback_query_arg TEXT, hash_on_uri_capture TEXT, hash_fallback_uri_capture TEXT,
  slots INTEGER NOT NULL, healthchecks JSONB, tags TEXT[], host_header TEXT, client_certificate JSONB,
  use_srv_name BOOLEAN DEFAULT FALSE,
  ws_id UUID NOT NULL REFERENCES workspaces (id),
  CONSTRAINT upstreams_ws_id_name_unique UNIQUE (ws_id, name))""",
        """CREATE TABLE IF NOT EXISTS targets (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
  upstream_id UUID REFERENCES upstreams (id) ON DELETE CASCADE,
  target TEXT NOT NULL, weight INTEGER NOT NULL, tags TEXT[], cache_key TEXT,
  ws_id UUID NOT NULL REFERENCES workspaces (id),
  CONSTRAINT targets_cache_key_key UNIQUE (cache_key))""",
        "CREATE INDEX IF NOT EXISTS targets_upstream_id_idx ON targets (upstream_id)",
        """CREATE TABLE IF NOT EXISTS cluster_events (
  id UUID PRIMARY KEY, node_id UUID NOT NULL, at TIMESTAMPTZ NOT NULL, nbf TIMESTAMPTZ,
  expire_at TIMESTAMPTZ NOT NULL, channel TEXT, data TEXT)""",
        "CREATE INDEX IF NOT EXISTS idx_cluster_events_at ON cluster_events (at)",
        "CREATE INDEX IF NOT EXISTS idx_cluster_events_channel ON cluster_events (channel)",
        "CREATE INDEX IF NOT EXISTS cluster_events_expire_at_idx ON cluster_events (expire_at)",
        """CREATE TABLE IF NOT EXISTS clustering_data_planes (
  id UUID PRIMARY KEY, hostname TEXT NOT NULL, ip TEXT NOT NULL,
  last_seen TIMESTAMPTZ DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  config_hash TEXT NOT NULL, ttl TIMESTAMPTZ, version TEXT, sync_status TEXT NOT NULL DEFAULT 'unknown',
  updated_at TIMESTAMPTZ DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  labels JSONB, cert_details JSONB, rpc_capabilities TEXT[])""",
        "CREATE INDEX IF NOT EXISTS clustering_data_planes_ttl_idx ON clustering_data_planes (ttl)",
        """CREATE TABLE IF NOT EXISTS ratelimiting_metrics (
  identifier TEXT NOT NULL, period TEXT NOT NULL, period_date TIMESTAMPTZ NOT NULL,
  service_id UUID NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'::uuid,
  route_id UUID NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'::uuid,
  value INTEGER, ttl TIMESTAMPTZ,
  PRIMARY KEY (identifier, period, period_date, service_id, route_id))""",
        """CREATE TABLE IF NOT EXISTS response_ratelimiting_metrics (
  identifier TEXT NOT NULL, period TEXT NOT NULL, period_date TIMESTAMPTZ NOT NULL,
  service_id UUID NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'::uuid,
  route_id UUID NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'::uuid,
  value INTEGER,
  PRIMARY KEY (identifier, period, period_date, service_id, route_id))""",
        """CREATE TABLE IF NOT EXISTS sessions (
  id UUID PRIMARY KEY, session_id TEXT UNIQUE, expires INTEGER, data TEXT,
  created_at TIMESTAMPTZ, ttl TIMESTAMPTZ)""",
        """CREATE TABLE IF NOT EXISTS oauth2_tokens (
  id UUID PRIMARY KEY, created_at TIMESTAMPTZ, credential_id UUID, service_id UUID,
  access_token TEXT UNIQUE, refresh_token TEXT UNIQUE, token_type TEXT, expires_in INTEGER,
  authenticated_userid TEXT, scope TEXT, ttl TIMESTAMPTZ, ws_id UUID REFERENCES workspaces (id))""",
        """CREATE TABLE IF NOT EXISTS acme_storage (
  id UUID PRIMARY KEY, key TEXT UNIQUE, value TEXT, created_at TIMESTAMPTZ, ttl TIMESTAMPTZ)""",
        """CREATE TABLE IF NOT EXISTS parameters (
  key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at TIMESTAMPTZ)""",
        "INSERT INTO parameters (key, value, created_at) VALUES ('cluster_id', gen_random_uuid()::text, "
        "CURRENT_TIMESTAMP(0)) ON CONFLICT (key) DO NOTHING",
    ]


Step = Callable[[Any], None]  # runs on a psycopg2 cursor inside the migration's transaction


def _is_not_regex(path: str) -> bool:
    return re.fullmatch(r"[a-zA-Z0-9.\-_~/%]*", path) is not None


_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_RESERVED = set(b"!#$%&'()*+,/:;=?@[]")
_REGEX_META = {ord("."): rb"\.", ord("^"): rb"\^", ord("-"): rb"\-", ord("{"): rb"\{", ord("}"): rb"\}",
               ord("\\"): rb"\\", ord("|"): rb"\|"}


def migrate_path_280_300(path: str) -> str:
    """kong/db/migrations/migrate_path_280_300.lua: a 2.x regex path becomes `~<regex>`
    (percent-encoded characters decoded one last time, byte by byte: reserved ones stay
    encoded, regex metacharacters are escaped). Prefix paths are kept as they are (Kong
    also normalizes their percent-encoding)."""
    if _is_not_regex(path):
        return path

    def decode(match: re.Match[bytes]) -> bytes:
        num = int(match.group(1), 16)
        if num in _RESERVED:
            return match.group(0).upper()
        return _REGEX_META.get(num, bytes([num]))

    raw = path.encode()
    if b"%" in raw:
        raw = _PCT.sub(decode, raw)
    return "~" + raw.decode("utf-8", "surrogateescape")


def _fixup_plugin_config(name: str, fix: Callable[[dict[str, Any]], bool]) -> Step:
    """operations.fixup_plugin_config: rewrite the config of every plugin called ``name``."""
    def step(cur: Any) -> None:
        cur.execute("SELECT id, config FROM plugins WHERE name = %s", (name,))
        for plugin_id, config in cur.fetchall():
            if isinstance(config, dict) and fix(config):
                cur.execute("UPDATE plugins SET config = %s WHERE id = %s", (json.dumps(config), plugin_id))
    return step


def _migrate_regex_paths(cur: Any) -> None:
    cur.execute("SELECT id, paths FROM routes WHERE paths IS NOT NULL")
    for route_id, paths in cur.fetchall():
        migrated = [migrate_path_280_300(p) for p in paths]
        if migrated != paths:
            cur.execute("UPDATE routes SET paths = %s WHERE id = %s", (migrated, route_id))


def _functions_to_access(config: dict[str, Any]) -> bool:
    if config.get("functions"):
        config["access"] = config["functions"]
        return True
    return False


def _drop_functions(config: dict[str, Any]) -> bool:
    if config.get("functions"):
        del config["functions"]
        return True
    return False


def _join_http_log_headers(config: dict[str, Any]) -> bool:
    headers = config.get("headers")
    if not isinstance(headers, dict):
        return False
    updated = False
    for key, value in list(headers.items()):
        if isinstance(value, list) or value == {}:  # `{}`: an empty array as cjson stored it
            if value:
                headers[key] = ", ".join(str(v) for v in value)
            else:
                del headers[key]
            updated = True
    if updated and not headers:
        config["headers"] = None
    return updated


_REDIS_FIELDS = ("host", "port", "password", "username", "ssl", "ssl_verify", "server_name", "timeout", "database")


def _redis_up(config: dict[str, Any]) -> bool:
    current = config.get("redis") if isinstance(config.get("redis"), dict) else {}
    config["redis"] = {f: config.get(f"redis_{f}", current.get(f)) for f in _REDIS_FIELDS}
    return True


def _redis_teardown(config: dict[str, Any]) -> bool:
    for f in _REDIS_FIELDS:
        config.pop(f"redis_{f}", None)
    return True


def _acme_redis(config: dict[str, Any]) -> dict[str, Any] | None:
    storage = config.get("storage_config")
    redis = storage.get("redis") if isinstance(storage, dict) else None
    return redis if isinstance(redis, dict) else None


def _acme_up(config: dict[str, Any]) -> bool:
    redis = _acme_redis(config)
    if redis is None:
        return False
    extra = redis.get("extra_options") if isinstance(redis.get("extra_options"), dict) else {}
    redis["password"] = redis.get("auth", redis.get("password"))
    redis["server_name"] = redis.get("ssl_server_name", redis.get("server_name"))
    redis["extra_options"] = {"scan_count": redis.get("scan_count", extra.get("scan_count")),
                              "namespace": redis.get("namespace", extra.get("namespace"))}
    return True


def _acme_teardown(config: dict[str, Any]) -> bool:
    redis = _acme_redis(config)
    if redis is None:
        return False
    for key in ("auth", "ssl_server_name", "scan_count", "namespace"):
        redis.pop(key, None)
    return True


def _otel_batch_size(config: dict[str, Any]) -> bool:
    queue = config.get("queue")
    if isinstance(queue, dict) and queue.get("max_batch_size") == 1:
        queue["max_batch_size"] = 200
        return True
    return False


def _ai_proxy_statistics(config: dict[str, Any]) -> bool:
    logging = config.get("logging") if isinstance(config.get("logging"), dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if logging.get("log_statistics") and config.get("route_type") == "llm/v1/completions" \
            and model.get("provider") == "anthropic":
        logging["log_statistics"] = False
        return True
    return False


# (subsystem, migration) -> (up steps, teardown steps). Teardown steps of a release that
# ships the migration without a teardown run in its up (the 3.6.x plugin migrations).
_DATA_STEPS: dict[tuple[str, str], tuple[list[Step], list[Step]]] = {
    ("core", "016_280_to_300"): ([_migrate_regex_paths], []),
    ("http-log", "001_280_to_300"): ([], [_fixup_plugin_config("http-log", _join_http_log_headers)]),
    ("pre-function", "001_280_to_300"): ([_fixup_plugin_config("pre-function", _functions_to_access)],
                                         [_fixup_plugin_config("pre-function", _drop_functions)]),
    ("post-function", "001_280_to_300"): ([_fixup_plugin_config("post-function", _functions_to_access)],
                                          [_fixup_plugin_config("post-function", _drop_functions)]),
    ("rate-limiting", "006_350_to_360"): ([_fixup_plugin_config("rate-limiting", _redis_up)],
                                          [_fixup_plugin_config("rate-limiting", _redis_teardown)]),
    ("response-ratelimiting", "001_350_to_360"): (
        [_fixup_plugin_config("response-ratelimiting", _redis_up)],
        [_fixup_plugin_config("response-ratelimiting", _redis_teardown)]),
    ("acme", "003_350_to_360"): ([_fixup_plugin_config("acme", _acme_up)],
                                 [_fixup_plugin_config("acme", _acme_teardown)]),
    ("opentelemetry", "001_331_to_332"): ([], [_fixup_plugin_config("opentelemetry", _otel_batch_size)]),
    ("ai-proxy", "001_360_to_370"): ([], [_fixup_plugin_config("ai-proxy", _ai_proxy_statistics)]),
}


def migration_steps(subsystem: str, migration: Migration, phase: str) -> list[str | Step]:
    """What a migration's ``phase`` ("up" or "teardown") runs, as the running release ships
    it: SQL strings and steps on a cursor."""
    if (subsystem, migration.name) == ("core", "000_base"):
        return list(base_ddl()) if phase == "up" else []
    up, teardown = _DATA_STEPS.get((subsystem, migration.name), ([], []))
    if phase == "up":
        return [*up, *([] if migration.teardown else teardown)]
    return list(teardown) if migration.teardown else []


# ---------------------------------------------------------------------------
# Config (what the router and plugins iterator are built from)


@dataclass
class Config:
    services: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    plugins: list[dict[str, Any]] = field(default_factory=list)
    keyauth_credentials: list[dict[str, Any]] = field(default_factory=list)
    upstreams: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {name: getattr(self, name) for name in CONFIG_ENTITIES}

    def count(self) -> int:
        return sum(len(v) for v in self.as_dict().values())


@dataclass
class Page:
    data: list[dict[str, Any]]
    offset: str | None


# ---------------------------------------------------------------------------
# Pagination helpers shared with the DB-less store

def parse_size(size: Any) -> int:
    if size is None or size == "":
        return DEFAULT_PAGE_SIZE
    try:
        number = int(str(size))
    except ValueError:
        raise InvalidSize("size must be a number") from None
    if not 1 <= number <= MAX_PAGE_SIZE:
        raise InvalidSize(f"size must be an integer between 1 and {MAX_PAGE_SIZE}")
    return number


def encode_offset(last_id: str) -> str:
    """`ngx.encode_base64(cjson.encode({id}), true)`: base64 without padding."""
    return base64.b64encode(json.dumps([last_id], separators=(",", ":")).encode()).decode().rstrip("=")


def decode_offset(offset: str) -> str:
    try:
        raw = base64.b64decode((offset + "=" * (-len(offset) % 4)).encode(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOffset(offset, "bad base64 encoding") from None
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidOffset(offset, "bad json encoding") from None
    if not isinstance(value, list) or len(value) != 1 or not is_uuid(value[0]):
        raise InvalidOffset(offset, "invalid offset")
    return value[0]


def parse_tags(tags: str | None) -> tuple[list[str], str]:
    """`a,b` means all of (AND), `a/b` any of (OR); mixing is invalid (Kong's filter)."""
    if not tags:
        return [], "and"
    if "," in tags and "/" in tags:
        raise InvalidOptions({"tags": "invalid filter syntax"})
    if "/" in tags:
        return [t for t in tags.split("/") if t], "or"
    return [t for t in tags.split(",") if t], "and"


def matches_tags(entity_tags: list[str] | None, tags: list[str], mode: str) -> bool:
    if not tags:
        return True
    have = set(entity_tags or [])
    return all(t in have for t in tags) if mode == "and" else any(t in have for t in tags)


# ---------------------------------------------------------------------------
# Row <-> entity conversion

def _epoch(value: Any, precise: bool = False) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        ts = value.timestamp()
        return round(ts, 3) if precise else int(ts)
    return value


def _select_list(spec: EntitySpec) -> list[str]:
    return [fld.column for fld in spec.fields if fld.name != "ttl"] + (
        ["ttl"] if spec.get_field("ttl") else [])


def row_to_entity(spec: EntitySpec, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fld in spec.fields:
        value = row.get(fld.column)
        if fld.kind == "foreign":
            out[fld.name] = {"id": str(value)} if value is not None else None
        elif fld.kind == "uuid":
            out[fld.name] = str(value) if value is not None else None
        elif fld.kind == "timestamp":
            out[fld.name] = _epoch(value, spec.precise_created_at and fld.name == "created_at")
        elif fld.name == "ttl":
            out[fld.name] = None if value is None else max(0, int(value.timestamp() - now_epoch()))
        else:
            out[fld.name] = value
    return out


def cjson_empty_tables(value: Any) -> Any:
    """cjson writes an empty Lua table as `{}`: empty arrays in a plugin's config are
    stored as empty JSON objects (real 2.8.5 and 3.4.2 rows)."""
    if isinstance(value, dict):
        return {k: cjson_empty_tables(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cjson_empty_tables(v) for v in value] if value else {}
    return value


def _write_value(fld: Field, value: Any) -> Any:
    if value is None:
        return None
    if fld.kind == "foreign":
        return value["id"] if isinstance(value, dict) else value
    if fld.name == "config" and isinstance(value, dict):
        return psycopg2.extras.Json(cjson_empty_tables(value))
    if fld.kind in ("record", "map") or fld.name in ("sources", "destinations"):
        return psycopg2.extras.Json(value)
    return value


def _placeholder(fld: Field) -> str:
    if fld.kind == "timestamp":
        return "to_timestamp(%s)"
    if fld.name == "ttl":
        return "CASE WHEN %s::bigint IS NULL THEN NULL ELSE now() + make_interval(secs => %s::bigint) END"
    return "%s"


def _constraint_field(constraint: str) -> str | None:
    for suffix, name in (("_name_unique", "name"), ("_username_unique", "username"),
                         ("_custom_id_unique", "custom_id"), ("_key_unique", "key"),
                         ("_instance_name_unique", "instance_name"), ("cache_key_key", "@cache_key"),
                         ("_pkey", "id")):
        if constraint.endswith(suffix):
            return name
    return None


# ---------------------------------------------------------------------------
# The store


class EntityStore:
    """CRUD and config loading on one psycopg2 connection, as release ``info`` does.

    Not thread-safe: use one store (one connection) per thread.
    """

    def __init__(self, conn: psycopg2.extensions.connection, version_info: VersionInfo,
                 enabled_plugins: Iterable[str] | None = None) -> None:
        self.conn = conn
        self.conn.autocommit = True
        self.info = version_info
        self.enabled_plugins = list(enabled_plugins) if enabled_plugins is not None else \
            list(version_info.bundled_plugins)
        self._ws_id: str | None = None
        self._lock = threading.Lock()

    # -- low level -------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _cursor(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        try:
            with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        except (psycopg2.errors.UndefinedColumn, psycopg2.errors.UndefinedTable) as exc:
            raise IncompatibleSchema(prefix_err(describe(exc))) from exc
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.ForeignKeyViolation):
            raise
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise DatabaseError(prefix_err(describe(exc))) from exc
        except psycopg2.Error as exc:
            raise DatabaseError(prefix_err(describe(exc))) from exc

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(sql, tuple(params))
            return list(cur.fetchall())

    def probe(self) -> None:
        """A cheap read (database reachable, tables there); raises like every read."""
        with self._cursor() as cur:
            cur.execute("SELECT 1 FROM services LIMIT 0")

    def ws_id(self) -> str:
        if self._ws_id is None:
            rows = self._read("SELECT id FROM workspaces WHERE name = %s", (DEFAULT_WORKSPACE,))
            if not rows:
                raise IncompatibleSchema(prefix_err("default workspace not found"))
            self._ws_id = str(rows[0]["id"])
        return self._ws_id

    # -- config loading ----------------------------------------------------------

    def load_config(self) -> Config:
        """All entities of the default workspace in one REPEATABLE READ snapshot."""
        config = Config()
        ws_id = self.ws_id()
        with self._cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                for name in CONFIG_ENTITIES:
                    spec = SPECS[name]
                    cur.execute(f"SELECT {', '.join(_select_list(spec))} FROM {spec.table} "
                                "WHERE ws_id = %s ORDER BY id", (ws_id,))
                    setattr(config, name, [row_to_entity(spec, r) for r in cur.fetchall()])
            finally:
                cur.execute("ROLLBACK")
        return config

    def enabled_in_cluster(self) -> list[str]:
        rows = self._read("SELECT DISTINCT name FROM plugins ORDER BY name")
        return [r["name"] for r in rows]

    # -- reads -----------------------------------------------------------------

    def _spec(self, entity: str) -> EntitySpec:
        try:
            return ALL_SPECS[entity]
        except KeyError:
            raise NotFound() from None

    def _where_key(self, spec: EntitySpec, key: str) -> tuple[str, Any]:
        if is_uuid(key):
            return "id = %s", key.lower()
        if spec.endpoint_key:
            return f"{spec.endpoint_key} = %s", key
        if spec.name == "targets":
            return "target = %s", key
        raise NotFound()

    def _fetch(self, spec: EntitySpec, key: str, parent: tuple[str, str] | None = None) -> dict[str, Any] | None:
        where, value = self._where_key(spec, key)
        params: list[Any] = [value]
        sql = f"SELECT {', '.join(_select_list(spec))} FROM {spec.table} WHERE {where}"
        if spec.name != "workspaces":
            sql += " AND ws_id = %s"
            params.append(self.ws_id())
        if parent is not None:
            parent_id, fld = self._resolve_parent(spec, parent)
            sql += f" AND {fld.column} = %s"
            params.append(parent_id)
        rows = self._read(sql + " LIMIT 1", params)
        return row_to_entity(spec, rows[0]) if rows else None

    def _resolve_parent(self, spec: EntitySpec, parent: tuple[str, str]) -> tuple[str, Field]:
        parent_entity, parent_key = parent
        fld = spec.parent_field(parent_entity)
        if fld is None:
            raise NotFound()
        found = self._fetch(self._spec(parent_entity), parent_key)
        if found is None:
            raise NotFound()
        return found["id"], fld

    def get(self, entity: str, key: str, parent: tuple[str, str] | None = None) -> dict[str, Any]:
        found = self._fetch(self._spec(entity), key, parent)
        if found is None:
            raise NotFound()
        return found

    def page(self, entity: str, size: Any = None, offset: str | None = None, tags: str | None = None,
             tags_mode: str | None = None, parent: tuple[str, str] | None = None) -> Page:
        spec = self._spec(entity)
        limit = parse_size(size)
        tag_list, mode = parse_tags(tags)
        if tags_mode:
            mode = tags_mode
        clauses: list[str] = []
        params: list[Any] = []
        if spec.name != "workspaces":
            clauses.append("ws_id = %s")
            params.append(self.ws_id())
        if offset:
            clauses.append("id > %s")
            params.append(decode_offset(offset))
        if tag_list:
            clauses.append("tags @> %s::text[]" if mode == "and" else "tags && %s::text[]")
            params.append(tag_list)
        if parent is not None:
            parent_id, fld = self._resolve_parent(spec, parent)
            clauses.append(f"{fld.column} = %s")
            params.append(parent_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(f"SELECT {', '.join(_select_list(spec))} FROM {spec.table}{where} "
                          f"ORDER BY id LIMIT %s", [*params, limit + 1])
        data = [row_to_entity(spec, r) for r in rows[:limit]]
        next_offset = encode_offset(data[-1]["id"]) if len(rows) > limit else None
        return Page(data, next_offset)

    def count(self, entity: str) -> int:
        spec = self._spec(entity)
        rows = self._read(f"SELECT count(*) AS n FROM {spec.table}")
        return int(rows[0]["n"])

    # -- writes ----------------------------------------------------------------

    def _check_foreign(self, spec: EntitySpec, data: dict[str, Any]) -> None:
        for fld in spec.foreign_fields:
            ref = data.get(fld.name)
            if ref is None:
                continue
            if self._fetch(self._spec(fld.reference or ""), ref["id"]) is None:
                raise ForeignKeyViolation.invalid_reference(fld.name, {"id": ref["id"]}, fld.reference or "")

    def _columns_and_values(self, spec: EntitySpec, data: dict[str, Any]) -> tuple[list[str], list[str], list[Any]]:
        cols: list[str] = []
        holders: list[str] = []
        values: list[Any] = []
        for fld in spec.fields:
            cols.append(fld.column)
            holders.append(_placeholder(fld))
            value = _write_value(fld, data.get(fld.name))
            values.extend([value, value] if fld.name == "ttl" else [value])
        if spec.cache_key:
            cols.append("cache_key")
            holders.append("%s")
            values.append(cache_key(spec, data))
        cols.append("ws_id")
        holders.append("%s")
        values.append(self.ws_id())
        return cols, holders, values

    def _map_integrity(self, spec: EntitySpec, data: dict[str, Any], exc: psycopg2.Error) -> StoreError:
        diag = getattr(exc, "diag", None)
        constraint = (getattr(diag, "constraint_name", None) or "") if diag is not None else ""
        if isinstance(exc, psycopg2.errors.ForeignKeyViolation):
            for fld in spec.foreign_fields:
                if fld.column in constraint and data.get(fld.name):
                    return ForeignKeyViolation.invalid_reference(fld.name, data[fld.name], fld.reference or "")
            return DatabaseError(prefix_err(describe(exc)))
        name = _constraint_field(constraint)
        if name == "id":
            return PrimaryKeyViolation({"id": data.get("id")})
        if name == "@cache_key":
            return UniqueViolation(cache_key_fields(spec, data))
        if name is not None:
            return UniqueViolation({name: data.get(name)})
        return DatabaseError(prefix_err(describe(exc)))

    def _execute_write(self, spec: EntitySpec, data: dict[str, Any], sql_builder: Any) -> None:
        cols, holders, values = self._columns_and_values(spec, data)
        sql, params = sql_builder(cols, holders, values)
        try:
            with self._cursor() as cur:
                cur.execute(sql, params)
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.ForeignKeyViolation) as exc:
            raise self._map_integrity(spec, data, exc) from exc

    def _validate(self, spec: EntitySpec, body: dict[str, Any]) -> dict[str, Any]:
        data, errors = validate(spec, body, enabled_plugins=self.enabled_plugins,
                                route_path_regex=self.info.major >= 3, release=self.info)
        if errors:
            raise SchemaViolation(errors)
        return data

    def insert(self, entity: str, body: dict[str, Any], parent: tuple[str, str] | None = None) -> dict[str, Any]:
        spec = self._spec(entity)
        body = dict(body)
        if parent is not None:
            parent_id, fld = self._resolve_parent(spec, parent)
            body[fld.name] = {"id": parent_id}
        data = self._validate(spec, body)
        self._check_foreign(spec, data)

        def build(cols: list[str], holders: list[str], values: list[Any]) -> tuple[str, list[Any]]:
            return f"INSERT INTO {spec.table} ({', '.join(cols)}) VALUES ({', '.join(holders)})", values

        self._execute_write(spec, data, build)
        return self.get(entity, data["id"])

    def _upsert_data(self, spec: EntitySpec, data: dict[str, Any]) -> None:
        def build(cols: list[str], holders: list[str], values: list[Any]) -> tuple[str, list[Any]]:
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in ("id", "created_at"))
            return (f"INSERT INTO {spec.table} ({', '.join(cols)}) VALUES ({', '.join(holders)}) "
                    f"ON CONFLICT (id) DO UPDATE SET {updates}", values)

        self._execute_write(spec, data, build)

    def update(self, entity: str, key: str, body: dict[str, Any], parent: tuple[str, str] | None = None
               ) -> dict[str, Any]:
        """PATCH: merge ``body`` into the existing entity."""
        spec = self._spec(entity)
        current = self._fetch(spec, key, parent)
        if current is None:
            raise NotFound()
        merged = dict(current)
        if spec.name == "services" and "url" in body:
            merged = {k: v for k, v in merged.items() if k not in ("protocol", "host", "port", "path")}
        if spec.name == "plugins" and isinstance(body.get("config"), dict) and isinstance(current.get("config"), dict):
            body = dict(body)
            body["config"] = {**current["config"], **body["config"]}
        merged.update(body)
        merged["id"] = current["id"]
        merged["created_at"] = current["created_at"]
        if spec.get_field("updated_at"):
            merged["updated_at"] = now_epoch()
        merged.pop("ttl", None)
        data = self._validate(spec, merged)
        self._check_foreign(spec, data)
        self._upsert_data(spec, data)
        return self.get(entity, data["id"])

    def upsert(self, entity: str, key: str, body: dict[str, Any], parent: tuple[str, str] | None = None
               ) -> dict[str, Any]:
        """PUT: create or replace the entity named by ``key`` (id or endpoint key)."""
        spec = self._spec(entity)
        body = dict(body)
        current = self._fetch(spec, key, parent)
        if parent is not None:
            parent_id, fld = self._resolve_parent(spec, parent)
            body[fld.name] = {"id": parent_id}
        if is_uuid(key):
            body["id"] = key.lower()
        elif spec.endpoint_key:
            body[spec.endpoint_key] = key
            if current is not None:
                body["id"] = current["id"]
        if current is not None:
            body["created_at"] = current["created_at"]
            if spec.get_field("updated_at"):
                body["updated_at"] = now_epoch()
        data = self._validate(spec, body)
        self._check_foreign(spec, data)
        self._upsert_data(spec, data)
        return self.get(entity, data["id"])

    def delete(self, entity: str, key: str, parent: tuple[str, str] | None = None) -> str | None:
        """DELETE: idempotent; returns the id deleted, or None when nothing matched."""
        spec = self._spec(entity)
        current = self._fetch(spec, key, parent)
        if current is None:
            return None
        try:
            with self._cursor() as cur:
                cur.execute(f"DELETE FROM {spec.table} WHERE id = %s", (current["id"],))
        except psycopg2.errors.ForeignKeyViolation as exc:
            constraint = (exc.diag.constraint_name or "") if exc.diag else ""
            child = next((t for t in SPECS if constraint.startswith(t + "_")), "routes")
            raise ForeignKeyViolation.restricted(spec.name, child) from exc
        return current["id"]

    # -- bulk import / export ---------------------------------------------------

    def import_entities(self, entities: dict[str, list[dict[str, Any]]], page_size: int = 1000) -> int:
        """Upsert validated entities by primary key in topological order (db_import, seeding).

        Nothing is deleted. Uses one transaction and batched multi-row statements, so
        10,000+ entities take seconds.
        """
        total = 0
        with self._cursor() as cur:
            cur.execute("BEGIN")
            try:
                for name in CONFIG_ENTITIES:
                    rows = entities.get(name) or []
                    if rows:
                        total += self._bulk_upsert(cur, SPECS[name], rows, page_size)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return total

    def _bulk_upsert(self, cur: Any, spec: EntitySpec, rows: list[dict[str, Any]], page_size: int) -> int:
        cols, holders = self._columns_and_values(spec, rows[0])[:2]
        template = "(" + ", ".join(holders) + ")"
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in ("id", "created_at"))
        sql = f"INSERT INTO {spec.table} ({', '.join(cols)}) VALUES %s ON CONFLICT (id) DO UPDATE SET {updates}"
        arglist = [self._columns_and_values(spec, data)[2] for data in rows]
        try:
            psycopg2.extras.execute_values(cur, sql, arglist, template=template, page_size=page_size)
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.ForeignKeyViolation) as exc:
            raise self._map_integrity(spec, rows[0], exc) from exc
        return len(rows)

    def import_parameters(self, parameters: list[dict[str, Any]]) -> None:
        with self._cursor() as cur:
            for param in parameters:
                cur.execute("INSERT INTO parameters (key, value, created_at) VALUES (%s, %s, now()) "
                            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                            (param["key"], str(param["value"])))

    def export(self) -> dict[str, list[dict[str, Any]]]:
        """Entities for `kong config db_export` (foreign keys as plain ids)."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                cur.execute("SELECT id FROM workspaces WHERE name = %s", (DEFAULT_WORKSPACE,))
                ws = cur.fetchone()
                ws_id = str(ws["id"]) if ws else None
                cur.execute("SELECT key, value, EXTRACT(EPOCH FROM created_at)::bigint AS created_at "
                            "FROM parameters ORDER BY key")
                params = [dict(r) for r in cur.fetchall()]
                if params:
                    out["parameters"] = params
                for name in CONFIG_ENTITIES:
                    spec = SPECS[name]
                    cur.execute(f"SELECT {', '.join(_select_list(spec))} FROM {spec.table} "
                                "WHERE ws_id = %s ORDER BY id", (ws_id,))
                    rows = [to_export(spec, row_to_entity(spec, r)) for r in cur.fetchall()]
                    if rows:
                        out[name] = rows
            finally:
                cur.execute("ROLLBACK")
        return out

    # -- cluster events ------------------------------------------------------------

    def post_invalidation(self, node_id: str, data: str, channel: str = "invalidations") -> None:
        """Insert a cluster event, how other nodes learn about an Admin write."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO cluster_events (id, node_id, at, nbf, expire_at, channel, data) "
                "VALUES (%s, %s, now(), NULL, now() + make_interval(secs => %s), %s, %s)",
                (str(uuid.uuid4()), node_id, CLUSTER_EVENTS_TTL, channel, data),
            )

    def poll_invalidations(self, since: float, channels: Iterable[str] = ("invalidations",)
                           ) -> list[dict[str, Any]]:
        """Events on ``channels`` at or after ``since`` (epoch seconds); `at` as epoch float."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT id, node_id, EXTRACT(EPOCH FROM at)::float8 AS at, channel, data FROM cluster_events "
                "WHERE channel = ANY(%s) AND at >= to_timestamp(%s) AND expire_at > now() ORDER BY at",
                (list(channels), since),
            )
            return [{**r, "id": str(r["id"]), "node_id": str(r["node_id"])} for r in cur.fetchall()]

    def db_now(self) -> float:
        with self._cursor() as cur:
            cur.execute("SELECT EXTRACT(EPOCH FROM now())::float8 AS now")
            row = cur.fetchone()
        return float(row["now"]) if row else 0.0

    # -- clustering data planes (control plane) ------------------------------------

    def upsert_data_plane(self, dp: dict[str, Any], purge_delay: int = 1209600) -> None:
        """Insert or update one data plane row (id, hostname, ip, version, sync_status,
        config_hash, labels, cert_details, rpc_capabilities); last_seen = now."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO clustering_data_planes (id, hostname, ip, last_seen, config_hash, ttl, version, "
                "sync_status, updated_at, labels, cert_details, rpc_capabilities) "
                "VALUES (%s, %s, %s, now(), %s, now() + make_interval(secs => %s), %s, %s, now(), %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, ip = EXCLUDED.ip, "
                "last_seen = EXCLUDED.last_seen, config_hash = EXCLUDED.config_hash, ttl = EXCLUDED.ttl, "
                "version = EXCLUDED.version, sync_status = EXCLUDED.sync_status, updated_at = EXCLUDED.updated_at, "
                "labels = EXCLUDED.labels, cert_details = EXCLUDED.cert_details, "
                "rpc_capabilities = EXCLUDED.rpc_capabilities",
                (dp["id"], dp.get("hostname", ""), dp.get("ip", ""), dp.get("config_hash") or "0" * 32,
                 purge_delay, dp.get("version"), dp.get("sync_status", "unknown"),
                 psycopg2.extras.Json(dp["labels"]) if dp.get("labels") is not None else None,
                 psycopg2.extras.Json(dp["cert_details"]) if dp.get("cert_details") is not None else None,
                 dp.get("rpc_capabilities")),
            )

    def data_planes(self, size: Any = None, offset: str | None = None) -> Page:
        """`/clustering/data-planes` rows with the fields this release shows (kong-facts 6.4)."""
        limit = parse_size(size)
        params: list[Any] = []
        where = ""
        if offset:
            where = " WHERE id > %s"
            params.append(decode_offset(offset))
        rows = self._read("SELECT id, hostname, ip, last_seen, config_hash, ttl, version, sync_status, updated_at, "
                          f"labels, cert_details, rpc_capabilities FROM clustering_data_planes{where} "
                          "ORDER BY id LIMIT %s", [*params, limit + 1])
        data = [self._data_plane(r) for r in rows[:limit]]
        next_offset = encode_offset(data[-1]["id"]) if len(rows) > limit else None
        return Page(data, next_offset)

    def _data_plane(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(row["id"]), "ip": row["ip"], "hostname": row["hostname"], "version": row["version"],
            "sync_status": row["sync_status"], "config_hash": row["config_hash"],
            "last_seen": _epoch(row["last_seen"]),
            "ttl": None if row["ttl"] is None else max(0, int(row["ttl"].timestamp() - now_epoch())),
        }
        if self.info.at_least(3, 3):
            out["updated_at"] = _epoch(row["updated_at"])
        if self.info.at_least(3, 5):
            out["labels"] = row["labels"]
        if self.info.at_least(3, 6):
            details = row["cert_details"] or {}
            out["cert_details"] = {"expiry_timestamp": details.get("expiry_timestamp")}
        if self.info.at_least(3, 7):
            out["rpc_capabilities"] = row["rpc_capabilities"] or []
        return out
