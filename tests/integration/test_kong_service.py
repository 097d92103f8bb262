"""kong_service on real Kong: `kong start`, `kong quit`, `kong restart` and `kong reload` of 2.8.5 and 3.9.1
nodes, four ways (check, real, check again, real again), each started node judged by its readiness
(3.9.1: the Status API's /status/ready; 2.8.5 has none: the Admin API's /status), and the two ways a
start fails on real Kong: `kong start` refusing a database with new migrations (exit 1, Kong's reason),
and nginx workers that die at once while `kong start` prints `Kong started` and exits 0 (and
`kong health` says healthy), which only the readiness and the error log show.

The lab's database belongs to 2.8.5 (x1); the 3.9.1 node y1 runs on its own database, which 3.9.1
bootstrapped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from ansible_runner import four_ways, run_module, run_sequence
from itlab import http_status, lab_session

X, Y = "2.8.5", "3.9.1"
Y_DATABASE = "kong_y"


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "1", "--y-nodes", "2") as lab:
        lab.create_database(Y_DATABASE)
        conf = str(lab.write_node_conf("y1", extra={"pg_database": Y_DATABASE}))
        res = lab.kong(lab.host("y1")["kong_executable"], "migrations", "bootstrap", "-c", conf)
        assert res.returncode == 0, (res.stdout, res.stderr)
        yield lab


def service_args(lab, name, state, **extra):
    host = lab.host(name)
    return {"kong_executable": host["kong_executable"], "conf": host["kong_conf_path"], "prefix": host["kong_prefix"],
            "state": state, "admin_url": host["kong_admin_url"], "status_url": host["kong_status_url"], **extra}


def serves(lab, name):
    return http_status(lab.host(name)["kong_admin_url"] + "/status") == 200


def test_start_refused_for_a_database_with_new_migrations_says_kongs_reason(lab):
    """3.9.1 on 2.8.5's database: real `kong start` exits 1 and says why; nothing runs afterwards."""
    lab.write_node_conf("y2")  # x1's kong.conf: the 2.8.5 database
    result = run_module("kong_service", service_args(lab, "y2", "started"))
    assert result.failed and not result["running_before"]
    assert "`kong start` failed" in result["msg"] and "rc=1" in result["msg"]
    assert "New migrations available; run 'kong migrations up'" in result["msg"], result["msg"]
    assert not serves(lab, "y2")


def test_start_and_quit_of_a_3_9_node_four_ways(lab):
    lab.write_node_conf("y1", extra={"pg_database": Y_DATABASE})
    check, real, *_again = four_ways("kong_service", service_args(lab, "y1", "started"))
    assert check["planned"] == "kong start" and check["running"] and not check["running_before"]
    assert real["running"] and [c["cmd"].split()[1] for c in real["commands"]] == ["start"]
    assert real["ready"]["url"] == lab.host("y1")["kong_status_url"] + "/status/ready"
    assert "running: False" in real["diff"]["before"] and "running: True" in real["diff"]["after"]
    assert serves(lab, "y1")

    before = time.time()
    check, real, *_again = four_ways("kong_service", service_args(lab, "y1", "stopped", quit_timeout=5))
    assert check["planned"] == "kong quit -t 5 -w 0" and not check["running"]
    # When the proxy stopped accepting, watched while `kong quit` ran (the in-place window opens there).
    assert "stopped_answering_epoch" not in check
    assert before < real["stopped_answering_epoch"] < time.time(), real
    assert not real["running"] and real["commands"][0]["cmd"].split()[1] == "quit"
    assert any("Kong stopped (gracefully)" in line for line in real["commands"][0]["stdout_lines"])
    assert not serves(lab, "y1")


def test_quit_and_start_of_a_2_8_node_four_ways(lab):
    """2.8.5 has no /status/ready: a started 2.8 node is judged by its Admin API's /status."""
    check, real, *_again = four_ways("kong_service", service_args(lab, "x1", "stopped"))
    assert check["planned"] == "kong quit -t 10 -w 0" and not real["running"]
    assert not serves(lab, "x1")
    check, real, *_again = four_ways("kong_service", service_args(lab, "x1", "started"))
    assert real["running"] and real["ready"]["url"] == lab.host("x1")["kong_admin_url"] + "/status"
    assert serves(lab, "x1")


def test_restart_and_reload(lab):
    refused, started, reloaded, restarted = run_sequence("kong_service", [
        (service_args(lab, "y1", "reloaded"), False),
        (service_args(lab, "y1", "started"), False),
        (service_args(lab, "y1", "reloaded"), False),
        (service_args(lab, "y1", "restarted"), False)])
    assert refused.failed and "it does not run; use state=started" in refused["msg"]
    assert not started.failed and started.changed, started.get("msg")
    for result in (reloaded, restarted):
        assert not result.failed and result.changed and result["running_before"] and result["running"], result.get("msg")
    assert reloaded["commands"][0]["cmd"].split()[1] == "reload"
    assert restarted["commands"][0]["cmd"].split()[1] == "restart" and restarted["ready"]["url"].endswith("/status/ready")
    assert serves(lab, "y1")
    stopped = run_module("kong_service", service_args(lab, "y1", "stopped"))
    assert not stopped.failed and not stopped["running"]


