"""The Admin API and the status listener (kong-facts 6) over HTTP, on both providers: a
running node of the emulator and of real Kong, same requests, same assertions.

One database node (3.4.2) per provider serves the entity tests of this module (each test
uses its own names, so they stay independent); `GET /` is checked on DB-less nodes of
2.8.5, 3.4.2 and 3.9.1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import PgCluster
from nodefixtures import (
    http_call,
    http_json,
    kill_node,
    make_spec,
    node_pid,
    provider_bin,
    provider_params,
    run_kong,
)

from kongemu import versions

NOT_FOUND = {"message": "Not found"}
NOT_ALLOWED = {"message": "Method not allowed"}


@dataclass
class Node:
    provider: str
    version: str
    spec: Any
    password: str = ""

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.spec.admin}"

    @property
    def status(self) -> str:
        return f"http://127.0.0.1:{self.spec.status}"

    def __call__(self, method: str, path: str, body: Any = None, form: dict[str, Any] | None = None
                 ) -> tuple[int, Any]:
        if form is not None:
            code, _hdrs, data = http_call(self.admin + path, method, urlencode(form, doseq=True),
                                          {"Content-Type": "application/x-www-form-urlencoded"})
            return code, json.loads(data) if data else None
        return http_json(self.admin + path, method, body)


def _start(provider: str, version: str, base: Path, root: Path, name: str, **extra: Any) -> Any:
    binary = provider_bin(provider, version, root)
    spec = make_spec(base, name, version, **extra)
    if extra.get("database") == "postgres":
        res = run_kong(binary, "migrations", "bootstrap", "-c", str(spec.conf_path))
        assert res.rc == 0, str(res)
    res = run_kong(binary, "start", "-c", str(spec.conf_path))
    if res.rc != 0:
        kill_node(spec.prefix)
    assert res.rc == 0, str(res)
    return spec


@pytest.fixture(scope="module", params=provider_params(["3.4.2"], fixture=True))
def db_node(request: pytest.FixtureRequest, pg_cluster: PgCluster, node_base: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    provider, version = request.param
    name = pg_cluster.create_database("admin")
    base = node_base / f"admin-{provider}"
    spec = _start(provider, version, base, tmp_path_factory.mktemp("versions"), "db", database="postgres",
                  pg_host=pg_cluster.host, pg_port=pg_cluster.port, pg_user=pg_cluster.user,
                  pg_password=pg_cluster.password, pg_database=name)
    try:
        yield Node(provider, version, spec, pg_cluster.password)
    finally:
        kill_node(spec.prefix, node_pid(spec.prefix))
        pg_cluster.drop_database(name)


# ---------------------------------------------------------------------------
# GET / and /status


@pytest.mark.parametrize(("provider", "version"), provider_params(["2.8.5", "3.4.2", "3.9.1"]))
def test_root_fields_and_masked_secrets(provider: str, version: str, node_base: Path, kong_root: Path,
                                        node_tmp: Path) -> None:
    decl = node_tmp / "kong.yml"
    decl.write_text(f'_format_version: "{versions.get(version).declarative_format}"\n'
                    "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: cors\n")
    spec = _start(provider, version, node_tmp, kong_root, "root", database="off", declarative_config=decl,
                  pg_password="secret-not-shown-1")
    try:
        code, headers, data = http_call(f"http://127.0.0.1:{spec.admin}/")
        body = json.loads(data)
        assert code == 200
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert headers["server"] == f"kong/{version}"
        info = versions.get(version)
        assert body["tagline"] == "Welcome to kong"
        assert body["version"] == version
        assert ("edition" in body) == info.has_edition and body.get("edition", "community") == "community"
        assert re.fullmatch(r"[0-9a-f-]{36}", body["node_id"])
        assert not (spec.prefix / "kong.id").exists(), "only 3.x data planes keep their node id"
        assert isinstance(body["hostname"], str) and body["hostname"]
        assert body["pids"]["master"] == node_pid(spec.prefix)
        assert len(body["pids"]["workers"]) == 1, "nginx_worker_processes = 1"
        assert set(body["timers"]) == {"running", "pending"}
        assert body["plugins"]["enabled_in_cluster"] == ["cors"]
        available = body["plugins"]["available_on_server"]
        assert sorted(available) == info.bundled_plugins
        if info.major < 3:
            assert available["key-auth"] is True
        else:
            assert available["key-auth"] == {"version": version, "priority": 1250}
            assert available["correlation-id"]["priority"] == (100001 if info.at_least(3, 9) else 1)
        assert body["lua_version"].startswith("LuaJIT ")
        config = body["configuration"]
        assert config["pg_password"] == "******"
        assert "secret-not-shown-1" not in data.decode()
        assert config["database"] == "off" and config["role"] == "traditional"
        assert config["admin_listen"] == [f"127.0.0.1:{spec.admin}"]
        assert config["prefix"] == str(spec.prefix)
        assert config["plugins"] == ["bundled"]
        assert config["nginx_worker_processes"] == "1"
        assert config["mem_cache_size"] == "16m"
        # /status on the Admin API and on the status listener (DB-less: a configuration hash)
        for url in (f"http://127.0.0.1:{spec.admin}/status", f"http://127.0.0.1:{spec.status}/status"):
            code, status = http_json(url)
            assert code == 200
            assert set(status["server"]) == {"connections_active", "connections_reading", "connections_writing",
                                             "connections_waiting", "connections_accepted", "connections_handled",
                                             "total_requests"}
            assert "lua_shared_dicts" in status["memory"] and status["memory"]["workers_lua_vms"]
            assert re.fullmatch(r"[0-9a-f]{32}", status["configuration_hash"])
            assert ("database" in status) == info.dbless_status_has_database
        ready = http_json(f"http://127.0.0.1:{spec.status}/status/ready")
        assert ready == ((200, {"message": "ready"}) if info.has_ready else (404, NOT_FOUND))
        assert http_json(f"http://127.0.0.1:{spec.admin}/status/ready")[0] == 404
    finally:
        kill_node(spec.prefix)


def test_status_reports_database_reachability(db_node: Node) -> None:
    for url in (f"{db_node.admin}/status", f"{db_node.status}/status"):
        code, body = http_json(url)
        assert code == 200 and body["database"] == {"reachable": True}
        assert "configuration_hash" not in body
        assert body["server"]["total_requests"] >= 1
    assert http_json(f"{db_node.status}/status/ready") == (200, {"message": "ready"})
    assert http_json(f"{db_node.admin}/status?unit=x")[0] == 400


# ---------------------------------------------------------------------------
# Entities


def test_service_crud_and_errors(db_node: Node) -> None:
    client = db_node
    status, svc = client("POST", "/services", {"name": "s1", "url": "https://example.test:8443/api"})
    assert status == 201
    assert (svc["protocol"], svc["host"], svc["port"], svc["path"]) == ("https", "example.test", 8443, "/api")
    assert svc["retries"] == 5 and svc["connect_timeout"] == 60000 and svc["enabled"] is True
    assert isinstance(svc["created_at"], int) and svc["tags"] is None

    assert client("GET", f"/services/{svc['id']}")[1] == svc
    assert client("GET", "/services/s1")[1] == svc

    status, err = client("POST", "/services", {"name": "s1", "host": "other.test"})
    assert status == 409
    assert err == {"code": 5, "name": "unique constraint violation",
                   "message": "UNIQUE violation detected on '{name=\"s1\"}'", "fields": {"name": "s1"}}

    status, err = client("POST", "/services", {"name": "s2"})
    assert status == 400
    assert err == {"code": 2, "name": "schema violation", "message": "schema violation (host: required field missing)",
                   "fields": {"host": "required field missing"}}

    status, err = client("POST", "/services", {"host": "x.test", "port": 70000, "protocol": "ftp", "bogus": 1})
    assert status == 400
    assert err["fields"] == {"port": "value should be between 0 and 65535", "bogus": "unknown field",
                             "protocol": "expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, "
                                         "udp"}
    assert err["message"].startswith("3 schema violations (bogus: unknown field; port: value should be between")

    status, patched = client("PATCH", "/services/s1", {"retries": 2})
    assert status == 200 and patched["retries"] == 2 and patched["host"] == "example.test"
    assert patched["updated_at"] >= svc["updated_at"]

    status, put = client("PUT", "/services/s3", {"host": "three.test"})
    assert status == 200 and put["name"] == "s3"
    status, put2 = client("PUT", "/services/s3", {"host": "three-bis.test"})
    assert status == 200 and put2["id"] == put["id"] and put2["host"] == "three-bis.test"

    assert client("DELETE", "/services/s3")[0] == 204
    assert client("GET", "/services/s3") == (404, NOT_FOUND)
    assert client("DELETE", "/services/s3")[0] == 204
    assert client("PATCH", "/services/s3", {"retries": 1})[0] == 404
    assert client("DELETE", "/services") == (405, NOT_ALLOWED)
    assert client("POST", "/services/s1", {"host": "x"}) == (405, NOT_ALLOWED)
    assert client("GET", "/nope") == (404, NOT_FOUND)


def test_routes_form_bodies_nesting_and_references(db_node: Node) -> None:
    client = db_node
    svc = client("POST", "/services", {"name": "rs1", "host": "up.test"})[1]
    form = {"name": "r1", "paths[]": ["/a", "/b"], "hosts": "h.test", "service.id": svc["id"], "strip_path": "false"}
    status, route = client("POST", "/routes", form=form)
    assert status == 201, route
    assert route["paths"] == ["/a", "/b"] and route["hosts"] == ["h.test"] and route["strip_path"] is False
    assert route["service"] == {"id": svc["id"]} and route["protocols"] == ["http", "https"]
    assert route["https_redirect_status_code"] == 426 and route["path_handling"] == "v0"

    status, nested = client("POST", "/services/rs1/routes", {"name": "r2", "methods": ["GET"]})
    assert status == 201 and nested["service"] == {"id": svc["id"]}
    client("POST", "/routes", {"name": "r3", "paths": ["/c"]})
    listed = client("GET", "/services/rs1/routes")[1]
    assert sorted(r["name"] for r in listed["data"]) == ["r1", "r2"] and listed["next"] is None
    assert client("GET", "/routes/r2/service")[1]["id"] == svc["id"]
    assert client("GET", "/routes/r3/service")[0] == 404
    assert client("GET", "/services/nope/routes")[0] == 404

    status, err = client("POST", "/routes", {"name": "r4"})
    assert status == 400
    assert err["fields"] == {"@entity": ["must set one of 'methods', 'hosts', 'headers', 'paths', 'snis' when "
                                         "'protocols' is 'https'"]}
    status, err = client("POST", "/routes", {"paths": ["nope"]})
    assert status == 400 and err["fields"]["paths"] == ["should start with: / (fixed path) or ~/ (regex path)"]

    missing = "11111111-2222-4333-8444-555555555555"
    status, err = client("POST", "/routes", {"paths": ["/x"], "service": {"id": missing}})
    assert status == 400
    assert err == {"code": 4, "name": "foreign key violation",
                   "message": f"the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'services' "
                              "entity.", "fields": {"service": {"id": missing}}}
    status, err = client("DELETE", "/services/rs1")
    assert status == 400
    assert err["code"] == 4 and err["message"] == "an existing 'routes' entity references this 'services' entity"


def test_consumers_key_auth_and_plugins(db_node: Node) -> None:
    client = db_node
    status, err = client("POST", "/consumers", {"tags": ["a"]})
    assert status == 400
    assert err["message"] == "schema violation (at least one of these fields must be non-empty: 'custom_id', " \
                             "'username')"
    consumer = client("POST", "/consumers", {"username": "alice"})[1]
    status, cred = client("POST", "/consumers/alice/key-auth", {})
    assert status == 201 and re.fullmatch(r"[0-9a-zA-Z]{32}", cred["key"]), cred
    assert cred["consumer"] == {"id": consumer["id"]}
    assert client("POST", "/consumers/alice/key-auth", form={"key": "secret-1"})[0] == 201
    status, err = client("POST", "/consumers/alice/key-auth", {"key": "secret-1"})
    assert status == 409 and err["fields"] == {"key": "secret-1"}
    assert len([k for k in client("GET", "/key-auths")[1]["data"] if k["consumer"]["id"] == consumer["id"]]) == 2
    assert client("GET", "/consumers/alice/key-auth/secret-1")[1]["key"] == "secret-1"
    assert client("DELETE", "/consumers/alice/key-auth/secret-1")[0] == 204
    assert client("GET", "/consumers/alice/key-auth/secret-1")[0] == 404

    status, err = client("POST", "/plugins", {"name": "nope"})
    assert status == 400
    assert err["fields"] == {"name": "plugin 'nope' not enabled; add it to the 'plugins' configuration property"}
    svc = client("POST", "/services", {"name": "ps1", "host": "up.test"})[1]
    form = {"name": "key-auth", "config.key_names": "x-api-key"}
    status, plugin = client("POST", "/services/ps1/plugins", form=form)
    assert status == 201, plugin
    assert plugin["service"] == {"id": svc["id"]} and plugin["route"] is None and plugin["enabled"] is True
    assert plugin["config"]["key_names"] == ["x-api-key"] and plugin["config"]["hide_credentials"] is False
    status, err = client("POST", "/plugins", {"name": "key-auth", "service": {"id": svc["id"]}})
    assert status == 409 and err["code"] == 5
    assert err["message"] == (f"UNIQUE violation detected on '{{consumer=null,name=\"key-auth\",route=null,"
                              f"service={{id=\"{svc['id']}\"}}}}'")
    status, patched = client("PATCH", f"/plugins/{plugin['id']}", {"config": {"hide_credentials": True}})
    assert status == 200 and patched["config"]["key_names"] == ["x-api-key"] and patched["config"]["hide_credentials"]
    enabled = client("GET", "/plugins/enabled")[1]["enabled_plugins"]  # real Kong: hash order
    assert sorted(enabled) == versions.get(db_node.version).bundled_plugins
    assert client("DELETE", "/consumers/alice")[0] == 204
    assert not [k for k in client("GET", "/key-auths")[1]["data"] if k["consumer"]["id"] == consumer["id"]]


def test_upstreams_and_targets(db_node: Node) -> None:
    client = db_node
    status, upstream = client("POST", "/upstreams", {"name": "backend"})
    assert status == 201 and upstream["algorithm"] == "round-robin" and upstream["slots"] == 10000
    assert upstream["healthchecks"]["active"]["http_path"] == "/"
    status, target = client("POST", "/upstreams/backend/targets", {"target": "127.0.0.1"})
    assert status == 201 and target["target"] == "127.0.0.1:8000" and target["weight"] == 100
    assert target["upstream"] == {"id": upstream["id"]}
    assert client("POST", "/upstreams/backend/targets", {"target": "127.0.0.1:8000"})[0] == 409
    assert len(client("GET", "/upstreams/backend/targets")[1]["data"]) == 1
    assert client("POST", "/upstreams/backend/targets", {"target": "x", "weight": 70000})[0] == 400


def test_pagination_and_tags(db_node: Node) -> None:
    client = db_node
    for i in range(5):
        tags = ["team-a"] + (["prod"] if i % 2 == 0 else ["dev"])
        assert client("POST", "/consumers", {"username": f"u{i}", "tags": tags})[0] == 201
    seen: list[str] = []
    path = "/consumers?size=2&tags=team-a"
    pages = 0
    while path:
        status, page = client("GET", path)
        assert status == 200
        assert len(page["data"]) <= 2
        seen.extend(c["username"] for c in page["data"])
        pages += 1
        path = page["next"]
        if path:
            assert path.startswith("/consumers?offset=") and page["offset"]
            assert re.fullmatch(r"/consumers\?offset=[A-Za-z0-9%]+&tags=team-a&size=2", path), path
    assert pages == 3 and sorted(seen) == [f"u{i}" for i in range(5)]
    assert len(client("GET", "/consumers?tags=team-a,prod")[1]["data"]) == 3
    assert len(client("GET", "/consumers?tags=prod/dev")[1]["data"]) == 5
    assert client("GET", "/consumers?tags=dev,prod")[1]["data"] == []
    status, page = client("GET", "/consumers?size=1&tags=prod")
    assert page["next"].endswith("&tags=prod&size=1") and "=" not in page["offset"]
    status, err = client("GET", "/consumers?offset=x")
    assert status == 400
    assert err == {"code": 7, "name": "invalid offset", "message": "'x' is not a valid offset: bad base64 encoding"}
    status, err = client("GET", "/consumers?size=0")
    assert status == 400 and err["code"] == 9 and err["name"] == "invalid size"
    assert client("GET", "/consumers?size=1001")[0] == 400
    status, err = client("GET", "/consumers?tags=a,b/c")
    assert status == 400 and err["message"] == "invalid option (tags: invalid filter syntax)"


def test_workspaces_config_and_clustering_on_a_database_node(db_node: Node) -> None:
    client = db_node
    status, page = client("GET", "/workspaces")
    assert status == 200 and [w["name"] for w in page["data"]] == ["default"]
    assert client("GET", "/workspaces/default")[1]["name"] == "default"
    msg = {"message": "this endpoint is only available when Kong is configured to not use a database"}
    assert client("GET", "/config") == (400, msg)
    assert client("POST", "/config", {"_format_version": "3.0"}) == (400, msg)
    not_cp = {"message": "this endpoint is only available when Kong is configured to run as Control Plane "
                         "for the cluster"}
    assert client("GET", "/clustering/data-planes") == (400, not_cp)
    assert client("GET", "/clustering/status") == (400, not_cp)


# ---------------------------------------------------------------------------
# DB-less reads and rejected writes

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


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_dbless_reads_and_rejected_writes(provider: str, node_tmp: Path, kong_root: Path) -> None:
    decl = node_tmp / "kong.yml"
    decl.write_text(KONG_YML, encoding="utf-8")
    spec = _start(provider, "3.4.2", node_tmp, kong_root, "dl", database="off", declarative_config=decl)
    client = Node(provider, "3.4.2", spec)
    try:
        assert [s["name"] for s in client("GET", "/services")[1]["data"]] == ["echo"]
        assert client("GET", "/services/echo/routes")[1]["data"][0]["name"] == "echo-route"
        assert client("GET", "/consumers/bob/key-auth")[1]["data"][0]["key"] == "bob-key"
        status, err = client("POST", "/routes", {"paths": ["/"]})
        assert status == 405
        assert err == {"code": 12, "name": "operation unsupported",
                       "message": "cannot create 'routes' entities when not using a database"}
        svc_id = client("GET", "/services/echo")[1]["id"]
        for method, path, message in (
                ("PATCH", "/services/echo", "cannot update 'services' entities by 'name' when not using a database"),
                ("PATCH", f"/services/{svc_id}", "cannot update 'services' entities when not using a database"),
                ("PUT", "/services/echo", "cannot create or update 'services' entities by 'name' when not using "
                                          "a database"),
                ("DELETE", f"/services/{svc_id}", "cannot remove 'services' entities when not using a database")):
            status, err = client(method, path, {"PATCH": {"retries": 1}, "PUT": {"host": "x.test"}}.get(method))
            assert (status, err["message"]) == (405, message), (method, path)
        assert client("DELETE", "/routes") == (405, NOT_ALLOWED)
        assert client("GET", "/workspaces")[1]["data"][0]["name"] == "default"
    finally:
        kill_node(spec.prefix)
