"""Process control (kong-facts 8) and the traditional-mode node against a real PostgreSQL,
on both providers (the emulator and real Kong): CLI messages, quit/restart/reload, start
gate (4.2/4.3), --run-migrations, /status/ready by version, database down, graceful quit
under keep-alive load, Admin writes reaching another node. A node of X through Y's `up`
and `finish` is test_conformance.test_node_walk."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nodefixtures import (
    NodePg,
    Result,
    alive,
    http_call,
    http_json,
    kill_node,
    make_spec,
    node_pid,
    poll,
    provider_bin,
    provider_params,
    run_kong,
    running_node,
)

from kongemu import versions

BOTH = pytest.mark.parametrize("provider", ["emulated", "real"])


@pytest.fixture(scope="module")
def pg():
    cluster = NodePg()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def echo(echo_port):
    return echo_port


@pytest.fixture
def bins(provider, kong_root):
    return lambda version: provider_bin(provider, version, kong_root)


def _kong(bins, version: str, *args: str) -> Result:
    return run_kong(bins(version), *args)


SEED = """_format_version: "{fmt}"
services:
- name: echo
  url: http://127.0.0.1:{port}
  routes:
  - name: r-echo
    paths: [/echo]
  - name: r-secured
    paths: [/secured]
    plugins:
    - name: key-auth
consumers:
- username: alice
  keyauth_credentials:
  - key: alice-key
