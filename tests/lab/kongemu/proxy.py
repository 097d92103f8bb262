"""Proxy request handling: router, key-auth, forwarding, Kong's headers (kong-facts 6.6).

The router is built once per configuration (services, routes, consumers, plugins,
key-auth credentials, upstreams, targets) and swapped atomically by the node.

Matching (a faithful subset of Kong's router):
* hosts: exact (port optional) and wildcard (`*.example.com`, `example.*`);
* paths: prefix (longest wins) and regex (3.x: paths starting with `~`; 2.x: paths
  with regex characters, and from 2.8.2 also `~` paths), regex paths first by
  `regex_priority`;
* methods and `headers` (exact, case-insensitive values);
* a route with more matching attributes wins (host+path over path only).

Plugins: only `key-auth` is enforced (route > service > global scope). Other plugins
are accepted in the configuration and ignored, except a rate-limiting or
response-ratelimiting plugin with `policy = redis` and no redis host for this release
(what an older release reads after a newer `finish` removed `redis_*`): it fails every
request it runs on with 500, as it does on real Kong.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from .httpserver import Request, Response
from .versions import VersionInfo

if TYPE_CHECKING:  # pragma: no cover
    from .node import Node

JSON = "application/json; charset=utf-8"
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
    "content-length",
})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_REGEX_CHARS_2X = re.compile(r"[^A-Za-z0-9\-._~/%]")


def entities(config: Any, name: str) -> list[dict[str, Any]]:
    """Read a list of entity dicts from a Config object or a dict."""
    aliases = {"keyauth_credentials": ("keyauth_credentials", "key_auth_credentials",
                                       "keyauth_credential")}
    for key in aliases.get(name, (name,)):
        if isinstance(config, dict):
            value = config.get(key)
        else:
            value = getattr(config, key, None)
        if value is not None:
            return list(value)
    return []


def ref(value: Any) -> str | None:
    """A foreign key as written by Kong ({"id": ...}) or a plain id."""
    if value is None:
        return None
    if isinstance(value, dict):
        found = value.get("id")
        return str(found) if found is not None else None
    return str(value)


@dataclass
class Target:
    host: str
    port: int


@dataclass
class Service:
    id: str
    name: str | None
    protocol: str
    host: str
    port: int
    path: str | None
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    retries: int
    enabled: bool = True


@dataclass
class Route:
    id: str
    name: str | None
    service_id: str | None
    hosts: list[str]
    paths: list[str]
    methods: frozenset[str]
    headers: dict[str, frozenset[str]]
    protocols: list[str]
    strip_path: bool
    preserve_host: bool
    regex_priority: int
    created_at: float
    https_redirect_status_code: int = 426
    regexes: list[tuple[re.Pattern[str], str]] = field(default_factory=list)


@dataclass
class KeyAuth:
    key_names: list[str]
    hide_credentials: bool
    anonymous: str | None
    key_in_header: bool
    key_in_query: bool
    key_in_body: bool


@dataclass
class Match:
    route: Route
    service: Service | None
    matched_path: str | None


class Balancer:
    """Weighted round robin over an upstream's targets."""

    def __init__(self, name: str, targets: list[tuple[str, int, int]]) -> None:
        self.name = name
        ring: list[Target] = []
        for host, port, weight in targets:
            ring.extend([Target(host, port)] * max(0, weight))
        self.ring = _interleave(ring)
        self._counter = itertools.count()

    def pick(self) -> Target | None:
        if not self.ring:
            return None
        return self.ring[next(self._counter) % len(self.ring)]


def _interleave(ring: list[Target]) -> list[Target]:
    by_key: dict[tuple[str, int], list[Target]] = {}
    for target in ring:
        by_key.setdefault((target.host, target.port), []).append(target)
    out: list[Target] = []
    queues = list(by_key.values())
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop())
    return out


