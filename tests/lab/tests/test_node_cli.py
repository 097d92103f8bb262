"""Process commands that need no database (DB-less nodes): prepare, bind failures,
quit --wait, drain, pid file and node id handling (kong-facts 8), on both providers
unless a test says why not."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from nodefixtures import (
    alive,
    free_port,
    http_call,
    http_json,
    make_spec,
    node_pid,
    poll,
    provider_bin,
    run_kong,
    running_node,
)

BOTH = pytest.mark.parametrize("provider", ["emulated", "real"])


@pytest.fixture
def kong_bin(provider, kong_root):
    return lambda version: provider_bin(provider, version, kong_root)


@BOTH
def test_prepare_writes_the_prefix_without_starting(kong_bin, node_tmp):
    spec = make_spec(node_tmp, "prep", "3.4.2", database="off")
    res = run_kong(kong_bin("3.4.2"), "prepare", "-c", str(spec.conf_path))
    assert res.rc == 0, str(res)
    assert res.out == f"prefix directory {spec.prefix} not found, trying to create it\n"
    for rel in (".kong_env", "nginx.conf", "nginx-kong.conf", "logs/error.log"):
        assert (spec.prefix / rel).exists(), rel
    assert oct((spec.prefix / ".kong_env").stat().st_mode & 0o777) == "0o640"
    assert not (spec.prefix / "kong.id").exists(), "only data planes keep a node id"
    assert node_pid(spec.prefix) is None
    assert (spec.prefix / "pids").is_dir()


@BOTH
def test_only_kong_settings_from_the_environment_reach_kong_env(kong_bin, node_tmp):
    # Real Kong takes KONG_<name> only for its own settings and dynamic nginx directives; any other
    # KONG_* variable (an Admin API token in an operator's shell) is ignored, not written to .kong_env.
    spec = make_spec(node_tmp, "envs", "3.9.1", database="off")
    res = run_kong(kong_bin("3.9.1"), "prepare", "-c", str(spec.conf_path),
                   env={"KONG_ADMIN_TOKEN": "env-marker-token", "KONG_LOG_LEVEL": "debug",
                        "KONG_NGINX_HTTP_CLIENT_BODY_BUFFER_SIZE": "64k"})
    assert res.rc == 0, str(res)
    kong_env = (spec.prefix / ".kong_env").read_text()
    assert "\nlog_level = debug\n" in kong_env
    assert "\nnginx_http_client_body_buffer_size = 64k\n" in kong_env
    assert "env-marker-token" not in kong_env and "admin_token" not in kong_env


@BOTH
def test_bind_failure_fails_start_and_leaves_nothing_running(kong_bin, node_tmp):
    spec = make_spec(node_tmp, "busy", "3.4.2", database="off")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", spec.admin))
        taken.listen(1)
        res = run_kong(kong_bin("3.4.2"), "start", "-c", str(spec.conf_path))
    assert res.rc == 1, str(res)
    # real: `Error: <path>/kong/cmd/start.lua:<n>: nginx: [emerg] bind() ...` (nginx retries 5 times)
    assert re.match(r"^Error: (\S*/kong/cmd/start\.lua:\d+: )?nginx: \[emerg\] bind\(\) to "
                    rf"127\.0\.0\.1:{spec.admin} failed \(98: Address already in use\)", res.err), str(res)
    assert res.err.count(f"bind() to 127.0.0.1:{spec.admin} failed") == 5, "nginx tries 5 times"
    assert "nginx: [emerg] still could not bind()\n" in res.err
    assert "Kong started" not in res.out
    assert node_pid(spec.prefix) is None
    assert "bind() to" in (spec.prefix / "logs" / "error.log").read_text()
    # nothing listens on the other ports either
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", spec.proxy), timeout=1)


def test_ssl_listener_is_skipped_with_a_warning(kong_root, node_tmp):
    """Emulator only: it serves plain HTTP and skips `ssl` listeners (real Kong serves TLS)."""
    port = free_port()
    spec = make_spec(node_tmp, "ssl", "3.6.1", database="off")
    spec.extra["proxy_listen"] = f"127.0.0.1:{spec.proxy}, 127.0.0.1:{port} http2 ssl"
    spec.write()
    with running_node(provider_bin("emulated", "3.6.1", kong_root), spec):
        log = (spec.prefix / "logs" / "error.log").read_text()
        assert f"proxy_listen: 127.0.0.1:{port} has the ssl flag" in log
        assert http_json(f"{spec.proxy_url}/")[0] == 404


@BOTH
def test_quit_wait_and_a_new_node_id_at_each_start(kong_bin, node_tmp):
    spec = make_spec(node_tmp, "wait", "3.9.1", database="off")
    kong = kong_bin("3.9.1")
    with running_node(kong, spec):
        node_id = http_json(f"http://127.0.0.1:{spec.admin}/")[1]["node_id"]
        pid = node_pid(spec.prefix)
        started = time.monotonic()
        res = run_kong(kong, "quit", "-p", str(spec.prefix), "-w", "1")
        assert res.rc == 0 and res.out == "Kong stopped (gracefully)\n", str(res)
        assert time.monotonic() - started >= 1.0
        assert not alive(pid)
        assert not (spec.prefix / "pids" / "nginx.pid").exists()
        res = run_kong(kong, "start", "-c", str(spec.conf_path))
        assert res.rc == 0, str(res)
        code, body = http_json(f"http://127.0.0.1:{spec.admin}/")
        assert code == 200 and re.fullmatch(r"[0-9a-f-]{36}", body["node_id"])
        assert body["node_id"] != node_id, "a traditional node draws a new node id at each start"
        assert not (spec.prefix / "kong.id").exists()


@BOTH
def test_stale_pid_file_does_not_block_start(kong_bin, node_tmp):
    spec = make_spec(node_tmp, "stale", "3.4.2", database="off")
    kong = kong_bin("3.4.2")
    with running_node(kong, spec):
        pid = node_pid(spec.prefix)
    poll(lambda: not alive(pid), 5, "node gone")
    (spec.prefix / "pids" / "nginx.pid").write_text("999999\n")
    res = run_kong(kong, "health", "-p", str(spec.prefix))
    assert res.rc == 1 and res.out == "nginx.......not running\n\n"
    with running_node(kong, spec) as started:
        assert started.out == "Kong started\n"


@BOTH
def test_drain_without_status_listener_and_dbless_ready_state(kong_bin, node_tmp):
    spec = make_spec(node_tmp, "nostatus", "3.9.1", database="off")
    spec.extra["status_listen"] = "off"
    spec.write()
    kong = kong_bin("3.9.1")
    with running_node(kong, spec):
        res = run_kong(kong, "drain", "-p", str(spec.prefix))
        assert res.rc == 0 and res.out == "No status listeners found in configuration.\n", str(res)

    decl = node_tmp / "kong.yml"
    decl.write_text('_format_version: "3.0"\nservices:\n- name: s\n  url: http://127.0.0.1:9\n')
    spec = make_spec(node_tmp, "drain", "3.9.1", database="off", declarative_config=decl)
    url = f"http://127.0.0.1:{spec.status}/status/ready"
    with running_node(kong, spec):
        assert http_json(url) == (200, {"message": "ready"})
        res = run_kong(kong, "drain", "-c", str(spec.conf_path))
        assert res.rc == 0 and res.out == "Kong's status successfully changed to 'draining'\n", str(res)
        assert http_json(url) == (503, {"message": "draining"})
        code, _hdrs, body = http_call(url, "POST", "status=draining",
                                      {"Content-Type": "application/x-www-form-urlencoded"})
        assert code == 204 and body == b""
        res = run_kong(kong, "restart", "-c", str(spec.conf_path))
        assert res.rc == 0, str(res)
        poll(lambda: http_json(url) == (200, {"message": "ready"}), 10, "ready after the restart")
        assert json.loads(http_call(f"http://127.0.0.1:{spec.admin}/services")[2])["data"][0]["name"] == "s"


@BOTH
def test_a_prefix_workers_cannot_enter_starts_but_never_serves(kong_bin, node_tmp):
    """nginx runs its workers as `nobody` when started as root: a 3.x prefix under a 0700
    directory kills the worker (LMDB), yet `kong start` says `Kong started` and exits 0, and
    the listeners accept connections that are never answered (judge a node by readiness)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("nginx runs its workers as another user only when started as root")
    closed = node_tmp / "closed"
    closed.mkdir(mode=0o700)
    spec = make_spec(closed, "n", "3.4.2", database="off")
    kong = kong_bin("3.4.2")
    with running_node(kong, spec) as started:
        assert "Kong started" in started.out.splitlines(), str(started)
        with pytest.raises((TimeoutError, OSError)):
            http_call(f"http://127.0.0.1:{spec.status}/status", timeout=2)
        log = poll(lambda: "cannot be respawned" in (spec.prefix / "logs" / "error.log").read_text()
                   and (spec.prefix / "logs" / "error.log").read_text(), 10, "the worker's death in error.log")
        assert "unable to open LMDB environment: Permission denied" in log
        assert alive(node_pid(spec.prefix)), "the master stays"
