"""The Admin API, backend-agnostic: `AdminApp(ctx).handle(method, path, query, headers, body)`
returns `(status, headers, body)` (kong-facts 6).

* `GET /` (6.1), `GET /status` (6.2), entity endpoints with Kong's status codes and
  error bodies, DB-less `GET|POST /config` (6.5), `/clustering/data-planes` and
  `/clustering/status` on control planes (6.4).
* `ctx` is the node's context (see NOTES-node.md): version_info, conf, node_id,
  hostname, pids, backend (EntityStore-like or the DB-less MemoryStore),
  db_reachable(), configuration_hash, is_control_plane, server_stats(),
  status_body(query) (optional), load_declarative(config, check_hash) (DB-less),
  notify_change() (optional).
* Headers: this module sets `Content-Type`, `Access-Control-Allow-Origin` and, on
  `/clustering/status`, `Deprecation: true`. `Server: kong/<version>` and
  `X-Kong-Admin-Latency` are added by the HTTP layer (node.py), which knows the
  `headers` setting and the request timing.
* When the database fails (for instance `IncompatibleSchema` after a newer
  `finish`), the answer is 500 `{"message":"An unexpected error occurred"}` and the
  error is logged.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl, quote

from . import declarative, schema
from .cli import runtime_versions
from .entities import ADMIN_NAMES, SPECS, StoreError, coerce_form, plugin_priority, plugin_version

LOG = logging.getLogger("kongemu.admin")

JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Access-Control-Allow-Origin": "*"}
MSG_NOT_FOUND = {"message": "Not found"}
MSG_METHOD_NOT_ALLOWED = {"message": "Method not allowed"}
MSG_UNEXPECTED = {"message": "An unexpected error occurred"}
MSG_CONFIG_DB = {"message": "this endpoint is only available when Kong is configured to not use a database"}
MSG_NOT_CP = {"message": "this endpoint is only available when Kong is configured to run as Control Plane "
                         "for the cluster"}

# parent collection -> {nested path segment: child entity}
NESTED = {
    "services": {"routes": "routes", "plugins": "plugins"},
    "routes": {"plugins": "plugins"},
    "consumers": {"plugins": "plugins", "key-auth": "keyauth_credentials"},
    "upstreams": {"targets": "targets"},
}

_ARRAY_OPTIONS = {"proxy_listen", "admin_listen", "status_listen", "cluster_listen", "admin_gui_listen", "plugins",
                  "headers", "trusted_ips", "stream_listen", "dns_order", "dns_resolver", "lua_ssl_protocols"}
_NUMBER_OPTIONS = {"pg_port", "pg_timeout", "db_update_frequency", "db_update_propagation", "db_cache_ttl",
                   "cluster_data_plane_purge_delay", "worker_state_update_frequency", "pg_max_concurrent_queries",
                   "pg_semaphore_timeout", "lua_socket_pool_size"}
_BOOLEAN_OPTIONS = {"anonymous_reports", "pg_ssl", "pg_ssl_verify", "cluster_mtls", "lua_ssl_verify_depth"}


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _json_body(status: int, body: Any, extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = dict(JSON_HEADERS)
    if extra:
        headers.update(extra)
    if body is None:
        return status, headers, b""
    return status, headers, json.dumps(body, separators=(",", ":")).encode("utf-8")


def _first(query: dict[str, Any], name: str) -> str | None:
    value = query.get(name)
    if isinstance(value, list):
        return value[-1] if value else None
    return value


# ---------------------------------------------------------------------------
# Request bodies (JSON, form-urlencoded, multipart)


def _split_key(key: str) -> list[Any]:
    """`config.key_names[]` -> ["config", "key_names", []]; `hosts[2]` -> ["hosts", 2]."""
    parts: list[Any] = []
    for piece in key.split("."):
        match = re.match(r"^([^\[]*)((?:\[[^\]]*\])*)$", piece)
        if not match:
            parts.append(piece)
            continue
        if match.group(1):
            parts.append(match.group(1))
        for idx in re.findall(r"\[([^\]]*)\]", match.group(2)):
            parts.append(int(idx) if idx.isdigit() else [])
    return parts


def _insert(target: dict[str, Any], path: list[Any], value: Any) -> None:
    node: Any = target
    for i, part in enumerate(path):
        last = i == len(path) - 1
        nxt = None if last else path[i + 1]
        if isinstance(part, list):  # append
            if last:
                node.append(value)
                return
            node.append({} if not isinstance(nxt, (list, int)) else [])
            node = node[-1]
            continue
        if isinstance(part, int):
            while len(node) < part:
                node.append(None)
            if last:
                node[part - 1] = value
                return
            if node[part - 1] is None:
                node[part - 1] = {} if not isinstance(nxt, (list, int)) else []
            node = node[part - 1]
            continue
        if last:
            if part in node:
                existing = node[part]
                node[part] = existing + [value] if isinstance(existing, list) else [existing, value]
            else:
                node[part] = value
            return
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = [] if isinstance(nxt, (list, int)) else {}
        node = node[part]


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        _insert(out, _split_key(key), value)
    return out


def _multipart(body: bytes, content_type: str) -> dict[str, Any]:
    raw = b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    pairs: list[tuple[str, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        pairs.append((str(name), payload.decode("utf-8", "replace")))
    return decode_form(pairs)


def parse_body(headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], bool]:
    """(params, is_form) of a request body; raises HttpError on bad JSON."""
    if not body:
        return {}, False
    ctype = (headers.get("content-type") or "").lower()
    if "application/json" in ctype:
        try:
            data = json.loads(body)
        except ValueError:
            raise HttpError(400, {"message": "Cannot parse JSON body"}) from None
        if not isinstance(data, dict):
            raise HttpError(400, {"message": "Cannot parse JSON body"})
        return data, False
    if "multipart/form-data" in ctype:
        return _multipart(body, headers.get("content-type") or ""), True
    text = body.decode("utf-8", "replace")
    if "x-www-form-urlencoded" in ctype or "=" in text and not text.lstrip().startswith(("{", "[")):
        return decode_form(parse_qsl(text, keep_blank_values=True)), True
    try:
        data = json.loads(text)
    except ValueError:
        return {}, False
    return (data, False) if isinstance(data, dict) else ({}, False)


# ---------------------------------------------------------------------------
# The application


class AdminApp:
    """Kong's Admin API for one node."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    @property
    def info(self) -> Any:
        return self.ctx.version_info

    @property
    def backend(self) -> Any:
        return self.ctx.backend

    @property
    def dbless(self) -> bool:
        return self.ctx.conf.database == "off"

    def handle(self, method: str, path: str, query: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None, body: bytes | None = None
               ) -> tuple[int, dict[str, str], bytes]:
        query = query or {}
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        method = method.upper()
        try:
            return self._route(method, path.split("?", 1)[0], query, headers, body or b"")
        except HttpError as exc:
            return _json_body(exc.status, exc.body)
        except declarative.DeclarativeError as exc:
            return _json_body(400, exc.body())
        except StoreError as exc:
            if exc.status >= 500:
                self._log_error(f"{method} {path}: {exc}")
            return _json_body(exc.status, exc.body())
        except Exception as exc:  # pylint: disable=broad-except
            # Kong answers any unexpected failure (DB down, bug) with a 500 and logs it.
            self._log_error(f"{method} {path}: {exc!r}")
            return _json_body(500, MSG_UNEXPECTED)

    def _log_error(self, message: str) -> None:
        node = getattr(self.ctx, "node", None)
        node_log = getattr(node, "log", None)
        if node_log is not None and hasattr(node_log, "error"):
            node_log.error(f"[admin] {message}")
        else:
            LOG.error("%s", message)

    # -- routing -------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, Any], headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        segments = [s for s in path.split("/") if s]
        if not segments:
            return self._only(method, "GET", self.root)
        head = segments[0]
        if segments == ["status"]:
            return self._only(method, "GET", lambda: self.status(query))
        if segments == ["config"]:
            return self.config(method, query, headers, body)
        if head == "clustering" and len(segments) == 2:
            return self.clustering(method, segments[1], query)
        if segments == ["plugins", "enabled"]:
            return self._only(method, "GET", lambda: _json_body(200, {"enabled_plugins": self._enabled_plugins()}))
        if head == "workspaces":
            return self.workspaces(method, segments[1:], query)
        entity = ADMIN_NAMES.get(head)
        if entity is None or entity == "workspaces":
            raise HttpError(404, MSG_NOT_FOUND)
        if len(segments) == 1:
            return self.collection(method, entity, query, headers, body, None)
        if len(segments) == 2:
            return self.item(method, entity, segments[1], headers, body, None)
        return self._nested(method, head, segments, query, headers, body)

    def _nested(self, method: str, head: str, segments: list[str], query: dict[str, Any],
                headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        parent_entity = ADMIN_NAMES[head]
        if head == "routes" and segments[2:] == ["service"]:
            return self._only(method, "GET", lambda: self._route_service(segments[1]))
        child = NESTED.get(head, {}).get(segments[2]) if len(segments) >= 3 else None
        if child is None or len(segments) > 4:
            raise HttpError(404, MSG_NOT_FOUND)
        parent = (parent_entity, segments[1])
        if len(segments) == 3:
            return self.collection(method, child, query, headers, body, parent)
        return self.item(method, child, segments[3], headers, body, parent)

    @staticmethod
    def _only(method: str, allowed: str, func: Any) -> tuple[int, dict[str, str], bytes]:
        if method != allowed:
            raise HttpError(405, MSG_METHOD_NOT_ALLOWED)
        return func()

    # -- GET / and /status ---------------------------------------------------------

    def root(self) -> tuple[int, dict[str, str], bytes]:
        info = self.info
        lua = runtime_versions(info)[2]
        enabled = self._enabled_plugins()
        body: dict[str, Any] = {
            "tagline": "Welcome to kong",
            "version": info.version,
            "hostname": self.ctx.hostname,
            "node_id": self.ctx.node_id,
            "timers": {"running": 0, "pending": 6},
            "plugins": {
                # 2.8 lists `true` per plugin (real 2.8.5); 3.x its version and priority
                "available_on_server": {name: True if info.major < 3 else
                                        {"version": plugin_version(name, info), "priority": plugin_priority(name, info)}
                                        for name in enabled},
                "enabled_in_cluster": self.backend.enabled_in_cluster() if self.backend is not None else [],
            },
            "lua_version": lua,
            "configuration": configuration_view(self.ctx.conf, enabled),
            "pids": self.ctx.pids,
        }
        if info.has_edition:
            body["edition"] = "community"
        return _json_body(200, body)

    def _enabled_plugins(self) -> list[str]:
        from .migrations import loaded_plugins  # pylint: disable=import-outside-toplevel

        return sorted(loaded_plugins(self.info, self.ctx.conf))

    def status(self, query: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        status_body = getattr(self.ctx, "status_body", None)
        if callable(status_body):
            code, body = status_body(query)
        else:
            code, body = fallback_status_body(self.ctx)
        return _json_body(code, body)

    # -- /config (DB-less) ------------------------------------------------------------

    def config(self, method: str, query: dict[str, Any], headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        if method not in ("GET", "POST"):
            raise HttpError(405, MSG_METHOD_NOT_ALLOWED)
        if not self.dbless:
            raise HttpError(400, MSG_CONFIG_DB)
        if method == "GET":
            entities = self.backend.export() if self.backend is not None else {}
            return _json_body(200, {"config": declarative.export_yaml(entities, self.info)})
        config = self._config_payload(headers, body)
        check_hash = (_first(query, "check_hash") or "").lower() in ("1", "true", "yes", "on")
        changed, store = self.ctx.load_declarative(config, check_hash)
        if not changed:
            return _json_body(304, None)
        self._notify()
        entities = getattr(store, "entities", {}) or {}
        return _json_body(201, {name: {row["id"]: row for row in rows} for name, rows in entities.items()
                                if rows and name in SPECS})

    @staticmethod
    def _config_payload(headers: dict[str, str], body: bytes) -> Any:
        ctype = (headers.get("content-type") or "").lower()
        if "multipart/form-data" in ctype or "x-www-form-urlencoded" in ctype:
            params = parse_body(headers, body)[0]
            config = params.get("config")
            if not isinstance(config, str):
                raise HttpError(400, {"message": "expected a declarative configuration"})
            return config
        if "application/json" in ctype:
            try:
                data = json.loads(body or b"null")
            except ValueError:
                raise HttpError(400, {"message": "Cannot parse JSON body"}) from None
            if isinstance(data, dict) and isinstance(data.get("config"), str):
                return data["config"]
            if isinstance(data, dict) and "_format_version" in data:
                return data
            raise HttpError(400, {"message": "expected a declarative configuration"})
        text = body.decode("utf-8", "replace")
        if not text.strip():
            raise HttpError(400, {"message": "expected a declarative configuration"})
        return text

    # -- /clustering -------------------------------------------------------------------

    def clustering(self, method: str, what: str, query: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if what not in ("data-planes", "status"):
            raise HttpError(404, MSG_NOT_FOUND)
        if method in ("DELETE", "PATCH"):
            raise HttpError(404, MSG_NOT_FOUND)
        if method != "GET":
            raise HttpError(405, MSG_METHOD_NOT_ALLOWED)
        if not self.ctx.is_control_plane:
            raise HttpError(400, MSG_NOT_CP)
        if what == "data-planes":
            page = self.backend.data_planes(_first(query, "size"), _first(query, "offset"))
            return _json_body(200, self._page_body(page, "/clustering/data-planes", None))
        out: dict[str, Any] = {}
        offset = None
        while True:
            page = self.backend.data_planes(1000, offset)
            for dp in page.data:
                out[dp["id"]] = {"config_hash": dp["config_hash"], "hostname": dp["hostname"], "ip": dp["ip"],
                                 "last_seen": dp["last_seen"]}
            offset = page.offset
            if not offset:
                break
        return _json_body(200, out, {"Deprecation": "true"})

    # -- workspaces --------------------------------------------------------------------

    def workspaces(self, method: str, rest: list[str], query: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if method != "GET":
            raise HttpError(405, MSG_METHOD_NOT_ALLOWED)
        if len(rest) > 1:
            raise HttpError(404, MSG_NOT_FOUND)
        if self.dbless or not hasattr(self.backend, "ws_id"):
            default = {"id": "00000000-0000-0000-0000-000000000000", "name": "default", "comment": None,
                       "config": None, "meta": None, "created_at": None, "updated_at": None}
            if rest and rest[0] not in ("default", default["id"]):
                raise HttpError(404, MSG_NOT_FOUND)
            return _json_body(200, default if rest else {"data": [default], "next": None})
        if rest:
            return _json_body(200, self.backend.get("workspaces", rest[0]))
        page = self.backend.page("workspaces", _first(query, "size"), _first(query, "offset"))
        return _json_body(200, self._page_body(page, "/workspaces", None))

    # -- entities ---------------------------------------------------------------------

    def _page_body(self, page: schema.Page, base: str, tags: str | None, size: str | None = None,
                   nested: bool = False) -> dict[str, Any]:
        """api/endpoints.lua: `next` carries the request's tags and size on top-level
        collections, nothing but the offset on nested ones (real 3.4.2)."""
        out: dict[str, Any] = {"data": page.data, "next": None}
        if page.offset:
            suffix = ""
            if not nested:
                suffix = (f"&tags={quote(tags, safe='')}" if tags else "") + (f"&size={size}" if size else "")
            out["next"] = f"{base}?offset={quote(page.offset, safe='')}{suffix}"
            out["offset"] = page.offset
        return out

    def collection(self, method: str, entity: str, query: dict[str, Any], headers: dict[str, str], body: bytes,
                   parent: tuple[str, str] | None) -> tuple[int, dict[str, str], bytes]:
        spec = SPECS[entity]
        base = "/" + spec.admin_name
        if parent is not None:
            parent_spec = SPECS[parent[0]]
            child_segment = next(k for k, v in NESTED[parent_spec.admin_name].items() if v == entity)
            base = f"/{parent_spec.admin_name}/{parent[1]}/{child_segment}"
        if method == "GET":
            tags = _first(query, "tags")
            page = self.backend.page(entity, _first(query, "size"), _first(query, "offset"), tags, None, parent)
            if parent is not None and page.offset:  # the foreign key of the next link is the parent's id
                base = f"/{SPECS[parent[0]].admin_name}/{self.backend.get(parent[0], parent[1])['id']}/{child_segment}"
            return _json_body(200, self._page_body(page, base, tags, _first(query, "size"), parent is not None))
        if method == "POST":
            params = self._params(spec, headers, body)
            created = self.backend.insert(entity, params, parent)
            self._after_write(entity, created["id"])
            return _json_body(201, created)
        raise HttpError(405, MSG_METHOD_NOT_ALLOWED)

    def item(self, method: str, entity: str, key: str, headers: dict[str, str], body: bytes,
             parent: tuple[str, str] | None) -> tuple[int, dict[str, str], bytes]:
        spec = SPECS[entity]
        if method == "GET":
            return _json_body(200, self.backend.get(entity, key, parent))
        if method == "PATCH":
            updated = self.backend.update(entity, key, self._params(spec, headers, body), parent)
            self._after_write(entity, updated["id"])
            return _json_body(200, updated)
        if method == "PUT":
            saved = self.backend.upsert(entity, key, self._params(spec, headers, body), parent)
            self._after_write(entity, saved["id"])
            return _json_body(200, saved)
        if method == "DELETE":
            deleted = self.backend.delete(entity, key, parent)
            if deleted:
                self._after_write(entity, deleted)
            return _json_body(204, None)
        raise HttpError(405, MSG_METHOD_NOT_ALLOWED)

    def _route_service(self, route_key: str) -> tuple[int, dict[str, str], bytes]:
        route = self.backend.get("routes", route_key)
        if not route.get("service"):
            raise HttpError(404, MSG_NOT_FOUND)
        return _json_body(200, self.backend.get("services", route["service"]["id"]))

    @staticmethod
    def _params(spec: Any, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        params, is_form = parse_body(headers, body)
        return coerce_form(spec, params) if is_form else params

    def _after_write(self, entity: str, entity_id: str) -> None:
        """Post the invalidation event other nodes poll, and tell the local node."""
        post = getattr(self.backend, "post_invalidation", None)
        if post is not None:
            # core entities go to the core cache's channel (its own from 3.7), the rest to
            # `invalidations` (versions.core_cache_channel)
            channel = (self.ctx.version_info.core_cache_channel if cache_kind(entity) != "consumers"
                       else "invalidations")
            try:
                post(self.ctx.node_id, f"{entity}:{entity_id}", channel)
            except Exception as exc:  # pylint: disable=broad-except
                self._log_error(f"could not post the invalidation event for {entity}:{entity_id}: {exc!r}")
        self._notify(entity)

    def _notify(self, entity: str | None = None) -> None:
        notify = getattr(self.ctx, "notify_change", None)
        if callable(notify):
            notify(entity)


# ---------------------------------------------------------------------------
# Helpers


def cache_kind(entity: str | None) -> str:
    """What a node rebuilds when ``entity`` changes: the router (services, routes,
    upstreams, targets), the plugins iterator (plugins), or neither (consumers and
    credentials are read per request through the other cache)."""
    if entity == "plugins":
        return "plugins"
    if entity in ("services", "routes", "upstreams", "targets"):
        return "router"
    return "consumers"


def configuration_view(conf: Any, enabled_plugins: list[str]) -> dict[str, Any]:
    """`GET /` configuration: the loaded options, secrets masked, Kong's types."""
    out: dict[str, Any] = {}
    for key, value in conf.masked().items():
        out[key] = _typed_option(key, value)
    out["prefix"] = conf.prefix
    out["loaded_plugins"] = {name: True for name in enabled_plugins}
    out["database"] = conf.database
    out["role"] = conf.role
    return out


def _typed_option(key: str, value: str) -> Any:
    if value is None:
        return None
    if key in _ARRAY_OPTIONS or key.endswith("_listen"):
        return [item.strip() for item in value.split(",") if item.strip()]
    if key in _NUMBER_OPTIONS:
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    if key in _BOOLEAN_OPTIONS and value.lower() in ("on", "off", "true", "false"):
        return value.lower() in ("on", "true")
    return value


def fallback_status_body(ctx: Any) -> tuple[int, dict[str, Any]]:
    """`/status` when the context does not build it (kong-facts 6.2)."""
    stats = ctx.server_stats() if hasattr(ctx, "server_stats") else {}
    server = {name: int(stats.get(name, 0)) for name in (
        "connections_active", "connections_reading", "connections_writing", "connections_waiting",
        "connections_accepted", "connections_handled", "total_requests")}
    body: dict[str, Any] = {
        "memory": {"lua_shared_dicts": {"kong": {"capacity": "5.00 MiB", "allocated_slabs": "0.04 MiB"},
                                        "kong_db_cache": {"capacity": "128.00 MiB", "allocated_slabs": "0.80 MiB"}},
                   "workers_lua_vms": [{"pid": (ctx.pids or {}).get("master"), "http_allocated_gc": "20.00 MiB"}]},
        "server": server,
    }
    dbless = ctx.conf.database == "off" or ctx.conf.role == "data_plane"
    if dbless:
        body["configuration_hash"] = ctx.configuration_hash or declarative.EMPTY_HASH
        if ctx.version_info.dbless_status_has_database:
            body["database"] = {"reachable": True}
    else:
        body["database"] = {"reachable": bool(ctx.db_reachable())}
    return 200, body
