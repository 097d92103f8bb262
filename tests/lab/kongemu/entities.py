"""Kong entity schemas and validation, shared by the database store (schema.py), the
declarative loader and the DB-less store (declarative.py).

Messages follow Kong's schema library (`kong/db/schema/init.lua`) and error module
(`kong/db/errors.lua`): `required field missing`, `unknown field`, `expected a
string`, `expected one of: a, b`, `value should be between 0 and 65535`, entity checks
under `@entity`, and the `schema violation (...)` / `N schema violations (...)`
summary.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

# ---------------------------------------------------------------------------
# Errors (Kong error codes, kong/db/errors.lua)

CODE_INVALID_PRIMARY_KEY = 1
CODE_SCHEMA_VIOLATION = 2
CODE_PRIMARY_KEY_VIOLATION = 3
CODE_FOREIGN_KEY_VIOLATION = 4
CODE_UNIQUE_VIOLATION = 5
CODE_NOT_FOUND = 6
CODE_INVALID_OFFSET = 7
CODE_DATABASE_ERROR = 8
CODE_INVALID_SIZE = 9
CODE_INVALID_OPTIONS = 11
CODE_OPERATION_UNSUPPORTED = 12
CODE_DECLARATIVE_CONFIG = 14


class StoreError(Exception):
    """An error the Admin API turns into a JSON answer (`status`, `body()`)."""

    status = 500

    def body(self) -> dict[str, Any]:
        return {"message": str(self)}


class IncompatibleSchema(StoreError):
    """The database no longer has what this version reads (after a newer `finish`)."""

    status = 500

    def body(self) -> dict[str, Any]:
        return {"message": "An unexpected error occurred"}


class DatabaseError(StoreError):
    """Any other database failure (connection lost, timeout, ...)."""

    status = 500

    def body(self) -> dict[str, Any]:
        return {"message": "An unexpected error occurred"}


class NotFound(StoreError):
    status = 404

    def __init__(self, message: str = "Not found") -> None:
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"message": "Not found"}


class KongDbError(StoreError):
    """An error with Kong's `{code, name, message, fields}` body."""

    code = CODE_DATABASE_ERROR
    name = "database error"

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "name": self.name, "message": self.message}
        if self.fields is not None:
            out["fields"] = self.fields
        return out


class SchemaViolation(KongDbError):
    status = 400
    code = CODE_SCHEMA_VIOLATION
    name = "schema violation"

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(schema_violation_message(fields), fields)


class UniqueViolation(KongDbError):
    status = 409
    code = CODE_UNIQUE_VIOLATION
    name = "unique constraint violation"

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(f"UNIQUE violation detected on '{lua_pretty(fields)}'", fields)


class PrimaryKeyViolation(KongDbError):
    status = 400
    code = CODE_PRIMARY_KEY_VIOLATION
    name = "primary key violation"

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(f"primary key violation on key '{lua_pretty(fields)}'", fields)


class ForeignKeyViolation(KongDbError):
    status = 400
    code = CODE_FOREIGN_KEY_VIOLATION
    name = "foreign key violation"

    @classmethod
    def invalid_reference(cls, field_name: str, key: dict[str, Any], parent: str) -> ForeignKeyViolation:
        return cls(f"the foreign key '{lua_pretty(key)}' does not reference an existing '{parent}' entity.",
                   {field_name: key})

    @classmethod
    def restricted(cls, parent: str, child: str) -> ForeignKeyViolation:
        return cls(f"an existing '{child}' entity references this '{parent}' entity", {"@referenced_by": child})


class InvalidOffset(KongDbError):
    status = 400
    code = CODE_INVALID_OFFSET
    name = "invalid offset"

    def __init__(self, offset: str, err: str) -> None:
        super().__init__(f"'{offset}' is not a valid offset: {err}")


class InvalidSize(KongDbError):
    status = 400
    code = CODE_INVALID_SIZE
    name = "invalid size"