def _plugin_failure(plugin: dict[str, Any], version_info: VersionInfo) -> str | None:
    """A plugin whose configuration makes it raise on every request (real 3.4.2 after 3.9.1's
    finish: rate-limiting with policy redis and no `redis_host` -> `bad argument #1 host:
    string expected, got nil`, 500 from Kong)."""
    cfg = plugin.get("config") or {}
    if cfg.get("policy") != "redis":
        return None
    if version_info.at_least(3, 6):
        host = (cfg.get("redis") or {}).get("host") if isinstance(cfg.get("redis"), dict) else None
    else:
        host = cfg.get("redis_host")
    if host is None:
        return (f"[{plugin.get('name')}] .../kong/plugins/{plugin.get('name')}/policies/init.lua:94: "
                "bad argument #1 host: string expected, got nil")
    return None


def _split_host_port(value: str) -> tuple[str, int | None]:
    value = value.strip().lower()
    if value.startswith("["):
        host, _sep, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port) if port.isdigit() else None
    return value, None


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("true", "1", "yes", "on")


def _timeout(value: Any) -> float:
    try:
        return max(float(value) / 1000.0, 0.001)
    except (TypeError, ValueError):
        return 60.0


class Router:
    """Routes, services, credentials and balancers of one configuration."""

    def __init__(self, config: Any, version_info: VersionInfo) -> None:
        self.version_info = version_info
        self.services: dict[str, Service] = {}
        for svc in entities(config, "services"):
            port = svc.get("port")
            protocol = (svc.get("protocol") or "http").lower()
            self.services[str(svc["id"])] = Service(
                id=str(svc["id"]), name=svc.get("name"), protocol=protocol,
                host=str(svc.get("host") or ""),
                port=int(port) if port else (443 if protocol == "https" else 80),
                path=svc.get("path"), connect_timeout=_timeout(svc.get("connect_timeout", 60000)),
                read_timeout=_timeout(svc.get("read_timeout", 60000)),
                write_timeout=_timeout(svc.get("write_timeout", 60000)),
                retries=int(svc.get("retries") if svc.get("retries") is not None else 5),
                enabled=_bool(svc.get("enabled"), True),
            )
        self.consumers = {str(c["id"]): c for c in entities(config, "consumers")}
        self.consumers_by_name = {c.get("username"): c for c in self.consumers.values()
                                  if c.get("username")}
        self.credentials: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        for cred in entities(config, "keyauth_credentials"):
            key = cred.get("key")
            if key is None:
                continue
            consumer = self.consumers.get(ref(cred.get("consumer")) or "")
            self.credentials[str(key)] = (cred, consumer)
        self._build_plugins(entities(config, "plugins"))
        self._build_balancers(entities(config, "upstreams"), entities(config, "targets"))
        self._build_routes(entities(config, "routes"))

    # ------------------------------------------------------------------ build
    def _build_plugins(self, plugins: list[dict[str, Any]]) -> None:
        self.keyauth_global: KeyAuth | None = None
        self.keyauth_service: dict[str, KeyAuth] = {}
        self.keyauth_route: dict[str, KeyAuth] = {}
        self.keyauth_route_service: dict[tuple[str, str], KeyAuth] = {}
        self.failing: dict[tuple[str | None, str | None], str] = {}
        for plugin in plugins:
            if plugin.get("name") in ("rate-limiting", "response-ratelimiting") \
                    and _bool(plugin.get("enabled"), True) and not ref(plugin.get("consumer")):
                failure = _plugin_failure(plugin, self.version_info)
                if failure is not None:
                    self.failing[(ref(plugin.get("route")), ref(plugin.get("service")))] = failure
            if plugin.get("name") != "key-auth" or not _bool(plugin.get("enabled"), True):
                continue
            if ref(plugin.get("consumer")):
                continue
            cfg = plugin.get("config") or {}
            names = cfg.get("key_names") or ["apikey"]
            auth = KeyAuth(
                key_names=[str(n) for n in names],
                hide_credentials=_bool(cfg.get("hide_credentials"), False),
                anonymous=cfg.get("anonymous") or None,
                key_in_header=_bool(cfg.get("key_in_header"), True),
                key_in_query=_bool(cfg.get("key_in_query"), True),
                key_in_body=_bool(cfg.get("key_in_body"), False),
            )
            route_id, service_id = ref(plugin.get("route")), ref(plugin.get("service"))
            if route_id and service_id:
                self.keyauth_route_service[(route_id, service_id)] = auth
            elif route_id:
                self.keyauth_route[route_id] = auth
            elif service_id:
                self.keyauth_service[service_id] = auth
            else:
                self.keyauth_global = auth

    def _build_balancers(self, upstreams: list[dict[str, Any]],
                         targets: list[dict[str, Any]]) -> None:
        by_upstream: dict[str, list[tuple[str, int, int]]] = {}
        for tgt in targets:
            upstream_id = ref(tgt.get("upstream"))
            if not upstream_id:
                continue
            host, port = _split_host_port(str(tgt.get("target", "")))
            weight = int(tgt.get("weight") if tgt.get("weight") is not None else 100)
            by_upstream.setdefault(upstream_id, []).append((host, port or 8000, weight))
        self.balancers: dict[str, Balancer] = {}
        for ups in upstreams:
            name = str(ups.get("name", "")).lower()
            self.balancers[name] = Balancer(name, by_upstream.get(str(ups["id"]), []))

    def _build_routes(self, routes: list[dict[str, Any]]) -> None:
        v3 = self.version_info.major >= 3
        # 2.8.2+ also routes 3.0's `~` regex paths (Kong/kong#9376, for blue-green to 3.x:
        # core 016_280_to_300 rewrites regex paths in `up`); 2.8.0/2.8.1 read `~...` as a
        # regex that starts with a literal `~`, so those routes stop matching.
        tilde_2x = self.version_info.at_least(2, 8, 2)
        # host key (exact host, "*wild", or "") -> routes
        self.exact: dict[str, list[Route]] = {}
        wildcards: dict[str, list[Route]] = {}
        self.hostless: list[Route] = []
        self.count = 0
        for raw in routes:
            service_id = ref(raw.get("service"))
            service = self.services.get(service_id or "")
            if service is not None and not service.enabled:
                continue
            headers = {}
            for name, values in (raw.get("headers") or {}).items():
                if isinstance(values, str):
                    values = [values]
                headers[name.lower()] = frozenset(str(v).lower() for v in values)
            paths = [str(p) for p in (raw.get("paths") or [])]
            route = Route(
                id=str(raw["id"]), name=raw.get("name"), service_id=service_id,
                hosts=[str(h).lower() for h in (raw.get("hosts") or [])],
                paths=paths,
                methods=frozenset(str(m).upper() for m in (raw.get("methods") or [])),
                headers=headers,
                protocols=[str(p).lower() for p in (raw.get("protocols") or ["http", "https"])],
                strip_path=_bool(raw.get("strip_path"), True),
                preserve_host=_bool(raw.get("preserve_host"), False),
                regex_priority=int(raw.get("regex_priority") or 0),
                created_at=float(raw.get("created_at") or 0),
                https_redirect_status_code=int(raw.get("https_redirect_status_code") or 426),
            )
            if not set(route.protocols) & {"http", "https", "grpc", "grpcs"}:
                continue
            for path in paths:
                if path.startswith("~") and (v3 or tilde_2x):
                    route.regexes.append((re.compile(path[1:]), path))
                elif not v3 and _REGEX_CHARS_2X.search(path):
                    route.regexes.append((re.compile(path), path))
            self.count += 1
            if not route.hosts:
                self.hostless.append(route)
            for host in route.hosts:
                if "*" in host:
                    wildcards.setdefault(host, []).append(route)
                else:
                    self.exact.setdefault(host, []).append(route)
        self.wildcards: list[tuple[re.Pattern[str], _PathIndex]] = []
        for host, group in wildcards.items():
            pattern = re.escape(host).replace(r"\*", r"[^.]+")
            self.wildcards.append((re.compile(f"^{pattern}$"), _PathIndex(group)))
        self.exact_index = {h: _PathIndex(rs) for h, rs in self.exact.items()}
        self.hostless_index = _PathIndex(self.hostless)

    # ------------------------------------------------------------------ match
    def match(self, method: str, host: str, path: str,
              headers: dict[str, str]) -> Match | None:
        host_l, port = _split_host_port(host or "")
        candidates: list[_PathIndex] = []
        if port is not None:
            idx = self.exact_index.get(f"{host_l}:{port}")
            if idx is not None:
                candidates.append(idx)
        idx = self.exact_index.get(host_l)
        if idx is not None:
            candidates.append(idx)
        for pattern, wild_index in self.wildcards:
            if pattern.match(host_l):
                candidates.append(wild_index)
        candidates.append(self.hostless_index)
        for index in candidates:
            found = index.find(method, path, headers)
            if found is not None:
                route, matched = found
                return Match(route, self.services.get(route.service_id or ""), matched)
        return None

    def failing_plugin(self, route: Route, service: Service | None) -> str | None:
        """The error of a plugin that fails every request it runs on (most specific scope)."""
        if not self.failing:
            return None
        service_id = service.id if service is not None else None
        for key in ((route.id, service_id), (route.id, None), (None, service_id), (None, None)):
            if key in self.failing:
                return self.failing[key]
        return None

    def keyauth_for(self, route: Route, service: Service | None) -> KeyAuth | None:
        if service is not None:
            found = self.keyauth_route_service.get((route.id, service.id))
            if found is not None:
                return found
        found = self.keyauth_route.get(route.id)
        if found is not None:
            return found
        if service is not None:
            found = self.keyauth_service.get(service.id)
            if found is not None:
                return found
        return self.keyauth_global


