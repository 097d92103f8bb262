"""proxy.py in process: router, key-auth, forwarding, Kong's headers by version.

Emulator only: these drive the emulator's router and forwarding code directly, in the
test process. What a user of a real node sees of the same (routes, key-auth, `Via`,
regex paths before and after 3.0's migrations) is asserted on both providers by
test_conformance.test_node_walk and test_node_process."""

from __future__ import annotations

import json
import threading
from typing import Any

import nodefixtures  # noqa: F401 # pylint: disable=unused-import
import pytest

from kongemu import versions
from kongemu.httpserver import HTTPServer, Request, Response
from kongemu.proxy import ProxyApp, Router
from kongemu.status import Metrics, render_metrics


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def error(self, msg: str) -> None:
        self.lines.append(msg)

    warn = info = debug = notice = error


class _Access:
    def write(self, request: Request, response: Response) -> None:
        del request, response


class FakeNode:
    """What ProxyApp reads from the node."""

    def __init__(self, version: str, config: dict[str, Any]) -> None:
        self.version_info = versions.get(version)
        self.router = Router(config, self.version_info)
        self.config_error: Exception | None = None
        self.log = _Log()
        self.proxy_access = _Access()
        self.metrics = Metrics(self)  # type: ignore[arg-type]
        self.headers = self.version_info.headers_default
        self.node_id = "6d2c5b4e-1111-4222-8333-944455556666"
        self.role = "traditional"
        self.dbless = False
        self.server = HTTPServer(self.log)

    def header_enabled(self, name: str) -> bool:
        items = [i.strip() for i in self.headers.split(",")]
        return "off" not in items and name in items

    def db_reachable(self) -> bool:
        return True


@pytest.fixture(scope="module")
def upstream():
    """An echo upstream: answers JSON with what it received."""
    seen: list[dict[str, Any]] = []

    def echo(request: Request) -> Response:
        info = {"method": request.method, "target": request.target,
                "headers": {k.lower(): v for k, v in request.headers},
                "body": request.body.decode()}
        seen.append(info)
        headers = [("Content-Type", "application/json")]
        if request.path.endswith("/with-server"):
            headers.append(("Server", "echo/1"))
        if request.path.endswith("/with-via"):
            headers.append(("Via", "1.1 upstream-proxy"))
        return Response(200, headers, json.dumps(info).encode())

    srv = HTTPServer(_Log())
    srv.add_listener("echo", "127.0.0.1", 0, echo)
    port = srv._listeners[0].sock.getsockname()[1]  # noqa: SLF001
    srv.start()
    yield port
    srv.close_now()


def _config(port: int) -> dict[str, Any]:
    return {
        "services": [
            {"id": "s1", "name": "svc1", "protocol": "http", "host": "127.0.0.1", "port": port,
             "path": "/base"},
            {"id": "s2", "name": "svc2", "protocol": "http", "host": "my-upstream", "port": 80},
            {"id": "s3", "name": "dead", "protocol": "http", "host": "127.0.0.1", "port": 1},
        ],
        "routes": [
            {"id": "r1", "name": "r-api", "paths": ["/api"], "service": {"id": "s1"},
             "strip_path": True},
            {"id": "r2", "name": "r-api-v2", "paths": ["/api/v2"], "service": {"id": "s1"},
             "strip_path": False},
            {"id": "r3", "name": "r-host", "hosts": ["example.com"], "paths": ["/"],
             "service": {"id": "s1"}, "preserve_host": True, "strip_path": False},
            {"id": "r4", "name": "r-auth", "paths": ["/auth"], "service": {"id": "s1"}},
            {"id": "r5", "name": "r-lb", "paths": ["/lb"], "service": {"id": "s2"}},
            {"id": "r6", "name": "r-post", "paths": ["/only-post"], "methods": ["POST"],
             "service": {"id": "s1"}},
            {"id": "r7", "name": "r-dead", "paths": ["/dead"], "service": {"id": "s3"}},
            {"id": "r8", "name": "r-wild", "hosts": ["*.wild.test"], "service": {"id": "s1"}},
        ],
        "consumers": [{"id": "c1", "username": "alice"}],
        "keyauth_credentials": [{"id": "k1", "key": "secret-key", "consumer": {"id": "c1"}}],
        "plugins": [{"id": "p1", "name": "key-auth", "route": {"id": "r4"}, "enabled": True,
                     "config": {"key_names": ["apikey", "x-key"]}}],
        "upstreams": [{"id": "u1", "name": "my-upstream"}],
        "targets": [{"id": "t1", "target": f"127.0.0.1:{port}", "weight": 100,
                     "upstream": {"id": "u1"}},
                    {"id": "t2", "target": "127.0.0.1:1", "weight": 0,
                     "upstream": {"id": "u1"}}],
    }