class InvalidOptions(KongDbError):
    status = 400
    code = CODE_INVALID_OPTIONS
    name = "invalid options"

    def __init__(self, errors: dict[str, str]) -> None:
        parts = [f"{k}: {v}" for k, v in sorted(errors.items())]
        message = f"invalid option ({parts[0]})" if len(parts) == 1 else \
            f"{len(parts)} option violations ({'; '.join(parts)})"
        super().__init__(message)
        self.options = errors

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message, "options": self.options}


class OperationUnsupported(KongDbError):
    """DB-less writes (405), kong spec/02-integration/04-admin_api/15-off_spec.lua."""

    status = 405
    code = CODE_OPERATION_UNSUPPORTED
    name = "operation unsupported"


# ---------------------------------------------------------------------------
# Lua-ish pretty printing used in Kong error messages (pl.pretty.write(t, ""))

def lua_pretty(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={lua_pretty(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(lua_pretty(v) for v in value) + "}"
    return json.dumps(str(value))


def schema_violation_message(errors: dict[str, Any]) -> str:
    """`schema violation (f: msg)` or `N schema violations (a: x; b.c: y)` (errors.lua)."""
    buf: list[str] = list(errors.get("@entity", []) or [])
    for name in sorted(k for k in errors if k != "@entity"):
        value = errors[name]
        if isinstance(value, dict):
            for sub in sorted(value, key=str):
                sub_value = value[sub]
                text = sub_value if isinstance(sub_value, str) else lua_pretty(sub_value)
                buf.append(f"{name}.{sub}: {text}")
        elif isinstance(value, list):
            for index, sub_value in enumerate(value, start=1):
                if sub_value is not None:
                    text = sub_value if isinstance(sub_value, str) else lua_pretty(sub_value)
                    buf.append(f"{name}.{index}: {text}")
        else:
            buf.append(f"{name}: {value}")
    if len(buf) == 1:
        return f"schema violation ({buf[0]})"
    return f"{len(buf)} schema violations ({'; '.join(buf)})"


# ---------------------------------------------------------------------------
# Field and entity specifications

Check = Callable[[Any], "str | None"]

_NAME_RE = re.compile(r"^[A-Za-z0-9.\-_~]+$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]:*]+$")
_TAG_RE = re.compile(r"^[\x21-\x2B\x2D-\x2E\x30-\x7E\x80-\U0010FFFF]+$")


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and bool(_UUID_RE.match(value))


def _check_name(value: Any) -> str | None:
    if not _NAME_RE.match(value):
        return (f"invalid value '{value}': it must only contain alphanumeric and '., -, _, ~' characters")
    return None


def _check_host(value: Any) -> str | None:
    if not value or not _HOST_RE.match(value):
        return "invalid value: " + str(value)
    return None


def _check_service_path(value: Any) -> str | None:
    if not value.startswith("/"):
        return "should start with: /"
    return None


def _check_tag(value: Any) -> str | None:
    if not _TAG_RE.match(value):
        return "invalid tag '" + value + "': expected printable ascii (except `,` and `/`) or valid utf-8 sequences"
    return None


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # string integer number boolean array set record map foreign uuid timestamp
    default: Any = None
    required: bool = False
    unique: bool = False
    one_of: tuple[Any, ...] = ()
    between: tuple[float, float] | None = None
    reference: str | None = None
    check: Check | None = None
    elements_check: Check | None = None
    auto: bool = False

    @property
    def column(self) -> str:
        return f"{self.name}_id" if self.kind == "foreign" else self.name


@dataclass(frozen=True)
class EntitySpec:
    name: str
    table: str
    admin_name: str
    fields: tuple[Field, ...]
    endpoint_key: str | None = None
    updated_at: bool = True
    precise_created_at: bool = False
    cache_key: tuple[str, ...] = ()
    write_only: tuple[str, ...] = ()
    _by_name: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({f.name: f for f in self.fields})

    def get_field(self, name: str) -> Field | None:
        return self._by_name.get(name)

    @property
    def foreign_fields(self) -> list[Field]:
        return [f for f in self.fields if f.kind == "foreign"]

    def parent_field(self, parent_entity: str) -> Field | None:
        for fld in self.foreign_fields:
            if fld.reference == parent_entity:
                return fld
        return None


def _common(updated: bool = True) -> tuple[Field, ...]:
    base = (Field("id", "uuid", auto=True), Field("created_at", "timestamp", auto=True))
    if updated:
        base += (Field("updated_at", "timestamp", auto=True),)
    return base


_TAGS = Field("tags", "set", elements_check=_check_tag)
# OSS: no ws/wss (Enterprise only; real 2.8.5 to 3.9.1)
_HTTP_PROTOCOLS = ("grpc", "grpcs", "http", "https", "tcp", "tls", "tls_passthrough", "udp")

HEALTHCHECKS_DEFAULT: dict[str, Any] = {
    "active": {
        "type": "http", "timeout": 1, "concurrency": 10, "http_path": "/", "https_sni": None,
        "https_verify_certificate": True, "headers": None,
        "healthy": {"interval": 0, "http_statuses": [200, 302], "successes": 0},
        "unhealthy": {"interval": 0, "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
                      "tcp_failures": 0, "timeouts": 0, "http_failures": 0},
    },
    "passive": {
        "type": "http",
        "healthy": {"http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                                      300, 301, 302, 303, 304, 305, 306, 307, 308], "successes": 0},
        "unhealthy": {"http_statuses": [429, 500, 503], "tcp_failures": 0, "timeouts": 0, "http_failures": 0},
    },
    "threshold": 0,
}

SERVICES = EntitySpec(
    "services", "services", "services",
    _common() + (
        Field("name", "string", unique=True, check=_check_name),
        Field("retries", "integer", default=5, between=(0, 32767)),
        Field("protocol", "string", default="http", one_of=_HTTP_PROTOCOLS),
        Field("host", "string", required=True, check=_check_host),
        Field("port", "integer", default=80, between=(0, 65535)),
        Field("path", "string", check=_check_service_path),
        Field("connect_timeout", "integer", default=60000, between=(1, 2147483646)),
        Field("write_timeout", "integer", default=60000, between=(1, 2147483646)),
        Field("read_timeout", "integer", default=60000, between=(1, 2147483646)),
        _TAGS,
        Field("client_certificate", "record"),
        Field("tls_verify", "boolean"),
        Field("tls_verify_depth", "integer", between=(0, 64)),
        Field("ca_certificates", "array"),
        Field("enabled", "boolean", default=True),
    ),
    endpoint_key="name",
    write_only=("url",),
)

ROUTES = EntitySpec(
    "routes", "routes", "routes",
    _common() + (
        Field("name", "string", unique=True, check=_check_name),
        Field("protocols", "set", default=["http", "https"], one_of=_HTTP_PROTOCOLS),
        Field("methods", "set"),
        Field("hosts", "array"),
        Field("paths", "array"),
        Field("headers", "map"),
        Field("https_redirect_status_code", "integer", default=426, one_of=(426, 301, 302, 307, 308)),
        Field("regex_priority", "integer", default=0),
        Field("strip_path", "boolean", default=True),
        Field("path_handling", "string", default="v0", one_of=("v0", "v1")),
        Field("preserve_host", "boolean", default=False),
        Field("request_buffering", "boolean", default=True),
        Field("response_buffering", "boolean", default=True),
        Field("snis", "set"),
        Field("sources", "set"),
        Field("destinations", "set"),
        _TAGS,
        Field("service", "foreign", reference="services"),
    ),
    endpoint_key="name",
)

CONSUMERS = EntitySpec(
    "consumers", "consumers", "consumers",
    _common() + (
        Field("username", "string", unique=True),
        Field("custom_id", "string", unique=True),
        _TAGS,
    ),
    endpoint_key="username",
)

PLUGINS = EntitySpec(
    "plugins", "plugins", "plugins",
    _common() + (
        Field("name", "string", required=True),
        Field("instance_name", "string", unique=True, check=_check_name),
        Field("config", "record", default={}),
        Field("protocols", "set", default=["grpc", "grpcs", "http", "https"], one_of=_HTTP_PROTOCOLS),
        Field("enabled", "boolean", default=True),
        _TAGS,
        Field("service", "foreign", reference="services"),
        Field("route", "foreign", reference="routes"),
        Field("consumer", "foreign", reference="consumers"),
    ),
    cache_key=("name", "route", "service", "consumer"),
)

KEYAUTH_CREDENTIALS = EntitySpec(
    "keyauth_credentials", "keyauth_credentials", "key-auths",
    _common(updated=False) + (
        Field("consumer", "foreign", reference="consumers", required=True),
        Field("key", "string", unique=True),
        Field("ttl", "integer", between=(0, 100000000)),
        _TAGS,
    ),
    endpoint_key="key",
)

UPSTREAMS = EntitySpec(
    "upstreams", "upstreams", "upstreams",
    _common() + (
        Field("name", "string", required=True, unique=True, check=_check_host),
        Field("algorithm", "string", default="round-robin",
              one_of=("consistent-hashing", "least-connections", "round-robin", "latency")),
        Field("hash_on", "string", default="none",
              one_of=("none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture")),
        Field("hash_fallback", "string", default="none",
              one_of=("none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture")),
        Field("hash_on_header", "string"),
        Field("hash_fallback_header", "string"),
        Field("hash_on_cookie", "string"),
        Field("hash_on_cookie_path", "string", default="/"),
        Field("hash_on_query_arg", "string"),
        Field("hash_fallback_query_arg", "string"),
        Field("hash_on_uri_capture", "string"),
        Field("hash_fallback_uri_capture", "string"),
        Field("slots", "integer", default=10000, between=(10, 65536)),
        Field("healthchecks", "record", default=HEALTHCHECKS_DEFAULT),
        _TAGS,
        Field("host_header", "string"),
        Field("client_certificate", "record"),
        Field("use_srv_name", "boolean", default=False),
    ),
    endpoint_key="name",
)

TARGETS = EntitySpec(
    "targets", "targets", "targets",
    _common() + (
        Field("upstream", "foreign", reference="upstreams", required=True),
        Field("target", "string", required=True),
        Field("weight", "integer", default=100, between=(0, 65535)),
        _TAGS,
    ),
    precise_created_at=True,
    cache_key=("upstream", "target"),
)

WORKSPACES = EntitySpec(
    "workspaces", "workspaces", "workspaces",
    _common() + (
        Field("name", "string", required=True, unique=True, check=_check_name),
        Field("comment", "string"),
        Field("config", "record"),
        Field("meta", "record"),
    ),
    endpoint_key="name",
)

# Order matters: parents before children (import order, kong-facts 5 "topological").
SPECS: dict[str, EntitySpec] = {
    spec.name: spec
    for spec in (SERVICES, ROUTES, CONSUMERS, UPSTREAMS, TARGETS, KEYAUTH_CREDENTIALS, PLUGINS)
}
ALL_SPECS: dict[str, EntitySpec] = {**SPECS, "workspaces": WORKSPACES}
ADMIN_NAMES: dict[str, str] = {spec.admin_name: spec.name for spec in ALL_SPECS.values()}
CONFIG_ENTITIES: tuple[str, ...] = tuple(SPECS)


# ---------------------------------------------------------------------------
# Plugin knowledge: priorities (GET /) and config defaults

PLUGIN_PRIORITIES: dict[str, int] = {
    "pre-function": 1000000, "correlation-id": 100001, "zipkin": 100000, "opentelemetry": 14,
    "bot-detection": 2500, "cors": 2000, "jwt": 1450, "oauth2": 1400, "key-auth": 1250,
    "ldap-auth": 1200, "basic-auth": 1100, "hmac-auth": 1030, "grpc-gateway": 998, "ip-restriction": 990,
    "request-size-limiting": 951, "acl": 950, "rate-limiting": 910, "response-ratelimiting": 900,
    "request-transformer": 801, "response-transformer": 800, "ai-proxy": 770, "aws-lambda": 750,
    "azure-functions": 749, "proxy-cache": 100, "prometheus": 13, "http-log": 12, "statsd": 11,
    "datadog": 10, "file-log": 9, "udp-log": 8, "tcp-log": 7, "loggly": 6, "syslog": 4,
    "grpc-web": 3, "request-termination": 2, "acme": 1705, "session": 1900, "post-function": -1000,
    "ai-prompt-decorator": 772, "ai-prompt-guard": 771, "ai-prompt-template": 773, "ai-request-transformer": 777,
    "ai-response-transformer": 768, "standard-webhooks": 760, "redirect": 779,
}


def plugin_priority(name: str, info: Any) -> int:
    """A bundled plugin's PRIORITY in release ``info`` (real 3.4.2 and 3.9.x: correlation-id
    was 1 until Kong/kong#13581, which we date to 3.9.0)."""
    if name == "correlation-id" and not info.at_least(3, 9):
        return 1
    return PLUGIN_PRIORITIES.get(name, 1000)


def plugin_version(name: str, info: Any) -> str:
    """A bundled plugin's VERSION: Kong's own, except opentelemetry's 0.1.0 (real 3.4.2; it
    reports Kong's version in 3.9; the change is dated to 3.6.0 by us, unverified)."""
    if name == "opentelemetry" and not info.at_least(3, 6):
        return "0.1.0"
    return str(info.version)


PLUGIN_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "key-auth": {"key_names": ["apikey"], "hide_credentials": False, "anonymous": None,
                 "key_in_header": True, "key_in_query": True, "key_in_body": False,
                 "run_on_preflight": True},
    "rate-limiting": {"second": None, "minute": None, "hour": None, "day": None, "month": None,
                      "year": None, "limit_by": "consumer", "policy": "local", "fault_tolerant": True,
                      "hide_client_headers": False, "header_name": None, "path": None},
    "request-termination": {"status_code": 503, "message": None, "body": None, "content_type": None,
                            "trigger": None, "echo": False},
    "correlation-id": {"header_name": "Kong-Request-ID", "generator": "uuid#counter", "echo_downstream": False},
    "cors": {"origins": None, "headers": None, "exposed_headers": None, "methods": None, "max_age": None,
             "credentials": False, "preflight_continue": False},
    "acl": {"allow": None, "deny": None, "hide_groups_header": False},
    "prometheus": {"per_consumer": False, "status_code_metrics": False, "latency_metrics": False,
                   "bandwidth_metrics": False, "upstream_health_metrics": False},
}

_RATE_LIMIT_FIELDS = ("second", "minute", "hour", "day", "month", "year")


def plugin_config_defaults(name: str) -> dict[str, Any]:
    return copy.deepcopy(PLUGIN_CONFIG_DEFAULTS.get(name, {}))


# ---------------------------------------------------------------------------
# Validation

def now_epoch() -> int:
    return int(time.time())


def new_id() -> str:
    return str(uuid.uuid4())


def random_key() -> str:
    """Kong's generated key-auth keys: 32 random alphanumeric characters."""
    return secrets.token_hex(16)


def _type_error(fld: Field, value: Any) -> str | None:
    kind = fld.kind
    if kind in ("string",):
        return None if isinstance(value, str) else "expected a string"
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok or (isinstance(value, float) and value.is_integer())
        return None if ok else "expected an integer"
    if kind == "number":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "expected a number"
    if kind == "boolean":
        return None if isinstance(value, bool) else "expected a boolean"
    if kind == "array":
        return None if isinstance(value, list) else "expected an array"
    if kind == "set":
        return None if isinstance(value, list) else "expected a set"
    if kind in ("record", "map"):
        return None if isinstance(value, dict) else f"expected a {'record' if kind == 'record' else 'map'}"
    if kind == "uuid":
        return None if is_uuid(value) else "expected a valid UUID"
    if kind == "timestamp":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "expected a number"
    return None


def _value_errors(fld: Field, value: Any) -> Any:
    """Errors for one non-null value: a string, or a list (array element errors)."""
    err = _type_error(fld, value)
    if err:
        return err
    if fld.kind == "integer" and isinstance(value, float):
        value = int(value)
    if fld.kind in ("array", "set"):
        element_errors: list[str | None] = []
        for item in value:
            item_err = None
            if not isinstance(item, str) and fld.one_of == () and fld.name not in ("sources", "destinations"):
                item_err = "expected a string"
            elif fld.one_of and item not in fld.one_of:
                item_err = "expected one of: " + ", ".join(str(v) for v in fld.one_of)
            elif fld.elements_check and isinstance(item, str):
                item_err = fld.elements_check(item)
            element_errors.append(item_err)
        if any(element_errors):
            return element_errors
        return None
    if fld.one_of and value not in fld.one_of:
        return "expected one of: " + ", ".join(str(v) for v in fld.one_of)
    if fld.between is not None:
        low, high = fld.between
        if not low <= value <= high:
            return f"value should be between {int(low)} and {int(high)}"
    if fld.check is not None:
        return fld.check(value)
    return None


def _foreign_value(fld: Field, value: Any) -> tuple[str | None, Any]:
    """Normalise a foreign reference to its id: accepts {"id": x} or a plain id."""
    if isinstance(value, dict):
        if set(value) - {"id"} and "id" not in value:
            return None, {"id": "required field missing"}
        ref = value.get("id")
    else:
        ref = value
    if not is_uuid(ref):
        if isinstance(value, dict):
            return None, {"id": "expected a valid UUID"}
        return None, "expected a record"
    return ref.lower(), None


def expand_service_url(body: dict[str, Any]) -> dict[str, Any] | str:
    """The `url` shorthand of services: protocol/host/port/path from one URL."""
    url = body.get("url")
    if url is None:
        return body
    if not isinstance(url, str):
        return "expected a string"
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return "missing host in url"
    out = {k: v for k, v in body.items() if k != "url"}
    out["protocol"] = parts.scheme
    out["host"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        return "invalid port in url"
    out["port"] = port if port is not None else (443 if parts.scheme in ("https", "grpcs", "wss", "tls") else 80)
    out["path"] = parts.path or None
    return out


@dataclass
class Validated:
    """A validated entity (API shape; foreign references as {"id": ...})."""

    spec: EntitySpec
    data: dict[str, Any]


def apply_defaults(spec: EntitySpec, data: dict[str, Any]) -> None:
    for fld in spec.fields:
        if fld.name not in data:
            data[fld.name] = copy.deepcopy(fld.default)


def validate(spec: EntitySpec, body: dict[str, Any], *, enabled_plugins: Iterable[str] | None = None,
             route_path_regex: bool = True, fill_defaults: bool = True,
             release: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate and normalise ``body``; return (entity, errors). errors is {} when valid.

    The entity keeps foreign references as {"id": ...}; auto fields (id, created_at,
    updated_at) are filled when absent.
    """
    errors: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if spec.name == "services":
        expanded = expand_service_url(body)
        if isinstance(expanded, str):
            return {}, {"url": expanded}
        body = expanded
    for key, value in body.items():
        fld = spec.get_field(key)
        if fld is None:
            errors[key] = "unknown field"
            continue
        if value is None:
            data[key] = None
            continue
        if fld.kind == "foreign":
            ref, err = _foreign_value(fld, value)
            if err:
                errors[key] = err
            else:
                data[key] = {"id": ref}
            continue
        err = _value_errors(fld, value)
        if err:
            errors[key] = err
            continue
        if fld.kind == "integer" and isinstance(value, float):
            value = int(value)
        if fld.kind == "set" and isinstance(value, list):
            value = list(dict.fromkeys(value))
        data[key] = value
    if fill_defaults:
        apply_defaults(spec, data)
        data["id"] = (data.get("id") or new_id()).lower()
        now = now_epoch()
        if data.get("created_at") is None:
            data["created_at"] = now
        if spec.get_field("updated_at") and data.get("updated_at") is None:
            data["updated_at"] = data["created_at"] if body.get("created_at") is not None else now
    for fld in spec.fields:
        if fld.required and data.get(fld.name) is None and fld.name not in errors:
            errors[fld.name] = "required field missing"
    entity_errors = _entity_checks(spec, data, enabled_plugins, route_path_regex, errors, release)
    if entity_errors:
        errors.setdefault("@entity", []).extend(entity_errors)
    return data, errors


def _entity_checks(spec: EntitySpec, data: dict[str, Any], enabled_plugins: Iterable[str] | None,
                   route_path_regex: bool, errors: dict[str, Any], release: Any = None) -> list[str]:
    out: list[str] = []
    if spec.name == "routes":
        out.extend(_route_checks(data, route_path_regex, errors))
    elif spec.name == "consumers":
        if not data.get("username") and not data.get("custom_id"):
            out.append("at least one of these fields must be non-empty: 'custom_id', 'username'")
    elif spec.name == "plugins":
        _plugin_checks(data, enabled_plugins, errors)
        if release is not None and "config" not in errors:
            out.extend(_plugin_config_checks(data, release, errors))
    elif spec.name == "targets":
        _target_checks(data, errors)
    elif spec.name == "keyauth_credentials":
        if data.get("key") is None and "key" not in errors:
            data["key"] = random_key()
    return out


def _route_checks(data: dict[str, Any], regex_paths: bool, errors: dict[str, Any]) -> list[str]:
    paths = data.get("paths")
    if isinstance(paths, list) and "paths" not in errors:
        expected = "should start with: / (fixed path) or ~/ (regex path)" if regex_paths else "should start with: /"
        path_errors = [None if isinstance(p, str) and (p.startswith("/") or (regex_paths and p.startswith("~/")))
                       else expected for p in paths]
        if any(path_errors):
            errors["paths"] = path_errors
    methods = data.get("methods")
    if isinstance(methods, list) and "methods" not in errors:
        bad = [None if isinstance(m, str) and re.match(r"^[A-Z]+$", m) else "invalid value: " + str(m)
               for m in methods]
        if any(bad):
            errors["methods"] = bad
    protocols = data.get("protocols") or []
    if any(p in ("http", "https") for p in protocols):
        criteria = ["methods", "hosts", "headers", "paths"]
        label = "http"
        if "https" in protocols:
            criteria.append("snis")
            label = "https"
        if not any(data.get(c) for c in criteria):
            names = ", ".join(f"'{c}'" for c in criteria)
            return [f"must set one of {names} when 'protocols' is '{label}'"]
    return []


def _plugin_checks(data: dict[str, Any], enabled_plugins: Iterable[str] | None, errors: dict[str, Any]) -> None:
    name = data.get("name")
    if not isinstance(name, str) or "name" in errors:
        return
    if enabled_plugins is not None and name not in set(enabled_plugins):
        errors["name"] = f"plugin '{name}' not enabled; add it to the 'plugins' configuration property"
        return
    config = data.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        return
    merged = plugin_config_defaults(name)
    merged.update(config)
    data["config"] = merged
    if name == "rate-limiting" and not any(merged.get(k) is not None for k in _RATE_LIMIT_FIELDS):
        names = ", ".join(f"'config.{k}'" for k in _RATE_LIMIT_FIELDS)
        errors.setdefault("@entity", []).append(f"at least one of these fields must be non-empty: {names}")
    if name == "key-auth":
        key_names = merged.get("key_names")
        if not isinstance(key_names, list) or not key_names:
            errors["config"] = {"key_names": "expected an array" if not isinstance(key_names, list)
                                else "length must be at least 1"}


def reads_legacy_redis_fields(release: Any) -> bool:
    """rate-limiting and response-ratelimiting read `redis_host` etc. before 3.6 and
    `redis.host` from 3.6 (006_350_to_360 / 001_350_to_360, destructive in 3.6.x)."""
    return not release.at_least(3, 6)


def _plugin_config_checks(data: dict[str, Any], release: Any, errors: dict[str, Any]) -> list[str]:
    """The parts of bundled plugins' config schemas that a migration's rewrite can break
    (real Kong: a 2.8.5 node after 3.4.2's finish, a 3.4.2 node after 3.9.1's)."""
    name, config = data.get("name"), data.get("config")
    if not isinstance(config, dict):
        return []
    if name == "http-log" and release.major < 3 and isinstance(config.get("headers"), dict):
        # 2.x: a map of header name -> array of values (3.0 made the values strings)
        if not all(isinstance(v, list) for v in config["headers"].values()):
            errors["config"] = {"headers": "expected an array"}
    if name in ("rate-limiting", "response-ratelimiting") and config.get("policy") == "redis" \
            and reads_legacy_redis_fields(release) and config.get("redis_host") is None:
        errors["config"] = {"redis_host": "required field missing"}
        return ["failed conditional validation given value of field 'config.policy'"]
    return []


def _target_checks(data: dict[str, Any], errors: dict[str, Any]) -> None:
    target = data.get("target")
    if not isinstance(target, str) or "target" in errors:
        return
    match = re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(\d+))?$", target)
    if not match:
        errors["target"] = "Invalid target; not a valid hostname or ip address"
        return
    port = match.group(2)
    if port is not None and not 0 < int(port) < 65536:
        errors["target"] = "invalid port number"
        return
    if port is None:
        data["target"] = f"{match.group(1)}:8000"


def cache_key(spec: EntitySpec, data: dict[str, Any]) -> str | None:
    """Kong-style cache key of entities unique by a composite key (plugins, targets)."""
    if not spec.cache_key:
        return None
    parts = []
    for name in spec.cache_key:
        value = data.get(name)
        if isinstance(value, dict):
            value = value.get("id")
        parts.append("" if value is None else str(value))
    return f"{spec.name}:" + ":".join(parts) + "::"


def cache_key_fields(spec: EntitySpec, data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in spec.cache_key:
        value = data.get(name)
        out[name] = {"id": value["id"]} if isinstance(value, dict) else value
    return out


def coerce_form(spec: EntitySpec, body: dict[str, Any]) -> dict[str, Any]:
    """Convert string values of a form-encoded body to the schema's types.

    Kong's Admin API decodes `a[]=x`, `a=x&a=y`, `a.b=x` and then lets the schema
    coerce strings: numbers, booleans, and single values into arrays.
    """
    out: dict[str, Any] = {}
    for key, value in body.items():
        fld = spec.get_field(key)
        if fld is None:
            out[key] = value
            continue
        out[key] = _coerce_value(fld.kind, value)
        if fld.kind == "record" and key == "config" and isinstance(value, dict) and spec.name == "plugins":
            name = body.get("name")
            defaults = PLUGIN_CONFIG_DEFAULTS.get(name, {}) if isinstance(name, str) else {}
            out[key] = {k: _coerce_like(defaults.get(k), v) for k, v in value.items()}
    return out


def _coerce_value(kind: str, value: Any) -> Any:
    if isinstance(value, list) and kind not in ("array", "set"):
        value = value[-1] if value else None
    if not isinstance(value, (str, list)):
        return value
    if kind in ("array", "set"):
        if isinstance(value, str):
            return [] if value == "" else [value]
        return value
    if value == "" and kind != "string":
        return None
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value
    if kind == "boolean":
        if value.lower() in ("true", "1", "on", "yes"):
            return True
        if value.lower() in ("false", "0", "off", "no"):
            return False
    return value


def _coerce_like(default: Any, value: Any) -> Any:
    if isinstance(default, list):
        return _coerce_value("array", value)
    if isinstance(default, bool):
        return _coerce_value("boolean", value)
    if isinstance(default, int):
        return _coerce_value("integer", value)
    if isinstance(value, str):
        for kind in ("integer", "number"):
            converted = _coerce_value(kind, value)
            if not isinstance(converted, str):
                return converted
        if value in ("true", "false"):
            return value == "true"
    return value


def to_export(spec: EntitySpec, data: dict[str, Any]) -> dict[str, Any]:
    """Declarative/export shape: foreign keys as plain ids (kong-facts 5)."""
    out: dict[str, Any] = {}
    for fld in spec.fields:
        if fld.name not in data:
            continue
        value = data[fld.name]
        if fld.kind == "foreign" and isinstance(value, dict):
            value = value.get("id")
        out[fld.name] = value
    return out
