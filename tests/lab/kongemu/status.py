"""Status listener (kong-facts 6.2, 6.3): /status, /status/ready, Prometheus /metrics.

`/status/ready` (3.3+) answers 200 `{"message":"ready"}` or 503 with Kong's reasons:
* `draining` (3.9+, after `POST /status/ready` with `status=draining`, until restart);
* `failed to connect to database` (traditional mode / control plane, database down);
* `router builds not yet complete` (traditional mode: no router, or the emulation of a
  node whose database was contracted by a newer `finish`: see NOTES-node.md);
* DB-less / data plane: `no configuration available (configuration hash is not
  initialized)` before any configuration, `no configuration available (empty
  configuration present)` with the empty configuration.

Metric names follow the prometheus plugin of each line: 3.x `kong_http_requests_total`
{service,route,code,source,workspace,consumer} and `kong_nginx_connections_total`;
2.8 `kong_http_status`{service,route,code} and `kong_nginx_http_current_connections`.
The emulator counts every request (Kong only counts when the plugin is configured).
"""

from __future__ import annotations

import bisect
import json
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .httpserver import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .node import Node

JSON = "application/json; charset=utf-8"
EMPTY_HASH = "0" * 32
LATENCY_BUCKETS = [1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000, 3000, 6000]
_UNITS = {"b": (1, "B"), "k": (1024, "KiB"), "m": (1024 ** 2, "MiB"), "g": (1024 ** 3, "GiB")}


def _json(status: int, payload: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, [("Content-Type", JSON)] + (extra or []), body)


class Metrics:
    """Request counters and latency histograms (thread-safe)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int, str], int] = {}
        self.latency: dict[tuple[str, str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str, str], float] = {}

    def observe(self, service: str, route: str, code: int, source: str,
                proxy_latency: float, upstream_latency: float) -> None:
        key = (service, route, int(code), source)
        total_ms = (proxy_latency + upstream_latency) * 1000.0
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            if service:
                for kind, value in (("request", total_ms),
                                    ("upstream", upstream_latency * 1000.0),
                                    ("kong", proxy_latency * 1000.0)):
                    hkey = (service, route, kind)
                    buckets = self.latency.get(hkey)
                    if buckets is None:
                        buckets = self.latency[hkey] = [0] * (len(LATENCY_BUCKETS) + 1)
                    buckets[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
                    self.latency_sum[hkey] = self.latency_sum.get(hkey, 0.0) + value

    def snapshot(self) -> tuple[dict[tuple[str, str, int, str], int],
                                dict[tuple[str, str, str], list[int]],
                                dict[tuple[str, str, str], float]]:
        with self.lock:
            return (dict(self.requests), {k: list(v) for k, v in self.latency.items()},
                    dict(self.latency_sum))


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt_size(value: int, unit: str, scale: int) -> Any:
    factor, suffix = _UNITS[unit]
    if unit == "b":
        return value
    return f"{value / factor:.{scale}f} {suffix}"


def status_body(node: Node, query: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The `/status` answer (same on the Admin API and the status listener)."""
    def first(name: str) -> str | None:
        value = query.get(name)
        if isinstance(value, list):
            return value[0] if value else None
        return value

    unit = (first("unit") or "m").lower()
    if unit not in _UNITS:
        return 400, {"message": f"invalid unit \"{unit}\" (expected \"k/K\", \"m/M\", "
                                "or \"g/G\")"}
    try:
        scale = int(first("scale") or 2)
    except ValueError:
        return 400, {"message": "invalid scale"}
    mib = 1024 * 1024
    dicts = {"kong": 5 * mib, "kong_locks": 8 * mib, "kong_healthchecks": 5 * mib,
             "kong_cluster_events": 5 * mib, "kong_rate_limiting_counters": 12 * mib,
             "kong_core_db_cache": 128 * mib, "kong_core_db_cache_miss": 12 * mib,
             "kong_db_cache": 128 * mib, "kong_db_cache_miss": 12 * mib}
    if node.dbless:
        dicts = {k: v for k, v in dicts.items() if "db_cache" not in k}
        dicts["kong_core_db_cache"] = 128 * mib
    body: dict[str, Any] = {
        "memory": {
            "lua_shared_dicts": {
                name: {"capacity": _fmt_size(cap, unit, scale),
                       "allocated_slabs": _fmt_size(40960, unit, scale)}
                for name, cap in dicts.items()
            },
            "workers_lua_vms": [{"pid": node.pid,
                                 "http_allocated_gc": _fmt_size(_rss(), unit, scale)}],
        },
        "server": node.server.stats.snapshot(),
    }
    vi = node.version_info
    if node.dbless or node.role == "data_plane":
        body["configuration_hash"] = node.config_hash or EMPTY_HASH
        if vi.dbless_status_has_database:
            body["database"] = {"reachable": True}
    else:
        body["database"] = {"reachable": node.db_reachable()}
    return 200, body


