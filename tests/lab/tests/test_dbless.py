"""DB-less nodes (database = off): declarative_config at start, /config, hash, ready."""

from __future__ import annotations

import json

import pytest
from nodefixtures import (
    alive,
    http_call,
    http_json,
    kong_bin,
    make_spec,
    node_pid,
    poll,
    run_kong,
    running_node,
)

from kongemu import versions
from kongemu.httpserver import HTTPServer, Request, Response

EMPTY = "0" * 32


class _Log:
    def error(self, msg: str) -> None:
        del msg

    warn = info = debug = notice = error


@pytest.fixture(scope="module")
def echo():
    def handle(request: Request) -> Response:
        return Response(200, [("Content-Type", "application/json")],
                        json.dumps({"path": request.target}).encode())

    srv = HTTPServer(_Log())
    srv.add_listener("echo", "127.0.0.1", 0, handle)
    port = srv._listeners[0].sock.getsockname()[1]  # noqa: SLF001
    srv.start()
    yield port
    srv.close_now()


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    return lambda version: kong_bin(version, root)


def _yaml(version: str, port: int, path: str = "/echo", key: str | None = None) -> str:
    fmt = versions.get(version).declarative_format
    text = (f'_format_version: "{fmt}"\n'
            "services:\n"
            "- name: echo\n"
            f"  url: http://127.0.0.1:{port}\n"
            "  routes:\n"
            "  - name: r-echo\n"
            f"    paths: [{path}]\n")
    if key:
        text += ("    plugins:\n"
                 "    - name: key-auth\n"
                 "consumers:\n"
                 "- username: alice\n"
                 "  keyauth_credentials:\n"
                 f"  - key: {key}\n")
    return text


@pytest.mark.parametrize("version", ["2.8.4", "3.2.2", "3.4.3", "3.10.0"])
def test_declarative_config_at_start(bins, echo, tmp_path, version):
    decl = tmp_path / "kong.yml"
    decl.write_text(_yaml(version, echo, key="k-alice"))
    spec = make_spec(tmp_path, "dl", version, database="off", declarative_config=decl)
    with running_node(bins(version), spec) as started:
        assert started.out == (f"prefix directory {spec.prefix} not found, trying to create it\n"
                               "Kong started\n")
        assert http_call(f"{spec.proxy_url}/echo/x")[0] == 401
        code, _hdrs, body = http_call(f"{spec.proxy_url}/echo/x", headers={"apikey": "k-alice"})
        assert code == 200 and json.loads(body)["path"] == "/x"
        code, body = http_json(f"http://127.0.0.1:{spec.status}/status")
        assert code == 200
        assert len(body["configuration_hash"]) == 32 and body["configuration_hash"] != EMPTY
        if versions.get(version).dbless_status_has_database:
            assert body["database"] == {"reachable": True}
        else:
            assert "database" not in body
        code, admin_body = http_json(f"http://127.0.0.1:{spec.admin}/status")
        assert code == 200 and admin_body["configuration_hash"] == body["configuration_hash"]
        ready = http_json(f"http://127.0.0.1:{spec.status}/status/ready")
        if versions.get(version).has_ready:
            assert ready == (200, {"message": "ready"})
        else:
            assert ready[0] == 404


def test_bad_declarative_file_fails_start(bins, tmp_path):
    decl = tmp_path / "bad.yml"
    decl.write_text('_format_version: "3.0"\nservices:\n- name: x\n  port: 99999999\n')
    spec = make_spec(tmp_path, "bad", "3.4.3", database="off", declarative_config=decl)
    res = run_kong(bins("3.4.3"), "start", "-c", str(spec.conf_path))
    assert res.rc == 1, str(res)
    assert res.err.startswith("Error: ")
    assert "declarative config" in res.err
    assert "Kong started" not in res.out
    assert node_pid(spec.prefix) is None
    missing = make_spec(tmp_path, "missing", "3.4.3", database="off",
                        declarative_config=tmp_path / "nope.yml")
    res = run_kong(bins("3.4.3"), "start", "-c", str(missing.conf_path))
    assert res.rc == 1 and node_pid(missing.prefix) is None, str(res)


def test_empty_then_post_config(bins, echo, tmp_path):
    version = "3.9.1"
    spec = make_spec(tmp_path, "empty", version, database="off")
    admin = f"http://127.0.0.1:{spec.admin}"
    with running_node(bins(version), spec):
        code, body = http_json(f"http://127.0.0.1:{spec.status}/status")
        assert body["configuration_hash"] == EMPTY
        assert http_json(f"http://127.0.0.1:{spec.status}/status/ready") == (
            503, {"message": "no configuration available (empty configuration present)"})
        assert http_call(f"{spec.proxy_url}/echo")[0] == 404
        text = _yaml(version, echo)
        code, _hdrs, created = http_call(f"{admin}/config", "POST", text,
                                         {"Content-Type": "text/yaml"})
        assert code == 201, created
        poll(lambda: http_call(f"{spec.proxy_url}/echo/a")[0] == 200, 5, "route after /config")
        first = http_json(f"http://127.0.0.1:{spec.status}/status")[1]["configuration_hash"]
        assert first != EMPTY
        assert http_json(f"http://127.0.0.1:{spec.status}/status/ready")[0] == 200
        code, _hdrs, _body = http_call(f"{admin}/config?check_hash=1", "POST", text,
                                       {"Content-Type": "text/yaml"})
        assert code == 304
        code, body = http_json(f"{admin}/config")
        assert code == 200 and "r-echo" in body["config"]
        code, _hdrs, body = http_call(f"{admin}/config", "POST", "services: 3\n",
                                      {"Content-Type": "text/yaml"})
        assert code == 400, body
        # the node still serves the previous configuration
        assert http_call(f"{spec.proxy_url}/echo/a")[0] == 200
        code, _hdrs, _body = http_call(f"{admin}/config", "POST", _yaml(version, echo, "/other"),
                                       {"Content-Type": "text/yaml"})
        assert code == 201
        assert http_call(f"{spec.proxy_url}/echo/a")[0] == 404
        assert http_call(f"{spec.proxy_url}/other/a")[0] == 200
        second = http_json(f"http://127.0.0.1:{spec.status}/status")[1]["configuration_hash"]
        assert second not in (first, EMPTY)
        # Kong DB-less without declarative_config starts empty again after a restart
        pid = node_pid(spec.prefix)
        res = run_kong(bins(version), "restart", "-c", str(spec.conf_path))
        assert res.rc == 0, str(res)
        assert not alive(pid)
        assert http_json(f"http://127.0.0.1:{spec.status}/status")[1]["configuration_hash"] \
            == EMPTY


def test_reload_reads_the_declarative_file_again(bins, echo, tmp_path):
    version = "3.4.3"
    decl = tmp_path / "kong.yml"
    decl.write_text(_yaml(version, echo, "/one"))
    spec = make_spec(tmp_path, "rl", version, database="off", declarative_config=decl)
    with running_node(bins(version), spec):
        assert http_call(f"{spec.proxy_url}/one")[0] == 200
        decl.write_text(_yaml(version, echo, "/two"))
        res = run_kong(bins(version), "reload", "-c", str(spec.conf_path))
        assert res.rc == 0 and res.out == "Kong reloaded\n", str(res)
        poll(lambda: http_call(f"{spec.proxy_url}/two")[0] == 200, 5, "reloaded config")
        assert http_call(f"{spec.proxy_url}/one")[0] == 404