class _PathIndex:
    """Routes sharing a host key, indexed by path prefix."""

    def __init__(self, routes: list[Route]) -> None:
        self.prefixes: dict[str, list[Route]] = {}
        self.regex: list[tuple[int, float, re.Pattern[str], str, Route]] = []
        self.pathless: list[Route] = []
        self.max_len = 0
        for route in routes:
            plain = [p for p in route.paths if p not in {raw for _pat, raw in route.regexes}]
            for pattern, raw in route.regexes:
                self.regex.append((route.regex_priority, route.created_at, pattern, raw, route))
            for path in plain:
                self.prefixes.setdefault(path, []).append(route)
                self.max_len = max(self.max_len, len(path))
            if not route.paths:
                self.pathless.append(route)
        self.regex.sort(key=lambda item: (-item[0], item[1]))
        for group in self.prefixes.values():
            group.sort(key=_specificity)
        self.pathless.sort(key=_specificity)

    def find(self, method: str, path: str,
             headers: dict[str, str]) -> tuple[Route, str | None] | None:
        for _prio, _created, pattern, _raw, route in self.regex:
            matched = pattern.match(path)
            if matched and _extra_ok(route, method, headers):
                return route, matched.group(0)
        upto = min(len(path), self.max_len)
        for length in range(upto, 0, -1):
            group = self.prefixes.get(path[:length])
            if group:
                for route in group:
                    if _extra_ok(route, method, headers):
                        return route, path[:length]
        for route in self.pathless:
            if _extra_ok(route, method, headers):
                return route, None
        return None