def _rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * 4096
    except (OSError, ValueError, IndexError):
        return 0


def ready_reason(node: Node) -> str | None:
    """None when ready, else the 503 message of /status/ready (kong-facts 6.3)."""
    if node.draining:
        return "draining"
    if node.dbless or node.role == "data_plane":
        if node.router is None:
            return "router builds not yet complete, router ready in 0 of 1 workers"
        if node.config_hash is None:
            return "no configuration available (configuration hash is not initialized)"
        if node.config_hash == EMPTY_HASH:
            return "no configuration available (empty configuration present)"
        return None
    if not node.db_reachable():
        return "failed to connect to database"
    if node.role == "control_plane":
        return None  # a control plane is ready as soon as its database connects
    if node.router is None or node.config_error is not None:
        return "router builds not yet complete"
    return None


class StatusApp:
    """Handler of the status listener."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def handle(self, request: Request) -> Response:
        node = self.node
        vi = node.version_info
        path = request.path.rstrip("/") or "/"
        method = request.method
        if path == "/status" and method in ("GET", "HEAD"):
            code, body = status_body(node, request.query())
            return _json(code, body)
        if path == "/status/ready" and vi.has_ready:
            if method in ("GET", "HEAD"):
                reason = ready_reason(node)
                if reason is None:
                    return _json(200, {"message": "ready"})
                return _json(503, {"message": reason})
            if method == "POST" and vi.has_drain:
                return self._post_ready(request)
            return _json(405, {"message": "Method not allowed"})
        if path == "/metrics" and method in ("GET", "HEAD"):
            return Response(200, [("Content-Type", "text/plain; charset=UTF-8")],
                            render_metrics(node).encode())
        return _json(404, {"message": "Not found"})

    def _post_ready(self, request: Request) -> Response:
        ctype = (request.header("content-type") or "").lower()
        status = None
        text = request.body.decode("utf-8", "replace")
        if "json" in ctype:
            try:
                status = (json.loads(text) or {}).get("status")
            except (ValueError, AttributeError):
                status = None
        else:
            values = parse_qs(text).get("status") or request.query().get("status")
            status = values[0] if values else None
        if status != "draining":
            return _json(400, {"message": "unsupported status, only 'draining' is supported"})
        if not self.node.draining:
            self.node.log.notice("[status] node status changed to 'draining'")
        self.node.draining = True
        return Response(204, [], b"")


def render_metrics(node: Node) -> str:
    vi = node.version_info
    v3 = vi.major >= 3
    requests, latency, lat_sum = node.metrics.snapshot()
    stats = node.server.stats.snapshot()
    out: list[str] = []

    def head(name: str, help_text: str, kind: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    if node.role != "data_plane" and not node.dbless:
        head("kong_datastore_reachable", "Datastore reachable from Kong, 0 is unreachable",
             "gauge")
        out.append(f"kong_datastore_reachable {1 if node.db_reachable() else 0}")
    if node.dbless or node.role == "data_plane":
        if v3:
            head("kong_data_plane_config_hash",
                 "Config hash numeric value of the data plane", "gauge")
            value = int(node.config_hash or EMPTY_HASH, 16) if node.config_hash else 0
            out.append(f"kong_data_plane_config_hash {float(value):.17g}")
    nid = _esc(node.node_id)
    states = [("accepted", "connections_accepted"), ("active", "connections_active"),
              ("handled", "connections_handled"), ("reading", "connections_reading"),
              ("total", "total_requests"), ("waiting", "connections_waiting"),
              ("writing", "connections_writing")]
    if v3:
        head("kong_nginx_connections_total", "Number of connections by subsystem", "gauge")
        for state, key in states:
            if state == "total":
                continue
            out.append(f'kong_nginx_connections_total{{node_id="{nid}",subsystem="http",'
                       f'state="{state}"}} {stats[key]}')
        head("kong_nginx_requests_total", "Number of requests total", "gauge")
        out.append(f'kong_nginx_requests_total{{node_id="{nid}",subsystem="http"}} '
                   f'{stats["total_requests"]}')
        head("kong_node_info", "Kong Node metadata information", "gauge")
        out.append(f'kong_node_info{{node_id="{nid}",version="{vi.version}"}} 1')
        head("kong_http_requests_total",
             "HTTP status codes per consumer/service/route in Kong", "counter")
        for (service, route, code, source), count in sorted(requests.items()):
            out.append(f'kong_http_requests_total{{service="{_esc(service)}",'
                       f'route="{_esc(route)}",code="{code}",source="{source}",'
                       f'workspace="default",consumer=""}} {count}')
        for kind, name in (("request", "kong_request_latency_ms"),
                           ("upstream", "kong_upstream_latency_ms"),
                           ("kong", "kong_kong_latency_ms")):
            head(name, f"Latency added by {kind} in ms", "histogram")
            for (service, route, lkind), buckets in sorted(latency.items()):
                if lkind != kind:
                    continue
                labels = f'service="{_esc(service)}",route="{_esc(route)}",workspace="default"'
                _histogram(out, name, labels, buckets, lat_sum[(service, route, lkind)])
    else:
        head("kong_nginx_http_current_connections", "Number of HTTP connections", "gauge")
        for state, key in states:
            out.append(f'kong_nginx_http_current_connections{{state="{state}"}} {stats[key]}')
        head("kong_http_status", "HTTP status codes per service/route in Kong", "counter")
        for (service, route, code, _source), count in sorted(requests.items()):
            out.append(f'kong_http_status{{service="{_esc(service)}",route="{_esc(route)}",'
                       f'code="{code}"}} {count}')
        head("kong_latency", "Latency added by Kong, total request time and upstream latency "
             "for each service/route in Kong", "histogram")
        for (service, route, kind), buckets in sorted(latency.items()):
            labels = f'service="{_esc(service)}",route="{_esc(route)}",type="{kind}"'
            _histogram(out, "kong_latency", labels, buckets, lat_sum[(service, route, kind)])
    head("kong_nginx_metric_errors_total", "Number of nginx-lua-prometheus errors", "counter")
    out.append("kong_nginx_metric_errors_total 0")
    return "\n".join(out) + "\n"


def _histogram(out: list[str], name: str, labels: str, buckets: list[int],
               total: float) -> None:
    running = 0
    for bound, count in zip(LATENCY_BUCKETS, buckets):
        running += count
        out.append(f'{name}_bucket{{{labels},le="{bound:05d}"}} {running}')
    running += buckets[-1]
    out.append(f'{name}_bucket{{{labels},le="+Inf"}} {running}')
    out.append(f"{name}_count{{{labels}}} {running}")
    out.append(f"{name}_sum{{{labels}}} {total:.0f}")
