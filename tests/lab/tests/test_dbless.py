"""DB-less nodes (database = off): declarative_config at start, /config, hash, ready, on both
providers (3.2.2 on the emulator only: no build of it here)."""

from __future__ import annotations

import json
import re

import pytest
from nodefixtures import (
    alive,
    http_call,
    http_json,
    make_spec,
    node_pid,
    poll,
    provider_bin,
    provider_params,
    run_kong,
    running_node,
)

from kongemu import versions

EMPTY = "0" * 32
BOTH = pytest.mark.parametrize("provider", ["emulated", "real"])


@pytest.fixture
def bins(provider, kong_root):
    return lambda version: provider_bin(provider, version, kong_root)


@pytest.fixture
def echo(echo_port):
    return echo_port


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


@pytest.mark.parametrize(("provider", "version"), provider_params(["2.8.5", "3.4.2", "3.9.1"])
                         + provider_params(["3.2.2"], ("emulated",)))
def test_declarative_config_at_start(bins, echo, node_tmp, version):
    decl = node_tmp / "kong.yml"
    decl.write_text(_yaml(version, echo, key="k-alice"))
    spec = make_spec(node_tmp, "dl", version, database="off", declarative_config=decl)
    with running_node(bins(version), spec) as started:
        lines = [f"prefix directory {spec.prefix} not found, trying to create it", "Kong started"]
        # 3.x: bin/kong's outer process made the prefix; its stdout is flushed when it exits
        assert started.out.splitlines() == (lines if versions.get(version).major < 3 else lines[::-1])
        assert http_call(f"{spec.proxy_url}/echo/x")[0] == 401
        code, _hdrs, body = http_call(f"{spec.proxy_url}/echo/x", headers={"apikey": "k-alice"})
        assert code == 200 and json.loads(body)["path"] == "/x"
        code, body = http_json(f"http://127.0.0.1:{spec.status}/status")
        assert code == 200
        # 2.x reports the empty hash for a configuration loaded from declarative_config
        assert re.fullmatch(r"[0-9a-f]{32}", body["configuration_hash"])
        assert (body["configuration_hash"] == EMPTY) == (versions.get(version).major < 3)
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


@BOTH
def test_bad_declarative_file_fails_start(bins, node_tmp):
    decl = node_tmp / "bad.yml"
    decl.write_text('_format_version: "3.0"\nservices:\n- name: x\n  port: 99999999\n')
    spec = make_spec(node_tmp, "bad", "3.4.2", database="off", declarative_config=decl)
    res = run_kong(bins("3.4.2"), "start", "-c", str(spec.conf_path))
    assert res.rc == 1, str(res)
    assert res.err.startswith("Error: ")
    assert "declarative config" in res.err
    assert "Kong started" not in res.out
    assert node_pid(spec.prefix) is None
    missing = make_spec(node_tmp, "missing", "3.4.2", database="off",
                        declarative_config=node_tmp / "nope.yml")
    res = run_kong(bins("3.4.2"), "start", "-c", str(missing.conf_path))
    assert res.rc == 1 and node_pid(missing.prefix) is None, str(res)


@BOTH
def test_empty_then_post_config(bins, echo, node_tmp):
    version = "3.9.1"
    spec = make_spec(node_tmp, "empty", version, database="off")
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
        # real Kong rebuilds the router after answering: poll
        poll(lambda: http_call(f"{spec.proxy_url}/echo/a")[0] == 404, 5, "the old route gone")
        poll(lambda: http_call(f"{spec.proxy_url}/other/a")[0] == 200, 5, "the new route")
        second = http_json(f"http://127.0.0.1:{spec.status}/status")[1]["configuration_hash"]
        assert second not in (first, EMPTY)
        # 3.x keeps the last /config in <prefix>/dbless.lmdb: a restart without
        # declarative_config comes back with it (real 3.4.2 and 3.9.1)
        pid = node_pid(spec.prefix)
        res = run_kong(bins(version), "restart", "-c", str(spec.conf_path))
        assert res.rc == 0, str(res)
        assert not alive(pid)
        poll(lambda: http_json(f"http://127.0.0.1:{spec.status}/status")[1]["configuration_hash"] == second,
             10, "the saved configuration after the restart")
        assert http_call(f"{spec.proxy_url}/other/a")[0] == 200
        assert (spec.prefix / "dbless.lmdb").is_dir()


@BOTH
def test_reload_reads_the_declarative_file_again(bins, echo, node_tmp):
    version = "3.4.2"
    decl = node_tmp / "kong.yml"
    decl.write_text(_yaml(version, echo, "/one"))
    spec = make_spec(node_tmp, "rl", version, database="off", declarative_config=decl)
    with running_node(bins(version), spec):
        assert http_call(f"{spec.proxy_url}/one")[0] == 200
        decl.write_text(_yaml(version, echo, "/two"))
        res = run_kong(bins(version), "reload", "-c", str(spec.conf_path))
        assert res.rc == 0 and res.out == "Kong reloaded\n", str(res)
        poll(lambda: http_call(f"{spec.proxy_url}/two")[0] == 200, 5, "reloaded config")
        assert http_call(f"{spec.proxy_url}/one")[0] == 404
