"""traffic_gate on the lab under load, on real Kong: pass on a healthy Y, fail when Y answers errors,
inconclusive when too little traffic reaches Y. Counters from HAProxy (`show stat`) and from the
nodes' Prometheus `/metrics`.

X is 3.9.0 (x1, x2) and Y 3.9.1 (y1) with its own database, as in a dual-cluster upgrade: Y's
database is bootstrapped by Y and seeded with the lab's configuration, so a plugin added there
changes only Y. Real Kong exposes `kong_http_requests_total` on the Status API only with the
prometheus plugin configured with `status_code_metrics` (3.x), so both databases get it, as an
operator's must for `source: kong_metrics`.

The fault is real Kong answering 503 itself: a `pre-function` plugin on Y's database that ends
every fifth request Y proxies with `kong.response.exit(503)` (a counter kept in the function's
upvalue; the lab's real nodes run one nginx worker, so exactly 20 % of Y's requests fail, not
about 20 %).
"""

from __future__ import annotations

import pytest
from ansible_runner import run_tasks
from itlab import add_plugin, haproxy_gate, http_request, lab_session, metrics_gate, poll

X, Y = "3.9.0", "3.9.1"
X_SERVERS = ["x1", "x2"]
Y_SERVERS = ["y1"]
FAULT_EVERY = 5
FAULT_RATE = 1 / FAULT_EVERY
FAULT_MESSAGE = "injected by the traffic_gate integration test"
FAULT_CODE = f"""local n = 0
return function()
  n = n + 1
  if n % {FAULT_EVERY} == 0 then
    return kong.response.exit(503, {{ message = "{FAULT_MESSAGE}" }})
  end
end"""
Y_DATABASE = "kong_y"


def metrics_counted(status_url):
    status, text = http_request(status_url + "/metrics")
    return status == 200 and isinstance(text, str) and "kong_http_requests_total{" in text


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "1") as lab:
        y_db = {"pg_database": Y_DATABASE}
        lab.create_database(Y_DATABASE)
        conf = str(lab.write_node_conf("y1", extra=y_db))
        y_kong = lab.host("y1")["kong_executable"]
        for args in (("migrations", "bootstrap", "-c", conf),
                     ("config", "db_import", str(lab.vars["lab_declarative_config"]), "-c", conf)):
            res = lab.kong(y_kong, *args)
            assert res.returncode == 0, (args, res.stdout, res.stderr)
        lab.start_node("y1", extra=y_db)
        prometheus = {"name": "prometheus", "config": {"status_code_metrics": True}}
        add_plugin(lab.host("x1")["kong_admin_url"], prometheus)
        add_plugin(lab.host("y1")["kong_admin_url"], prometheus)
        poll(lambda: lab.haproxy_servers_up(Y_SERVERS), 15, "HAProxy health checks to see y1 up")
        gen = lab.load(rate=400.0, concurrency=6)
        gen.start()
        lab.gen = gen
        try:
            # X gets all traffic until the first step: wait until both X nodes count it.
            for name in X_SERVERS:
                poll(lambda name=name: metrics_counted(lab.host(name)["kong_status_url"]), 30,
                     f"{name}'s /metrics to count requests (prometheus plugin)", interval=0.2)
            yield lab
        finally:
            gen.stop()


def gate_step(lab, pct, *gates):
    """Set Y's share with lb_weight, then judge the step with each gate (one playbook)."""
    results = run_tasks([("lb_weight", {**lab.lb_args(), "x_servers": X_SERVERS, "y_servers": Y_SERVERS,
                                        "y_percent": pct}, False)]
                        + [("traffic_gate", gate, check) for gate, check in gates])
    assert not results[0].failed, results[0].get("msg")
    return results[1:]


def y_answers(lab, count):
    """Statuses of ``count`` requests sent straight to Y's proxy."""
    return [http_request(lab.host("y1")["kong_proxy_url"] + "/")[0] for _index in range(count)]