def _request(method: str, target: str, host: str = "kong.test",
             headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> Request:
    return Request(method, target, "HTTP/1.1", [("Host", host)] + (headers or []), body,
                   ("127.0.0.9", 5555), ("127.0.0.1", 8000), "proxy")


def _hdr(response: Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.lower() == name.lower():
            return value
    return None


def test_routing_strip_path_and_longest_prefix(upstream):
    node = FakeNode("3.4.3", _config(upstream))
    app = ProxyApp(node)  # type: ignore[arg-type]
    res = app.handle(_request("GET", "/api/users?x=1"))
    assert res.status == 200
    assert json.loads(res.body)["target"] == "/base/users?x=1"
    res = app.handle(_request("GET", "/api/v2/items"))
    assert json.loads(res.body)["target"] == "/base/api/v2/items"   # strip_path false
    res = app.handle(_request("GET", "/api"))
    assert json.loads(res.body)["target"] == "/base"


def test_host_routing_preserve_host_and_wildcard(upstream):
    node = FakeNode("3.4.3", _config(upstream))
    app = ProxyApp(node)  # type: ignore[arg-type]
    res = app.handle(_request("GET", "/anything", host="example.com"))
    assert res.status == 200
    echoed = json.loads(res.body)
    assert echoed["headers"]["host"] == "example.com"
    assert echoed["headers"]["x-forwarded-for"] == "127.0.0.9"
    res = app.handle(_request("GET", "/zzz", host="a.wild.test"))
    assert res.status == 200
    assert json.loads(res.body)["headers"]["host"] == f"127.0.0.1:{upstream}"


def test_no_route_404_with_server_header():
    node = FakeNode("3.4.3", _config(1))
    app = ProxyApp(node)  # type: ignore[arg-type]
    res = app.handle(_request("GET", "/nope"))
    assert res.status == 404
    assert res.body == b'{"message":"no Route matched with those values"}'
    assert _hdr(res, "Server") == "kong/3.4.3"
    assert _hdr(res, "Via") is None
    res = app.handle(_request("GET", "/only-post"))
    assert res.status == 404


def test_key_auth(upstream):
    node = FakeNode("3.9.1", _config(upstream))
    app = ProxyApp(node)  # type: ignore[arg-type]
    res = app.handle(_request("GET", "/auth/x"))
    assert res.status == 401
    assert res.body == b'{"message":"No API key found in request"}'
    res = app.handle(_request("GET", "/auth/x", headers=[("apikey", "wrong")]))
    assert res.status == 401
    assert res.body == b'{"message":"Invalid authentication credentials"}'
    res = app.handle(_request("GET", "/auth/x", headers=[("apikey", "secret-key")]))
    assert res.status == 200
    echoed = json.loads(res.body)
    assert echoed["headers"]["x-consumer-username"] == "alice"
    res = app.handle(_request("GET", "/auth/x?x-key=secret-key"))
    assert res.status == 200
    res = app.handle(_request("GET", "/auth/x?apikey=nope"))
    assert res.status == 401


@pytest.mark.parametrize("version,via", [("2.8.4", "kong/2.8.4"), ("3.4.3", "kong/3.4.3"),
                                         ("3.8.0", "1.1 kong/3.8.0"),
                                         ("3.10.0", "1.1 kong/3.10.0")])
def test_via_and_server_by_version(upstream, version, via):
    node = FakeNode(version, _config(upstream))
    app = ProxyApp(node)  # type: ignore[arg-type]
    res = app.handle(_request("GET", "/api/x"))
    assert res.status == 200
    assert _hdr(res, "Via") == via
    assert _hdr(res, "Server") == f"kong/{version}"
    assert _hdr(res, "X-Kong-Upstream-Latency") is not None
    assert _hdr(res, "X-Kong-Proxy-Latency") is not None
    res = app.handle(_request("GET", "/api/with-server"))
    assert _hdr(res, "Server") == "echo/1"
    res = app.handle(_request("GET", "/api/with-via"))
    expected = f"1.1 upstream-proxy, {via}" if versions.get(version).via_includes_protocol \
        else via
    assert _hdr(res, "Via") == expected


def test_upstream_balancer_and_502(upstream):
    node = FakeNode("3.6.1", _config(upstream))
    app = ProxyApp(node)  # type: ignore[arg-type]
    for _i in range(5):   # the weight-0 dead target is never picked
        assert app.handle(_request("GET", "/lb/x")).status == 200
    res = app.handle(_request("GET", "/dead"))
    assert res.status == 502
    assert res.body == b'{"message":"An invalid response was received from the upstream server"}'


def test_config_error_answers_500(upstream):
    node = FakeNode("2.8.4", _config(upstream))
    node.config_error = RuntimeError("column routes.legacy does not exist")
    app = ProxyApp(node)  # type: ignore[arg-type]
    res = app.handle(_request("GET", "/api/x"))
    assert res.status == 500
    assert res.body == b'{"message":"An unexpected error occurred"}'


def test_metrics_names_by_version(upstream):
    for version, name in (("3.4.3", 'kong_http_requests_total{service="svc1",route="r-api",'
                                    'code="200",source="service"'),
                          ("2.8.4", 'kong_http_status{service="svc1",route="r-api",code="200"}')):
        node = FakeNode(version, _config(upstream))
        app = ProxyApp(node)  # type: ignore[arg-type]
        app.handle(_request("GET", "/api/x"))
        app.handle(_request("GET", "/nope"))
        text = render_metrics(node)  # type: ignore[arg-type]
        assert name in text, text
        assert "kong_datastore_reachable 1" in text


def test_concurrent_forwarding_reuses_pools(upstream):
    node = FakeNode("3.4.3", _config(upstream))
    app = ProxyApp(node)  # type: ignore[arg-type]
    errors: list[int] = []

    def worker() -> None:
        for _i in range(50):
            res = app.handle(_request("GET", "/api/x"))
            if res.status != 200:
                errors.append(res.status)

    threads = [threading.Thread(target=worker) for _i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