def test_workers_that_die_at_start_fail_the_start_with_the_error_log(lab, tmp_path):
    """A real kong.conf value that nginx's unprivileged workers cannot live with: a working directory closed
    to them (0700, owned by root). `kong start` says `Kong started` and exits 0, `kong health` says healthy;
    the module says the node is not ready and quotes the error log, at once and again on the next run."""
    if os.geteuid() != 0:
        pytest.skip("nginx runs its workers as another user only when started as root")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    lab.write_node_conf("y2", extra={"pg_database": Y_DATABASE, "nginx_main_working_directory": str(closed)})
    first, second, health = run_sequence("kong_service", [
        (service_args(lab, "y2", "started", ready_timeout=120), False),
        (service_args(lab, "y2", "started", ready_timeout=120), False),
        (service_args(lab, "y2", "stopped"), False)])
    for result in (first, second):
        assert result.failed, result
        assert "is not ready" in result["msg"] and "still runs (its workers do not serve)" in result["msg"], result["msg"]
        assert "Permission denied" in result["msg"] and "cannot be respawned" in result["msg"], result["msg"]
    assert any("Kong started" in line for line in first["commands"][0]["stdout_lines"] + first["commands"][0]
               ["stderr_lines"]), first["commands"]
    assert first["commands"][0]["rc"] == 0
    assert second["running_before"], "kong health says a node whose workers died is running"
    assert not health.failed and health["running_before"] and not health["running"]
    assert not Path(lab.host("y2")["kong_prefix"], "pids", "nginx.pid").exists()


def test_smoke_test_of_a_node_ready_then_its_requests_in_one_run(lab):
    """kong_smoke_test on real Kong 3.9.1: ready on /status/ready, then each request's status judged (Kong
    answers 404 for a path no route matches), in check mode as in a real run; a node that is not running
    fails on its readiness, saying so."""
    lab.write_node_conf("y1", extra={"pg_database": Y_DATABASE})
    started = run_module("kong_service", service_args(lab, "y1", "started"))
    assert not started.failed, started.get("msg")
    host = lab.host("y1")
    smoke = {"proxy_url": host["kong_proxy_url"], "ready_url": host["kong_status_url"] + "/status/ready",
             "ready_timeout": 2, "metrics_url": host["kong_status_url"] + "/metrics", "metrics_timeout": 1}
    passing = [{"path": "/nothing-here", "status": [404]}, {"path": "/", "method": "HEAD", "status": [404]}]
    check, real = run_sequence("kong_smoke_test", [({**smoke, "smoke_requests": passing}, True),
                                                   ({**smoke, "smoke_requests": passing}, False)])
    for result in (check, real):
        assert not result.failed and not result.changed, result.get("msg")
        assert result["ready"]["url"] == host["kong_status_url"] + "/status/ready"
        assert [(a["method"], a["status"], a["passed"]) for a in result["answers"]] == [
            ("GET", 404, True), ("HEAD", 404, True)]
        # No prometheus plugin in this database: nothing counted on /metrics, found and returned, not failed.
        assert result["metrics_counted"] is False and result["metrics_status"] == 200

    wrong = run_module("kong_smoke_test", {**smoke, "smoke_requests": [{"path": "/", "host": "api.example", "status": [200]}]})
    assert wrong.failed
    assert wrong["msg"] == f"GET {host['kong_proxy_url']}/: Status code was 404 and not [200]", wrong["msg"]

    # kong_service smoke-tests a node it starts (or finds running) as soon as it is ready, in the same run.
    at_start = service_args(lab, "y1", "started", smoke_proxy_url=host["kong_proxy_url"])
    good, bad = run_sequence("kong_service", [({**at_start, "smoke_requests": passing}, False),
                                              ({**at_start, "smoke_requests": [{"path": "/", "status": [200]}]}, False)])
    assert not good.failed and [(a["path"], a["status"]) for a in good["smoke"]] == [("/nothing-here", 404), ("/", 404)]
    assert bad.failed and bad["running_before"] is True, bad
    assert bad["msg"] == (f"the node in {host['kong_prefix']} is ready but fails its smoke test: "
                          f"GET {host['kong_proxy_url']}/: Status code was 404 and not [200]"), bad["msg"]

    stopped = run_module("kong_service", service_args(lab, "y1", "stopped"))
    assert not stopped.failed, stopped.get("msg")
    gone = run_module("kong_smoke_test", {**smoke, "smoke_requests": passing})
    assert gone.failed and gone["msg"].startswith(
        f"the node is not ready within 2 s: {host['kong_status_url']}/status/ready did not answer"), gone["msg"]
