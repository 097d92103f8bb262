"""The Admin API (admin.AdminApp.handle) on a real database and on the DB-less store (kong-facts 6)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import parse_qs, urlencode

import pytest
from conftest import KongDb

from kongemu import admin, declarative, migrations, pg, schema, versions
from kongemu.conf import KongConf
from kongemu.logutil import Log


@dataclass
class FakeCtx:
    """The node context admin.py reads (NOTES-node.md), without a node."""

    version_info: versions.VersionInfo
    conf: KongConf
    backend: Any
    node_id: str = "6a2a53e5-3b0c-4b34-8c2d-7c0e7c3a9d1b"
    hostname: str = "kong-test"
    pids: dict[str, Any] = field(default_factory=lambda: {"master": 100, "workers": [101, 102]})
    is_control_plane: bool = False
    configuration_hash: str | None = None
    reachable: bool = True
    notified: int = 0
    loaded: list[Any] = field(default_factory=list)

    def db_reachable(self) -> bool:
        return self.reachable

    def server_stats(self) -> dict[str, int]:
        return {"connections_active": 1, "total_requests": 7}

    def notify_change(self) -> None:
        self.notified += 1

    def load_declarative(self, config: Any, check_hash: bool = False) -> tuple[bool, Any]:
        text = json.dumps(config) if isinstance(config, dict) else config
        new_store = declarative.load_store(text, self.version_info)
        self.loaded.append(config)
        if check_hash and new_store.config_hash == self.configuration_hash:
            return False, self.backend
        self.backend = new_store
        self.configuration_hash = new_store.config_hash
        return True, new_store


class Client:
    def __init__(self, app: admin.AdminApp) -> None:
        self.app = app

    def __call__(self, method: str, path: str, body: Any = None, form: dict[str, Any] | None = None,
                 raw: bytes | None = None, content_type: str | None = None) -> tuple[int, dict[str, str], Any]:
        path, _sep, qs = path.partition("?")
        headers: dict[str, str] = {}
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urlencode(form, doseq=True).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = content_type or "text/plain"
        status, out_headers, out = self.app.handle(method, path, parse_qs(qs, keep_blank_values=True), headers, data)
        return status, out_headers, (json.loads(out) if out else None)


def _bootstrap(kong_db: KongDb, version: str) -> None:
    code = migrations.execute(versions.get(version), kong_db.conf(version), {"command": "bootstrap"},
                              Log(io.StringIO(), io.StringIO()))
    assert code == 0


@pytest.fixture
def db_app(kong_db: KongDb) -> Iterator[tuple[Client, FakeCtx, KongDb]]:
    version = "3.4.3"
    _bootstrap(kong_db, version)
    conf = kong_db.conf(version)
    store = schema.EntityStore(pg.connect(conf), versions.get(version))
    ctx = FakeCtx(versions.get(version), conf, store)
    yield Client(admin.AdminApp(ctx)), ctx, kong_db
    store.close()


# ---------------------------------------------------------------------------
# GET / and /status


@pytest.mark.parametrize(("version", "edition"), [("3.4.3", False), ("3.6.1", True)])
def test_root_fields_and_masked_secrets(kong_db: KongDb, version: str, edition: bool) -> None:
    _bootstrap(kong_db, version)
    conf = kong_db.conf(version)
    store = schema.EntityStore(pg.connect(conf), versions.get(version))
    client = Client(admin.AdminApp(FakeCtx(versions.get(version), conf, store)))
    store.insert("plugins", {"name": "cors"})
    status, headers, body = client("GET", "/")
    store.close()
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body["tagline"] == "Welcome to kong"
    assert body["version"] == version
    assert ("edition" in body) == edition and body.get("edition", "community") == "community"
    assert body["node_id"] == "6a2a53e5-3b0c-4b34-8c2d-7c0e7c3a9d1b" and body["hostname"] == "kong-test"
    assert body["pids"] == {"master": 100, "workers": [101, 102]}
    assert set(body["timers"]) == {"running", "pending"}
    assert body["plugins"]["enabled_in_cluster"] == ["cors"]
    assert body["plugins"]["available_on_server"]["key-auth"] == {"version": version, "priority": 1250}
    assert body["lua_version"].startswith("LuaJIT")
    config = body["configuration"]
    assert config["pg_password"] == "******"
    assert kong_db.cluster.password not in json.dumps(body)
    assert config["database"] == "postgres" and config["pg_port"] == kong_db.cluster.port
    assert isinstance(config["admin_listen"], list)


def test_status_reports_database_reachability(db_app: tuple[Client, FakeCtx, KongDb]) -> None:
    client, ctx = db_app[:2]
    status, _hdrs, body = client("GET", "/status")
    assert status == 200 and body["database"] == {"reachable": True}
    assert body["server"]["total_requests"] == 7 and "memory" in body
    ctx.reachable = False
    status, _hdrs, body = client("GET", "/status")
    assert status == 200 and body["database"] == {"reachable": False}
    assert "configuration_hash" not in body


# ---------------------------------------------------------------------------
# Entities


def test_service_crud_and_errors(db_app: tuple[Client, FakeCtx, KongDb]) -> None:
    client, ctx, kong_db = db_app
    status, _hdrs, svc = client("POST", "/services", {"name": "s1", "url": "https://example.test:8443/api"})
    assert status == 201
    assert (svc["protocol"], svc["host"], svc["port"], svc["path"]) == ("https", "example.test", 8443, "/api")
    assert svc["retries"] == 5 and svc["connect_timeout"] == 60000 and svc["enabled"] is True
    assert isinstance(svc["created_at"], int) and svc["tags"] is None
    assert ctx.notified == 1
    events = kong_db.query("SELECT node_id::text, channel, data FROM cluster_events")
    assert events == [(ctx.node_id, "invalidations", f"services:{svc['id']}")]

    assert client("GET", f"/services/{svc['id']}")[2] == svc
    assert client("GET", "/services/s1")[2] == svc

    status, _hdrs, err = client("POST", "/services", {"name": "s1", "host": "other.test"})
    assert status == 409
    assert err == {"code": 5, "name": "unique constraint violation",
                   "message": "UNIQUE violation detected on '{name=\"s1\"}'", "fields": {"name": "s1"}}

    status, _hdrs, err = client("POST", "/services", {"name": "s2"})
    assert status == 400
    assert err == {"code": 2, "name": "schema violation", "message": "schema violation (host: required field missing)",
                   "fields": {"host": "required field missing"}}

    status, _hdrs, err = client("POST", "/services", {"host": "x.test", "port": 70000, "protocol": "ftp", "bogus": 1})
    assert status == 400
    assert err["fields"] == {"port": "value should be between 0 and 65535", "bogus": "unknown field",
                             "protocol": "expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, "
                                         "udp, ws, wss"}
    assert err["message"].startswith("3 schema violations (bogus: unknown field; port: value should be between")

    status, _hdrs, patched = client("PATCH", "/services/s1", {"retries": 2})
    assert status == 200 and patched["retries"] == 2 and patched["host"] == "example.test"
    assert patched["updated_at"] >= svc["updated_at"]

    status, _hdrs, put = client("PUT", "/services/s3", {"host": "three.test"})
    assert status == 200 and put["name"] == "s3"
    status, _hdrs, put2 = client("PUT", "/services/s3", {"host": "three-bis.test"})
    assert status == 200 and put2["id"] == put["id"] and put2["host"] == "three-bis.test"

    assert client("DELETE", "/services/s3")[0] == 204
    assert client("GET", "/services/s3")[:3:2] == (404, {"message": "Not found"})
    assert client("DELETE", "/services/s3")[0] == 204
    assert client("PATCH", "/services/s3", {"retries": 1})[0] == 404
    assert client("DELETE", "/services")[:3:2] == (405, {"message": "Method not allowed"})
    assert client("POST", "/services/s1", {"host": "x"})[:3:2] == (405, {"message": "Method not allowed"})
    assert client("GET", "/nope")[:3:2] == (404, {"message": "Not found"})


def test_routes_form_bodies_nesting_and_references(db_app: tuple[Client, FakeCtx, KongDb]) -> None:
    client = db_app[0]
    svc = client("POST", "/services", {"name": "s1", "host": "up.test"})[2]
    form = {"name": "r1", "paths[]": ["/a", "/b"], "hosts": "h.test", "service.id": svc["id"], "strip_path": "false"}
    status, _hdrs, route = client("POST", "/routes", form=form)
    assert status == 201, route
    assert route["paths"] == ["/a", "/b"] and route["hosts"] == ["h.test"] and route["strip_path"] is False
    assert route["service"] == {"id": svc["id"]} and route["protocols"] == ["http", "https"]
    assert route["https_redirect_status_code"] == 426 and route["path_handling"] == "v0"

    status, _hdrs, nested = client("POST", "/services/s1/routes", {"name": "r2", "methods": ["GET"]})
    assert status == 201 and nested["service"] == {"id": svc["id"]}
    client("POST", "/routes", {"name": "r3", "paths": ["/c"]})
    listed = client("GET", "/services/s1/routes")[2]
    assert sorted(r["name"] for r in listed["data"]) == ["r1", "r2"] and listed["next"] is None
    assert client("GET", "/routes/r2/service")[2]["id"] == svc["id"]
    assert client("GET", "/routes/r3/service")[0] == 404
    assert client("GET", "/services/nope/routes")[0] == 404

    status, _hdrs, err = client("POST", "/routes", {"name": "r4"})
    assert status == 400
    assert err["fields"] == {"@entity": ["must set one of 'methods', 'hosts', 'headers', 'paths', 'snis' when "
                                         "'protocols' is 'https'"]}
    status, _hdrs, err = client("POST", "/routes", {"paths": ["nope"]})
    assert status == 400 and err["fields"]["paths"] == ["should start with: / (fixed path) or ~/ (regex path)"]

    missing = "11111111-2222-4333-8444-555555555555"
    status, _hdrs, err = client("POST", "/routes", {"paths": ["/x"], "service": {"id": missing}})
    assert status == 400
    assert err == {"code": 4, "name": "foreign key violation",
                   "message": f"the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'services' "
                              "entity.", "fields": {"service": {"id": missing}}}
    status, _hdrs, err = client("DELETE", "/services/s1")
    assert status == 400
    assert err["code"] == 4 and err["message"] == "an existing 'routes' entity references this 'services' entity"


def test_consumers_key_auth_and_plugins(db_app: tuple[Client, FakeCtx, KongDb]) -> None:
    client = db_app[0]
    status, _hdrs, err = client("POST", "/consumers", {"tags": ["a"]})
    assert status == 400
    assert err["message"] == "schema violation (at least one of these fields must be non-empty: 'custom_id', " \
                             "'username')"
    consumer = client("POST", "/consumers", {"username": "alice"})[2]
    status, _hdrs, cred = client("POST", "/consumers/alice/key-auth", {})
    assert status == 201 and re.fullmatch(r"[0-9a-f]{32}", cred["key"]) and cred["consumer"] == {"id": consumer["id"]}
    assert client("POST", "/consumers/alice/key-auth", form={"key": "secret-1"})[0] == 201
    status, _hdrs, err = client("POST", "/consumers/alice/key-auth", {"key": "secret-1"})
    assert status == 409 and err["fields"] == {"key": "secret-1"}
    assert len(client("GET", "/key-auths")[2]["data"]) == 2
    assert client("GET", "/consumers/alice/key-auth/secret-1")[2]["key"] == "secret-1"
    assert client("DELETE", "/consumers/alice/key-auth/secret-1")[0] == 204
    assert client("GET", "/consumers/alice/key-auth/secret-1")[0] == 404

    status, _hdrs, err = client("POST", "/plugins", {"name": "nope"})
    assert status == 400
    assert err["fields"] == {"name": "plugin 'nope' not enabled; add it to the 'plugins' configuration property"}
    svc = client("POST", "/services", {"name": "s1", "host": "up.test"})[2]
    form = {"name": "key-auth", "config.key_names": "x-api-key"}
    status, _hdrs, plugin = client("POST", "/services/s1/plugins", form=form)
    assert status == 201, plugin
    assert plugin["service"] == {"id": svc["id"]} and plugin["route"] is None and plugin["enabled"] is True
    assert plugin["config"]["key_names"] == ["x-api-key"] and plugin["config"]["hide_credentials"] is False
    status, _hdrs, err = client("POST", "/plugins", {"name": "key-auth", "service": {"id": svc["id"]}})
    assert status == 409 and err["code"] == 5
    assert err["message"] == (f"UNIQUE violation detected on '{{consumer=null,name=\"key-auth\",route=null,"
                              f"service={{id=\"{svc['id']}\"}}}}'")
    status, _hdrs, patched = client("PATCH", f"/plugins/{plugin['id']}", {"config": {"hide_credentials": True}})
    assert status == 200 and patched["config"]["key_names"] == ["x-api-key"] and patched["config"]["hide_credentials"]
    assert client("GET", "/plugins/enabled")[2]["enabled_plugins"] == sorted(versions.get("3.4.3").bundled_plugins)
    assert client("DELETE", "/consumers/alice")[0] == 204
    assert client("GET", "/key-auths")[2]["data"] == []


def test_upstreams_and_targets(db_app: tuple[Client, FakeCtx, KongDb]) -> None:
    client = db_app[0]
    status, _hdrs, upstream = client("POST", "/upstreams", {"name": "backend"})
    assert status == 201 and upstream["algorithm"] == "round-robin" and upstream["slots"] == 10000
    assert upstream["healthchecks"]["active"]["http_path"] == "/"
    status, _hdrs, target = client("POST", "/upstreams/backend/targets", {"target": "127.0.0.1"})
    assert status == 201 and target["target"] == "127.0.0.1:8000" and target["weight"] == 100
    assert target["upstream"] == {"id": upstream["id"]}
    assert client("POST", "/upstreams/backend/targets", {"target": "127.0.0.1:8000"})[0] == 409
    assert len(client("GET", "/upstreams/backend/targets")[2]["data"]) == 1
    assert client("POST", "/upstreams/backend/targets", {"target": "x", "weight": 70000})[0] == 400


def test_pagination_and_tags(db_app: tuple[Client, FakeCtx, KongDb]) -> None:
    client = db_app[0]
    for i in range(5):
        tags = ["team-a"] + (["prod"] if i % 2 == 0 else ["dev"])
        assert client("POST", "/consumers", {"username": f"u{i}", "tags": tags})[0] == 201
    seen: list[str] = []
    path = "/consumers?size=2"
    pages = 0
    while path:
        status, _hdrs, page = client("GET", path)
        assert status == 200
        assert len(page["data"]) <= 2
        seen.extend(c["username"] for c in page["data"])
        pages += 1
        path = page["next"]
        if path:
            assert path.startswith("/consumers?offset=") and page["offset"]
            path += "&size=2"
    assert pages == 3 and sorted(seen) == [f"u{i}" for i in range(5)]
    assert len(client("GET", "/consumers?tags=team-a,prod")[2]["data"]) == 3
    assert len(client("GET", "/consumers?tags=prod/dev")[2]["data"]) == 5
    assert client("GET", "/consumers?tags=dev,prod")[2]["data"] == []
    status, _hdrs, page = client("GET", "/consumers?size=1&tags=prod")
    assert page["next"].endswith("&tags=prod")
    status, _hdrs, err = client("GET", "/consumers?offset=x")
    assert status == 400
    assert err == {"code": 7, "name": "invalid offset", "message": "'x' is not a valid offset: bad base64 encoding"}
    status, _hdrs, err = client("GET", "/consumers?size=0")
    assert status == 400 and err["code"] == 9 and err["name"] == "invalid size"
    assert client("GET", "/consumers?size=1001")[0] == 400
    status, _hdrs, err = client("GET", "/consumers?tags=a,b/c")
    assert status == 400 and err["message"] == "invalid option (tags: invalid filter syntax)"


def test_workspaces_and_config_on_a_database_node(db_app: tuple[Client, FakeCtx, KongDb]) -> None:
    client = db_app[0]
    status, _hdrs, page = client("GET", "/workspaces")
    assert status == 200 and [w["name"] for w in page["data"]] == ["default"]
    assert client("GET", "/workspaces/default")[2]["name"] == "default"
    msg = {"message": "this endpoint is only available when Kong is configured to not use a database"}
    assert client("GET", "/config")[:3:2] == (400, msg)
    assert client("POST", "/config", {"_format_version": "3.0"})[:3:2] == (400, msg)
    not_cp = {"message": "this endpoint is only available when Kong is configured to run as Control Plane "
                         "for the cluster"}
    assert client("GET", "/clustering/data-planes")[:3:2] == (400, not_cp)
    assert client("GET", "/clustering/status")[:3:2] == (400, not_cp)


@pytest.mark.parametrize("version", ["3.4.3", "3.9.1"])
def test_clustering_endpoints_on_a_control_plane(kong_db: KongDb, version: str) -> None:
    _bootstrap(kong_db, version)
    conf = kong_db.conf(version, role="control_plane")
    store = schema.EntityStore(pg.connect(conf), versions.get(version))
    store.upsert_data_plane({"id": "aaaaaaaa-0000-4000-8000-000000000001", "hostname": "dp1", "ip": "127.0.0.5",
                             "version": "3.4.3", "sync_status": "normal", "config_hash": "a" * 32,
                             "labels": {"env": "lab"}})
    store.upsert_data_plane({"id": "aaaaaaaa-0000-4000-8000-000000000002", "hostname": "dp2", "ip": "127.0.0.6",
                             "version": "2.8.4", "sync_status": "kong_version_incompatible", "config_hash": ""})
    client = Client(admin.AdminApp(FakeCtx(versions.get(version), conf, store, is_control_plane=True)))
    status, _hdrs, page = client("GET", "/clustering/data-planes")
    assert status == 200 and page["next"] is None
    first = page["data"][0]
    expected = {"id", "ip", "hostname", "version", "sync_status", "config_hash", "last_seen", "ttl", "updated_at"}
    if version == "3.9.1":
        expected |= {"labels", "cert_details", "rpc_capabilities"}
        assert first["labels"] == {"env": "lab"} and first["cert_details"] == {"expiry_timestamp": None}
    assert set(first) == expected
    assert 1209590 < first["ttl"] <= 1209600 and isinstance(first["last_seen"], int)
    assert page["data"][1]["sync_status"] == "kong_version_incompatible"
    assert client("DELETE", "/clustering/data-planes")[0] == 404
    assert client("PATCH", "/clustering/data-planes")[0] == 404
    status, headers, body = client("GET", "/clustering/status")
    assert status == 200 and headers["Deprecation"] == "true"
    assert body["aaaaaaaa-0000-4000-8000-000000000001"] == {
        "config_hash": "a" * 32, "hostname": "dp1", "ip": "127.0.0.5", "last_seen": first["last_seen"]}
    store.close()


def test_reads_fail_with_500_after_a_newer_finish(kong_db: KongDb) -> None:
    _bootstrap(kong_db, "2.8.4")
    conf = kong_db.conf("2.8.4")
    store = schema.EntityStore(pg.connect(conf), versions.get("2.8.4"))
    logged: list[str] = []
    ctx = FakeCtx(versions.get("2.8.4"), conf, store)
    app = admin.AdminApp(ctx)
    app._log_error = logged.append  # type: ignore[method-assign]
    client = Client(app)
    assert client("POST", "/consumers", {"username": "before"})[0] == 201
    for command in ("up", "finish"):
        migrations.execute(versions.get("3.4.3"), kong_db.conf("3.4.3"), {"command": command},
                           Log(io.StringIO(), io.StringIO()))
    for path in ("/consumers", "/services", "/consumers/before", "/"):
        assert client("GET", path)[:3:2] == (500, {"message": "An unexpected error occurred"}), path
    assert client("POST", "/consumers", {"username": "after"})[0] == 500
    assert logged and "does not exist" in logged[0]
    assert client("GET", "/status")[0] == 200
    store.close()


# ---------------------------------------------------------------------------
# DB-less


KONG_YML = """_format_version: "3.0"
services:
- name: echo
  url: http://127.0.0.1:9000
  routes:
  - name: echo-route
    paths: [/echo]
  plugins:
  - name: key-auth