plugins:
- name: prometheus
"""


def _seed(bins, spec, version: str, echo_port: int) -> None:
    """A service, a route, a key-auth route with a consumer, and the prometheus plugin,
    through `kong config db_import` (the same on both providers)."""
    path = spec.conf_path.with_name("seed.yml")
    path.write_text(SEED.format(fmt=versions.get(version).declarative_format, port=echo_port), encoding="utf-8")
    res = _kong(bins, version, "config", "db_import", str(path), "-c", str(spec.conf_path))
    assert res.rc == 0, str(res)


_SEEDED: dict[tuple[str, str], Any] = {}


def _seeded(pg, bins, provider: str, version: str, node_tmp: Path, echo_port: int, name: str = "n1"):
    """A node spec on a database bootstrapped and seeded once per (provider, version) in this
    module (tests only read the seed, or write names of their own)."""
    key = (provider, version)
    if key not in _SEEDED:
        info, spec = _bootstrapped(pg, bins, version, node_tmp, name)
        _seed(bins, spec, version, echo_port)
        _SEEDED[key] = info
        return info, spec
    info = _SEEDED[key]
    return info, make_spec(node_tmp, name, version, **info.conf())


def _bootstrapped(pg, bins, version: str, tmp_path: Path, name: str = "n1", **extra: Any):
    info = pg.fresh()
    spec = make_spec(tmp_path, name, version, **info.conf(), **extra)
    res = _kong(bins, version, "migrations", "bootstrap", "-c", str(spec.conf_path))
    assert res.rc == 0, str(res)
    return info, spec


# ---------------------------------------------------------------------------- CLI messages
@BOTH
def test_start_health_stop_messages(pg, bins, echo, node_tmp, provider):
    version = "3.4.2"
    info, spec = _seeded(pg, bins, provider, version, node_tmp, echo)
    kong = bins(version)
    res = run_kong(kong, "start", "-c", str(spec.conf_path))
    try:
        assert res.rc == 0, str(res)
        assert res.out.strip().endswith("Kong started")
        pid = node_pid(spec.prefix)
        assert pid and alive(pid)
        for rel in (".kong_env", "logs/error.log", "logs/access.log", "logs/admin_access.log"):
            assert (spec.prefix / rel).exists(), rel
        assert oct((spec.prefix / ".kong_env").stat().st_mode & 0o777) == "0o640"
        # up to 3.6 `kong start --db-timeout` defaults to 60 s and overrides pg_timeout
        assert "\npg_timeout = 60000\n" in (spec.prefix / ".kong_env").read_text()
        # no secret in the logs or output
        assert info.password not in (spec.prefix / "logs" / "error.log").read_text()
        # every listener accepts: proxy routes, admin-less node still has status
        status, headers, body = http_call(f"{spec.proxy_url}/echo/x")
        assert status == 200, body
        assert headers["via"] == "kong/3.4.2"
        status, _hdrs, body = http_call(f"{spec.proxy_url}/nothing")
        assert status == 404 and json.loads(body) == {"message": "no Route matched with those values"}
        res2 = run_kong(kong, "start", "-c", str(spec.conf_path))
        assert res2.rc == 1
        assert f"Error: Kong is already running in {spec.prefix}" in res2.err
        health = run_kong(kong, "health", "-p", str(spec.prefix))
        assert health.rc == 0, str(health)
        assert health.out == f"nginx.......running\n\nKong is healthy at {spec.prefix}\n"
        stop = run_kong(kong, "stop", "-p", str(spec.prefix))
        assert stop.rc == 0 and stop.out == "Kong stopped\n", str(stop)
        poll(lambda: not alive(pid), 5, "node exit after stop")
        assert not (spec.prefix / "pids" / "nginx.pid").exists()
        stop2 = run_kong(kong, "stop", "-p", str(spec.prefix))
        assert stop2.rc == 1
        assert f"Error: nginx not running in prefix: {spec.prefix}" in stop2.err
        health2 = run_kong(kong, "health", "-p", str(spec.prefix))
        assert health2.rc == 1
        assert health2.out == "nginx.......not running\n\n"
        assert f"Error: Kong is not running at {spec.prefix}" in health2.err
        missing = node_tmp / "missing"
        for cmd in ("stop", "quit", "health"):
            res3 = run_kong(kong, cmd, "-p", str(missing))
            assert res3.rc == 1 and f"Error: no such prefix: {missing}" in res3.err, str(res3)
    finally:
        kill_node(spec.prefix)


@BOTH
def test_quit_restart_and_reload(pg, bins, echo, node_tmp, provider):
    version = "3.9.1"
    info, spec = _seeded(pg, bins, provider, version, node_tmp, echo)
    kong = bins(version)
    with running_node(kong, spec):
        # from 3.7 `kong start` keeps pg_timeout (default 5000 ms) unless --db-timeout is given
        assert "\npg_timeout = 5000\n" in (spec.prefix / ".kong_env").read_text()
        first = node_pid(spec.prefix)
        res = run_kong(kong, "restart", "-c", str(spec.conf_path))
        assert res.rc == 0 and res.out.strip().endswith("Kong started"), str(res)
        second = node_pid(spec.prefix)
        assert second and second != first and not alive(first)
        # reload: a new conf with an extra proxy listener and a headers change
        from nodefixtures import free_port

        port2 = free_port()
        text = spec.conf_path.read_text()
        new_conf = spec.conf_path.with_name("kong-reload.conf")
        new_conf.write_text(text.replace(f"proxy_listen = 127.0.0.1:{spec.proxy}",
                                         f"proxy_listen = 127.0.0.1:{spec.proxy}, "
                                         f"127.0.0.1:{port2}") + "headers = off\n")
        res = run_kong(kong, "reload", "-c", str(new_conf))
        assert res.rc == 0 and res.out == "Kong reloaded\n", str(res)
        assert node_pid(spec.prefix) == second
        status, headers, _body = poll(lambda: _ok(f"http://127.0.0.1:{port2}/echo/"), 10,
                                      "the new listener after reload")
        assert "via" not in headers
        assert "headers = off" in (spec.prefix / ".kong_env").read_text()
        res = run_kong(kong, "quit", "-p", str(spec.prefix))
        assert res.rc == 0 and res.out == "Kong stopped (gracefully)\n", str(res)
        # `kong quit` returns once the PID file is gone; nginx deletes it before it exits.
        assert node_pid(spec.prefix) is None
        poll(lambda: not alive(second), 10, "the master to exit after kong quit")
        res = run_kong(kong, "reload", "-p", str(spec.prefix))
        assert res.rc == 1 and f"nginx not running in prefix: {spec.prefix}" in res.err
        res = run_kong(kong, "quit", "-p", str(spec.prefix))
        assert res.rc == 1 and f"nginx not running in prefix: {spec.prefix}" in res.err


def _ok(url: str) -> tuple[int, dict[str, str], bytes] | None:
    found = http_call(url)
    return found if found[0] == 200 else None


@BOTH
def test_quit_timeout_forces(pg, bins, echo, node_tmp, provider):
    version = "3.9.1"
    info, spec = _seeded(pg, bins, provider, version, node_tmp, echo)
    kong = bins(version)
    with running_node(kong, spec):
        pid = node_pid(spec.prefix)
        # a request that never completes keeps the node from exiting gracefully
        import socket

        hold = socket.create_connection(("127.0.0.1", spec.proxy))
        hold.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        # nginx counts a request whose body is being read as `writing` (reading: headers only)
        poll(lambda: http_json(f"http://127.0.0.1:{spec.status}/status")[1]["server"]
             ["connections_writing"] >= 2, 5, "the held request and this one")
        started = time.monotonic()
        res = run_kong(kong, "quit", "-p", str(spec.prefix), "-t", "1")
        assert res.rc == 0 and res.out == "Timeout, Kong stopped forcefully\n", str(res)
        assert time.monotonic() - started < 8
        poll(lambda: not alive(pid), 5, "forced exit")
        hold.close()


# ---------------------------------------------------------------------------- start gate
@BOTH
def test_start_gate_new_then_pending(pg, bins, echo, node_tmp):
    old, new = "3.4.2", "3.9.1"
    info, spec = _bootstrapped(pg, bins, old, node_tmp)
    spec_new = make_spec(node_tmp, "n2", new, **info.conf())
    res = _kong(bins, new, "start", "-c", str(spec_new.conf_path))
    assert res.rc == 1, str(res)
    assert "New migrations available; run 'kong migrations up' to proceed" in res.err
    assert res.err.startswith("Error: ")
    assert node_pid(spec_new.prefix) is None
    assert "Kong started" not in res.out
    res = _kong(bins, new, "migrations", "up", "-c", str(spec_new.conf_path))
    assert res.rc == 0, str(res)
    with running_node(bins(new), spec_new) as started:
        assert "Database has pending migrations:" in started.out
        assert started.out.strip().endswith("Kong started")
        assert "[warn]" in (spec_new.prefix / "logs" / "error.log").read_text()
        assert "database has pending migrations:\n" in \
            (spec_new.prefix / "logs" / "error.log").read_text()
        status, body = http_json(f"http://127.0.0.1:{spec_new.status}/status/ready")
        assert (status, body) == (200, {"message": "ready"})


@BOTH
def test_start_refused_before_bootstrap(pg, bins, node_tmp):
    info = pg.fresh()
    spec = make_spec(node_tmp, "nb", "3.4.2", **info.conf())
    res = _kong(bins, "3.4.2", "start", "-c", str(spec.conf_path))
    assert res.rc == 1
    assert "Database needs bootstrapping or is older than Kong 1.0." in res.err
    assert node_pid(spec.prefix) is None


@BOTH
def test_run_migrations_flag(pg, bins, node_tmp):
    info = pg.fresh()
    spec = make_spec(node_tmp, "rm", "3.4.2", **info.conf())
    assert _kong(bins, "3.4.2", "migrations", "bootstrap", "-c", str(spec.conf_path)).rc == 0
    spec2 = make_spec(node_tmp, "rm2", "3.9.1", **info.conf())
    kong = bins("3.9.1")
    try:
        res = run_kong(kong, "start", "-c", str(spec2.conf_path), "--run-migrations")
        assert res.rc == 0, str(res)
        assert "migrating core on database" in res.out
        assert "Database has pending migrations:" in res.out
        assert "Kong started" in res.out.splitlines()
        listed = _kong(bins, "3.9.1", "migrations", "list", "-c", str(spec2.conf_path))
        assert listed.rc == 4, str(listed)
    finally:
        kill_node(spec2.prefix)


# ---------------------------------------------------------------------------- status
@pytest.mark.parametrize(("provider", "version"), provider_params(["3.4.2", "3.9.1"])
                         + provider_params(["3.2.2"], ("emulated",)))
def test_ready_by_version_and_drain(pg, bins, echo, node_tmp, provider, version):
    info, spec = _seeded(pg, bins, provider, version, node_tmp, echo)
    with running_node(bins(version), spec):
        url = f"http://127.0.0.1:{spec.status}/status/ready"
        code, body = http_json(url)
        if not versions.get(version).has_ready:
            assert code == 404
            return
        assert (code, body) == (200, {"message": "ready"})
        code, body = http_json(f"http://127.0.0.1:{spec.status}/status")
        assert code == 200 and body["database"] == {"reachable": True}
        if versions.get(version).has_drain:
            res = _kong(bins, version, "drain", "-p", str(spec.prefix))
            assert res.rc == 0, str(res)
            assert res.out == "Kong's status successfully changed to 'draining'\n"
            assert http_json(url) == (503, {"message": "draining"})


@BOTH
def test_database_down_keeps_serving(pg, bins, echo, node_tmp, provider):
    version = "3.4.2"
    info, spec = _seeded(pg, bins, provider, version, node_tmp, echo)
    metrics_url = f"http://127.0.0.1:{spec.status}/metrics"
    status_url = f"http://127.0.0.1:{spec.status}/status"
    with running_node(bins(version), spec):
        assert http_call(f"{spec.proxy_url}/echo/a")[0] == 200
        poll(lambda: http_json(f"{status_url}/ready")[0] == 200, 10, "ready")
        poll(lambda: "kong_datastore_reachable 1" in http_call(metrics_url)[2].decode(), 10, "metrics")
        pg.pause()
        try:
            poll(lambda: http_json(status_url)[1]["database"]["reachable"] is False, 10,
                 "database.reachable false")
            assert http_json(f"{status_url}/ready") == (503, {"message": "failed to connect to database"})
            assert http_call(f"{spec.proxy_url}/echo/a")[0] == 200
            code, _hdrs, body = http_call(metrics_url)
            assert code == 200 and "kong_datastore_reachable 0" in body.decode(), (code, body[:200])
        finally:
            pg.resume()
        poll(lambda: http_json(f"{status_url}/ready")[0] == 200, 15, "ready again")


# ---------------------------------------------------------------------------- graceful quit
@BOTH
def test_graceful_quit_under_keepalive_load_loses_nothing(pg, bins, echo, node_tmp, provider):
    version = "3.4.2"
    info, spec = _seeded(pg, bins, provider, version, node_tmp, echo)
    kong = bins(version)
    stop = threading.Event()
    quitting = threading.Event()
    counts = {"ok": 0, "failed": 0, "stale_retries": 0, "refused_after_quit": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def worker(slow: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        reused = False
        while not stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", spec.proxy, timeout=10)
                reused = False
            try:
                conn.request("GET", "/echo/slow" if slow else "/echo/x")
                resp = conn.getresponse()
                resp.read()
                with lock:
                    if resp.status == 200:
                        counts["ok"] += 1
                    else:
                        counts["failed"] += 1
                        failures.append(f"status {resp.status}")
                reused = True
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                with lock:
                    if quitting.is_set():
                        counts["refused_after_quit"] += 1
                    else:
                        counts["failed"] += 1
                        failures.append("refused before quit")
                conn = None
                if quitting.is_set():
                    return
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                with lock:
                    if reused:
                        counts["stale_retries"] += 1   # RFC 9112 9.3.1 retry on a new conn
                    else:
                        counts["failed"] += 1
                        failures.append(repr(exc))
            except OSError as exc:
                with lock:
                    counts["failed"] += 1
                    failures.append(repr(exc))
                conn = None

    with running_node(kong, spec):
        threads = [threading.Thread(target=worker, args=(i % 4 == 0,)) for i in range(24)]
        for thread in threads:
            thread.start()
        poll(lambda: counts["ok"] > 300, 30, "steady load")
        pid = node_pid(spec.prefix)
        quitting.set()
        res = run_kong(kong, "quit", "-p", str(spec.prefix), "-t", "20")
        assert res.rc == 0 and res.out == "Kong stopped (gracefully)\n", str(res)
        assert node_pid(spec.prefix) is None
        poll(lambda: not alive(pid), 10, "the master to exit after kong quit")
        for thread in threads:
            thread.join(15)
        stop.set()
    assert counts["failed"] == 0, (counts, failures[:5])
    assert counts["ok"] > 300
    print(f"graceful quit under load: {counts}")


# ---------------------------------------------------------------------------- cluster cache
@BOTH
def test_admin_write_on_one_node_reaches_the_other(pg, bins, echo, node_tmp, provider):
    version = "3.9.1"
    info, spec_a = _seeded(pg, bins, provider, version, node_tmp, echo, "a")
    spec_b = make_spec(node_tmp, "b", version, **info.conf())
    kong = bins(version)
    with running_node(kong, spec_a), running_node(kong, spec_b):
        admin = f"http://127.0.0.1:{spec_a.admin}"
        code, svc = http_json(f"{admin}/services", "POST",
                              {"name": "late", "url": f"http://127.0.0.1:{echo}"})
        assert code == 201, svc
        code, route = http_json(f"{admin}/services/late/routes", "POST",
                                {"name": "late-route", "paths": ["/late"]})
        assert code == 201, route
        # the writing node at once, the other within db_update_frequency (0.5 s)
        poll(lambda: http_call(f"{spec_a.proxy_url}/late/x")[0] == 200, 5, "node a")
        poll(lambda: http_call(f"{spec_b.proxy_url}/late/x")[0] == 200, 5, "node b")
        code, _body = http_json(f"{admin}/routes/late-route", "DELETE")
        assert code == 204
        poll(lambda: http_call(f"{spec_b.proxy_url}/late/x")[0] == 404, 10, "deletion on b")