def test_a_healthy_y_passes(lab):
    by_lb, by_metrics = gate_step(lab, 50, (haproxy_gate(lab, X_SERVERS, Y_SERVERS), False), (metrics_gate(lab, X_SERVERS, Y_SERVERS), True))
    for result in (by_lb, by_metrics):
        assert not result.failed, result.get("msg")
        assert result["verdict"] == "pass", result["reason"]
        assert result["y"]["requests"] >= 300 and result["y"]["errors"] == 0
        assert result["x"]["requests"] > 0 and result["x"]["errors"] == 0
        assert result["duration_seconds"] >= 1 and not result.changed
    assert by_metrics["y"]["gateway_errors"] == 0 and by_metrics["y"]["upstream_errors"] == 0
    # The latency limit (on by default): HAProxy compares its ttime averages; this lab's prometheus plugin has no
    # latency_metrics, so /metrics has no histogram and latency is not compared (which fails nothing).
    # (not compared when X served fewer than the minimum sample in the step, which a loaded machine can cause)
    assert by_lb["latency"]["result"] in ("pass", "not_compared"), by_lb["latency"]
    if by_lb["latency"]["result"] == "pass":
        assert by_lb["latency"]["statistic"] == "HAProxy ttime average"
        assert by_lb["y"]["latency_ms"] <= by_lb["latency"]["limit_ms"]
    assert by_metrics["latency"]["result"] == "not_compared" and by_metrics["y"]["latency_ms"] is None


def test_y_answering_errors_fails_the_step(lab):
    y_admin = lab.host("y1")["kong_admin_url"]
    fault = add_plugin(y_admin, {"name": "pre-function", "config": {"access": [FAULT_CODE]}})
    try:
        # Y's router and plugins are rebuilt a moment after the write: wait for its first injected 503.
        poll(lambda: 503 in y_answers(lab, FAULT_EVERY), 30, "y1 to answer the injected 503", interval=0.2)
        by_lb, by_metrics = gate_step(lab, 50, (haproxy_gate(lab, X_SERVERS, Y_SERVERS), False), (metrics_gate(lab, X_SERVERS, Y_SERVERS), False))
    finally:
        status, _body = http_request(f"{y_admin}/plugins/{fault}", "DELETE")
        assert status == 204
    poll(lambda: 503 not in y_answers(lab, 2 * FAULT_EVERY), 30, "y1 without the injected fault", interval=0.2)
    for result in (by_lb, by_metrics):
        assert not result.failed, result.get("msg")
        assert result["verdict"] == "fail", result["reason"]
        assert result["y"]["requests"] >= 300
        # Every fifth request Y proxies fails. A window's counts are off only by the cycle of five it cuts and
        # the requests in flight at its two ends (at most 6 each): (1 + 12) / 300 < 0.05.
        assert abs(result["y"]["error_rate"] - FAULT_RATE) < 0.05, result["y"]
        assert result["x"]["errors"] == 0
        assert "above the limit" in result["reason"]
    # /metrics says where the errors came from: Kong itself, not the upstream service.
    assert by_metrics["y"]["gateway_errors"] == by_metrics["y"]["errors"] > 0
    assert by_metrics["y"]["upstream_errors"] == 0
    assert by_lb["y"]["errors"] > 0 and by_lb["y"]["gateway_errors"] == 0


def test_too_little_traffic_to_y_is_inconclusive(lab):
    (result,) = gate_step(lab, 1, (haproxy_gate(lab, X_SERVERS, Y_SERVERS, min_requests=500, max_duration=3), False))
    assert not result.failed, result.get("msg")
    assert result["verdict"] == "inconclusive", result["reason"]
    assert 0 < result["y"]["requests"] < 500
    assert result["x"]["requests"] > 500
    assert "fewer than the 500 needed" in result["reason"]
    assert result["duration_seconds"] >= 3


def test_no_request_failed_outside_the_injected_faults(lab):
    samples = list(lab.gen.samples)
    failed = [s for s in samples if not s.ok]
    assert samples and all(s.status == 503 and s.version == Y for s in failed), \
        {(s.status, s.reason, s.version) for s in failed}