consumers:
- username: bob
  keyauth_credentials:
  - key: bob-key
"""


@pytest.fixture
def dbless_app() -> tuple[Client, FakeCtx]:
    info = versions.get("3.4.3")
    conf = KongConf({"database": "off", "role": "traditional", "prefix": "/tmp/kongemu-dbless"})
    store = declarative.load_store(KONG_YML, info)
    ctx = FakeCtx(info, conf, store, configuration_hash=store.config_hash)
    return Client(admin.AdminApp(ctx)), ctx


def test_dbless_reads_and_rejected_writes(dbless_app: tuple[Client, FakeCtx]) -> None:
    client = dbless_app[0]
    assert [s["name"] for s in client("GET", "/services")[2]["data"]] == ["echo"]
    assert client("GET", "/services/echo/routes")[2]["data"][0]["name"] == "echo-route"
    assert client("GET", "/consumers/bob/key-auth")[2]["data"][0]["key"] == "bob-key"
    status, _hdrs, err = client("POST", "/routes", {"paths": ["/"]})
    assert status == 405
    assert err == {"code": 12, "name": "operation unsupported",
                   "message": "cannot create 'routes' entities when not using a database"}
    status, _hdrs, err = client("PATCH", "/services/echo", {"retries": 1})
    assert status == 405 and err["message"] == "cannot create or update 'services' entities when not using a database"
    assert client("DELETE", "/routes")[:3:2] == (405, {"message": "Method not allowed"})
    assert client("GET", "/workspaces")[2]["data"][0]["name"] == "default"


def test_dbless_config_endpoint(dbless_app: tuple[Client, FakeCtx]) -> None:
    client, ctx = dbless_app
    status, _hdrs, body = client("GET", "/config")
    assert status == 200 and body["config"].startswith("_format_version: '3.0'\n_transform: false\n")
    status, _hdrs, body = client("POST", "/config?check_hash=1", form={"config": KONG_YML})
    assert (status, body) == (304, None)
    new_yml = KONG_YML + "- username: carol\n"
    status, _hdrs, body = client("POST", "/config?check_hash=1", form={"config": new_yml})
    assert status == 201 and len(body["consumers"]) == 2 and ctx.notified == 1
    status, _hdrs, body = client("POST", "/config", {"_format_version": "3.0", "consumers": [{"username": "dave"}]})
    assert status == 201 and [c["username"] for c in body["consumers"].values()] == ["dave"]
    assert ctx.configuration_hash == ctx.backend.config_hash
    multipart = (b"--XyZ\r\nContent-Disposition: form-data; name=\"config\"; filename=\"kong.yml\"\r\n"
                 b"Content-Type: application/x-yaml\r\n\r\n" + KONG_YML.encode() + b"\r\n--XyZ--\r\n")
    status, _hdrs, body = client("POST", "/config", raw=multipart, content_type="multipart/form-data; boundary=XyZ")
    assert status == 201 and "services" in body
    status, _hdrs, err = client("POST", "/config", {"config": "_format_version: '9.9'\nservices: 3\n"})
    assert status == 400
    assert err["code"] == 14 and err["name"] == "invalid declarative configuration"
    assert err["fields"] == {"_format_version": "expected one of: 1.1, 2.1, 3.0", "services": "expected an array"}


@pytest.mark.parametrize(("version", "has_database"), [("3.3.1", True), ("3.4.3", False)])
def test_dbless_status_has_hash_and_database_only_before_34(version: str, has_database: bool) -> None:
    info = versions.get(version)
    store = declarative.load_store(KONG_YML, info)
    ctx = FakeCtx(info, KongConf({"database": "off", "role": "traditional"}), store,
                  configuration_hash=store.config_hash)
    status, _hdrs, body = Client(admin.AdminApp(ctx))("GET", "/status")
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", body["configuration_hash"])
    assert ("database" in body) == has_database
    ctx.configuration_hash = None
    assert Client(admin.AdminApp(ctx))("GET", "/status")[2]["configuration_hash"] == "0" * 32
