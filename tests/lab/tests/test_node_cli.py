"""Process commands that need no database (DB-less nodes): prepare, bind failures,
quit --wait, drain, ssl listeners, pid file and kong.id handling (kong-facts 8)."""

from __future__ import annotations

import socket
import time

import pytest
from nodefixtures import (
    alive,
    free_port,
    http_json,
    kong_bin,
    make_spec,
    node_pid,
    poll,
    run_kong,
    running_node,
)


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    return lambda version: kong_bin(version, root)


def test_prepare_writes_the_prefix_without_starting(bins, tmp_path):
    spec = make_spec(tmp_path, "prep", "3.4.3", database="off")
    res = run_kong(bins("3.4.3"), "prepare", "-c", str(spec.conf_path))
    assert res.rc == 0, str(res)
    for rel in (".kong_env", "nginx.conf", "logs/error.log", "kong.id"):
        assert (spec.prefix / rel).exists(), rel
    assert node_pid(spec.prefix) is None
    assert (spec.prefix / "pids").is_dir()


def test_bind_failure_fails_start_and_leaves_nothing_running(bins, tmp_path):
    spec = make_spec(tmp_path, "busy", "3.4.3", database="off")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", spec.admin))
        taken.listen(1)
        res = run_kong(bins("3.4.3"), "start", "-c", str(spec.conf_path))
    assert res.rc == 1, str(res)
    assert (f"Error: nginx: [emerg] bind() to 127.0.0.1:{spec.admin} failed "
            "(98: Address already in use)") in res.err
    assert node_pid(spec.prefix) is None
    assert "bind() to" in (spec.prefix / "logs" / "error.log").read_text()
    # nothing listens on the other ports either
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", spec.proxy), timeout=1)


def test_ssl_listener_is_skipped_with_a_warning(bins, tmp_path):
    port = free_port()
    spec = make_spec(tmp_path, "ssl", "3.6.1", database="off")
    spec.extra["proxy_listen"] = f"127.0.0.1:{spec.proxy}, 127.0.0.1:{port} http2 ssl"
    spec.write()
    with running_node(bins("3.6.1"), spec):
        log = (spec.prefix / "logs" / "error.log").read_text()
        assert f"proxy_listen: 127.0.0.1:{port} has the ssl flag" in log
        assert http_json(f"{spec.proxy_url}/")[0] == 404


def test_quit_wait_and_kong_id_kept_across_restarts(bins, tmp_path):
    spec = make_spec(tmp_path, "wait", "3.9.1", database="off")
    kong = bins("3.9.1")
    with running_node(kong, spec):
        node_id = (spec.prefix / "kong.id").read_text().strip()
        pid = node_pid(spec.prefix)
        started = time.monotonic()
        res = run_kong(kong, "quit", "-p", str(spec.prefix), "-w", "1")
        assert res.rc == 0 and res.out == "Kong stopped (gracefully)\n", str(res)
        assert time.monotonic() - started >= 1.0
        assert not alive(pid)
        assert not (spec.prefix / "pids" / "nginx.pid").exists()
        res = run_kong(kong, "start", "-c", str(spec.conf_path))
        assert res.rc == 0, str(res)
        assert (spec.prefix / "kong.id").read_text().strip() == node_id
        code, body = http_json(f"http://127.0.0.1:{spec.admin}/")
        assert code == 200 and body["node_id"] == node_id


def test_stale_pid_file_does_not_block_start(bins, tmp_path):
    spec = make_spec(tmp_path, "stale", "3.4.3", database="off")
    kong = bins("3.4.3")
    with running_node(kong, spec):
        pid = node_pid(spec.prefix)
    poll(lambda: not alive(pid), 5, "node gone")
    (spec.prefix / "pids" / "nginx.pid").write_text("999999\n")
    res = run_kong(kong, "health", "-p", str(spec.prefix))
    assert res.rc == 1 and res.out == "nginx.......not running\n\n"
    with running_node(kong, spec) as started:
        assert started.out == "Kong started\n"


def test_drain_without_status_listener(bins, tmp_path):
    spec = make_spec(tmp_path, "nostatus", "3.9.1", database="off")
    spec.extra["status_listen"] = "off"
    spec.write()
    kong = bins("3.9.1")
    with running_node(kong, spec):
        res = run_kong(kong, "drain", "-p", str(spec.prefix))
        assert res.rc == 0 and res.out == "No status listeners found in configuration.\n", \
            str(res)


def test_drain_dbless_ready_state(bins, tmp_path):
    decl = tmp_path / "kong.yml"
    decl.write_text('_format_version: "3.0"\nservices:\n- name: s\n  url: http://127.0.0.1:9\n')
    spec = make_spec(tmp_path, "drain", "3.10.0", database="off", declarative_config=decl)
    kong = bins("3.10.0")
    url = f"http://127.0.0.1:{spec.status}/status/ready"
    with running_node(kong, spec):
        assert http_json(url) == (200, {"message": "ready"})
        res = run_kong(kong, "drain", "-c", str(spec.conf_path))
        assert res.rc == 0 and res.out == "Kong's status successfully changed to 'draining'\n"
        assert http_json(url) == (503, {"message": "draining"})
        res = run_kong(kong, "restart", "-c", str(spec.conf_path))
        assert res.rc == 0, str(res)
        assert http_json(url) == (200, {"message": "ready"})