def _specificity(route: Route) -> tuple[int, float]:
    return (-(bool(route.methods) + len(route.headers)), route.created_at)


def _extra_ok(route: Route, method: str, headers: dict[str, str]) -> bool:
    if route.methods and method not in route.methods:
        return False
    for name, values in route.headers.items():
        got = headers.get(name)
        if got is None or got.lower() not in values:
            return False
    return True


# ============================================================================ forwarding
class _Pools(threading.local):
    def __init__(self) -> None:
        super().__init__()
        self.idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = {}


class ProxyApp:
    """The proxy listener's request handler."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.pools = _Pools()
        self.version = node.version_info.version
        self.server_token = f"kong/{self.version}"
        self.via_token = (f"1.1 kong/{self.version}" if node.version_info.via_includes_protocol
                          else f"kong/{self.version}")
        self.request_id = node.version_info.at_least(3, 5)

    # ------------------------------------------------------------------ responses
    def kong_response(self, status: int, message: str, start: float,
                      extra: list[tuple[str, str]] | None = None,
                      request_id: str | None = None) -> Response:
        headers = [("Content-Type", JSON)]
        if self.node.header_enabled("latency_tokens"):
            headers.append(("X-Kong-Response-Latency", str(int((time.monotonic() - start) * 1000))))
        if self.node.header_enabled("server_tokens"):
            headers.append(("Server", self.server_token))
        if request_id:
            headers.append(("X-Kong-Request-Id", request_id))
        if extra:
            headers.extend(extra)
        body = json.dumps({"message": message}, separators=(",", ":")).encode()
        return Response(status, headers, body)

    def handle(self, request: Request) -> Response:
        node = self.node
        start = request.start
        rid = uuid.uuid4().hex if (self.request_id and
                                   node.header_enabled("x-kong-request-id")) else None
        router = node.router
        if node.config_error is not None or router is None:
            response = self.kong_response(500, "An unexpected error occurred", start,
                                          request_id=rid)
            node.metrics.observe("", "", response.status, "kong", 0.0, 0.0)
            node.proxy_access.write(request, response)
            return response
        hmap = request.header_map()
        path = request.unquoted_path
        match = router.match(request.method, hmap.get("host", ""), path, hmap)
        if match is None:
            response = self.kong_response(404, "no Route matched with those values", start,
                                          request_id=rid)
            node.metrics.observe("", "", 404, "kong", 0.0, 0.0)
            node.proxy_access.write(request, response)
            return response
        route, service = match.route, match.service
        svc_name = (service.name or service.id) if service else ""
        route_name = route.name or route.id
        if "http" not in route.protocols and "https" in route.protocols:
            response = self.kong_response(route.https_redirect_status_code,
                                          "Please use HTTPS protocol", start,
                                          request_id=rid)
            node.metrics.observe(svc_name, route_name, response.status, "kong", 0.0, 0.0)
            node.proxy_access.write(request, response)
            return response
        if service is None:
            response = self.kong_response(503, "no Service found with those values", start,
                                          request_id=rid)
            node.metrics.observe("", route_name, 503, "kong", 0.0, 0.0)
            node.proxy_access.write(request, response)
            return response
        upstream_headers = list(request.headers)
        query = request.raw_query
        auth = router.keyauth_for(route, service)
        if auth is not None:
            denied, upstream_headers, query = self._key_auth(
                auth, router, request, upstream_headers, query, start, rid)
            if denied is not None:
                node.metrics.observe(svc_name, route_name, denied.status, "kong", 0.0, 0.0)
                node.proxy_access.write(request, denied)
                return denied
        failure = router.failing_plugin(route, service)
        if failure is not None:
            node.log.error(f"[kong] init.lua:363 {failure}, client: {request.client_addr[0]}, "
                           f"server: kong, request: \"{request.method} {request.target} HTTP/1.1\"")
            response = self.kong_response(500, "An unexpected error occurred", start, request_id=rid)
            node.metrics.observe(svc_name, route_name, 500, "kong", 0.0, 0.0)
            node.proxy_access.write(request, response)
            return response
        faults = getattr(node, "faults", None)
        fault = faults.next_fault() if faults is not None else None
        if fault is not None:
            # Test-only fault injection (kongemu.faults): Kong itself answers 5xx.
            response = self.kong_response(fault.status, fault.message, start, request_id=rid)
            node.metrics.observe(svc_name, route_name, fault.status, "kong", 0.0, 0.0)
            node.proxy_access.write(request, response)
            return response
        response = self._forward(request, route, service, match.matched_path, upstream_headers,
                                 query, start, rid, router, svc_name, route_name)
        node.proxy_access.write(request, response)
        return response

    # ------------------------------------------------------------------ key-auth
    def _key_auth(self, auth: KeyAuth, router: Router, request: Request,
                  headers: list[tuple[str, str]], query: str, start: float,
                  rid: str | None) -> tuple[Response | None, list[tuple[str, str]], str]:
        key = None
        found_in = None
        found_name = None
        hmap = request.header_map()
        qpairs = parse_qsl(query, keep_blank_values=True) if query else []
        for name in auth.key_names:
            if auth.key_in_header and name.lower() in hmap:
                key, found_in, found_name = hmap[name.lower()], "header", name
                break
            if auth.key_in_query:
                for qname, qvalue in qpairs:
                    if qname == name:
                        key, found_in, found_name = qvalue, "query", name
                        break
                if key is not None:
                    break
        consumer: dict[str, Any] | None = None
        credential: dict[str, Any] | None = None
        if key is None or key == "":
            if auth.anonymous:
                consumer = router.consumers.get(auth.anonymous) or \
                    router.consumers_by_name.get(auth.anonymous)
                if consumer is None:
                    return (self.kong_response(500, "An unexpected error occurred", start,
                                               request_id=rid), headers, query)
            else:
                extra = [("WWW-Authenticate", 'Key realm="kong"')] \
                    if self.node.version_info.major >= 3 else None
                return (self.kong_response(401, "No API key found in request", start, extra,
                                           request_id=rid), headers, query)
        else:
            found = router.credentials.get(key)
            if found is None or found[1] is None:
                if auth.anonymous:
                    consumer = router.consumers.get(auth.anonymous) or \
                        router.consumers_by_name.get(auth.anonymous)
                if consumer is None:
                    extra = [("WWW-Authenticate", 'Key realm="kong"')] \
                        if self.node.version_info.major >= 3 else None
                    return (self.kong_response(401, "Invalid authentication credentials", start,
                                               extra, request_id=rid), headers, query)
            else:
                credential, consumer = found
        if auth.hide_credentials and found_name is not None:
            if found_in == "header":
                headers = [(k, v) for k, v in headers if k.lower() != found_name.lower()]
            else:
                query = urlencode([(k, v) for k, v in qpairs if k != found_name])
        headers = [(k, v) for k, v in headers if not k.lower().startswith("x-consumer-")
                   and k.lower() not in ("x-credential-identifier", "x-anonymous-consumer")]
        if consumer is not None:
            headers.append(("X-Consumer-ID", str(consumer.get("id"))))
            if consumer.get("custom_id"):
                headers.append(("X-Consumer-Custom-ID", str(consumer["custom_id"])))
            if consumer.get("username"):
                headers.append(("X-Consumer-Username", str(consumer["username"])))
            if credential is not None:
                headers.append(("X-Credential-Identifier", str(credential.get("id"))))
            else:
                headers.append(("X-Anonymous-Consumer", "true"))
        return None, headers, query

    # ------------------------------------------------------------------ upstream
    def _upstream_uri(self, route: Route, service: Service, path: str,
                      matched: str | None, query: str) -> str:
        raw_path = path
        if route.strip_path and matched:
            rest = raw_path[len(matched):]
        else:
            rest = raw_path
        base = service.path or "/"
        if not rest:
            uri = base
        elif base.endswith("/") and rest.startswith("/"):
            uri = base + rest[1:]
        else:
            uri = base + rest
        uri = quote(uri, safe="/%:@!$&'()*+,;=-._~")
        return f"{uri}?{query}" if query else uri

    def _forward(self, request: Request, route: Route, service: Service,
                 matched: str | None, headers: list[tuple[str, str]], query: str,
                 start: float, rid: str | None, router: Router, svc_name: str,
                 route_name: str) -> Response:
        node = self.node
        balancer = router.balancers.get(service.host.lower())
        tries = 1 + max(0, min(service.retries, 5))
        uri = self._upstream_uri(route, service, request.unquoted_path, matched, query)
        client_host = request.header("host", "") or ""
        out_headers = self._upstream_headers(request, headers, client_host, route, service, rid)
        last_error: Exception | None = None
        proxy_latency = 0.0
        for attempt in range(tries):
            if balancer is not None:
                target = balancer.pick()
                if target is None:
                    node.metrics.observe(svc_name, route_name, 503, "kong", 0.0, 0.0)
                    return self.kong_response(503, "failure to get a peer from the ring-balancer",
                                              start, request_id=rid)
                host, port = target.host, target.port
            else:
                host, port = service.host, service.port
            if not route.preserve_host or not client_host:
                host_header = host if port in (80, 443) else f"{host}:{port}"
                hdrs = [("Host", host_header)] + out_headers
            else:
                hdrs = [("Host", client_host)] + out_headers
            up_start = time.monotonic()
            proxy_latency = up_start - start
            try:
                status, resp_headers, body = self._send(
                    host, port, service, request.method, uri, hdrs, request.body)
            except TimeoutError as exc:
                last_error = exc
                node.log.error(f"upstream timed out while reading response header from "
                               f"upstream, upstream: \"http://{host}:{port}{uri}\"")
                node.metrics.observe(svc_name, route_name, 504, "kong", 0.0, 0.0)
                return self.kong_response(504, "The upstream server is timing out", start,
                                          request_id=rid)
            except (OSError, http.client.HTTPException) as exc:
                last_error = exc
                node.log.error(f"connect() failed ({exc}) while connecting to upstream, "
                               f"upstream: \"http://{host}:{port}{uri}\" (try {attempt + 1})")
                if request.method not in IDEMPOTENT and not isinstance(exc, ConnectionRefusedError):
                    break
                continue
            upstream_latency = time.monotonic() - up_start
            return self._client_response(status, resp_headers, body, proxy_latency,
                                         upstream_latency, rid, svc_name, route_name)
        del last_error
        node.metrics.observe(svc_name, route_name, 502, "kong", proxy_latency, 0.0)
        return self.kong_response(502, "An invalid response was received from the upstream "
                                  "server", start, request_id=rid)

    def _upstream_headers(self, request: Request, headers: list[tuple[str, str]],
                          client_host: str, route: Route, service: Service,
                          rid: str | None) -> list[tuple[str, str]]:
        del route, service
        client_ip = request.client_addr[0]
        hmap = request.header_map()
        connection_tokens = {t.strip().lower() for t in hmap.get("connection", "").split(",")}
        out: list[tuple[str, str]] = []
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname in connection_tokens or lname == "host":
                continue
            if lname.startswith("x-forwarded-") or lname == "x-real-ip":
                continue
            out.append((name, value))
        xff = hmap.get("x-forwarded-for")
        out.append(("X-Forwarded-For", f"{xff}, {client_ip}" if xff else client_ip))
        out.append(("X-Forwarded-Proto", "http"))
        out.append(("X-Forwarded-Host", _split_host_port(client_host)[0] if client_host
                    else request.local_addr[0]))
        out.append(("X-Forwarded-Port", str(request.local_addr[1])))
        if self.node.version_info.major >= 3:
            out.append(("X-Forwarded-Path", request.path))
        out.append(("X-Real-IP", client_ip))
        if rid:
            out.append(("X-Kong-Request-Id", rid))
        return out

    def _send(self, host: str, port: int, service: Service, method: str, uri: str,
              headers: list[tuple[str, str]], body: bytes) -> tuple[int, list[tuple[str, str]],
                                                                    bytes]:
        key = (host, port)
        idle = self.pools.idle.setdefault(key, [])
        for reused in (True, False):
            conn = idle.pop() if (reused and idle) else None
            if conn is None:
                if reused:
                    continue
                conn = http.client.HTTPConnection(host, port, timeout=service.connect_timeout)
                conn.connect()
                if conn.sock is not None:
                    conn.sock.settimeout(service.read_timeout)
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn.putrequest(method, uri, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                if body or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError, http.client.BadStatusLine) as exc:
                conn.close()
                if reused and (method in IDEMPOTENT or isinstance(exc, BrokenPipeError)):
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            elif len(idle) < 8:
                idle.append(conn)
            else:
                conn.close()
            return resp.status, resp.getheaders(), data
        raise http.client.RemoteDisconnected("upstream closed the connection")

    def _client_response(self, status: int, resp_headers: list[tuple[str, str]], body: bytes,
                         proxy_latency: float, upstream_latency: float, rid: str | None,
                         svc_name: str, route_name: str) -> Response:
        node = self.node
        out: list[tuple[str, str]] = []
        upstream_via = None
        has_server = False
        for name, value in resp_headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                continue
            if lname == "via":
                upstream_via = value if upstream_via is None else f"{upstream_via}, {value}"
                continue
            if lname == "server":
                has_server = True
            out.append((name, value))
        if node.header_enabled("server_tokens"):
            if node.version_info.via_includes_protocol:
                out.append(("Via", f"{upstream_via}, {self.via_token}" if upstream_via
                            else self.via_token))
            else:
                out.append(("Via", self.via_token))
            if not has_server:
                out.append(("Server", self.server_token))
        elif upstream_via is not None:
            out.append(("Via", upstream_via))
        if node.header_enabled("latency_tokens"):
            out.append(("X-Kong-Upstream-Latency", str(int(upstream_latency * 1000))))
            out.append(("X-Kong-Proxy-Latency", str(int(proxy_latency * 1000))))
        if rid:
            out.append(("X-Kong-Request-Id", rid))
        node.metrics.observe(svc_name, route_name, status, "service",
                             proxy_latency, upstream_latency)
        return Response(status, out, body)
