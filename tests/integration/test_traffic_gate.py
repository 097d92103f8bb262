"""traffic_gate on the lab under load: pass on a healthy Y, fail when Y answers errors (the emulator's
fault injection makes Kong itself answer 503), inconclusive when too little traffic reaches Y.
Counters from HAProxy (`show stat`) and from the nodes' Prometheus `/metrics`."""

from __future__ import annotations

import pytest
from ansible_runner import run_tasks
from itlab import lab_session, poll

X, Y = "3.4.0", "3.4.3"
X_SERVERS = ["x1", "x2"]
Y_SERVERS = ["y1"]
FAULT_RATE = 0.2


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "1") as lab:
        lab.start_node("y1")
        poll(lambda: lab.haproxy_servers_up(Y_SERVERS), 15, "HAProxy health checks to see y1 up")
        gen = lab.load(rate=400.0, concurrency=6)
        gen.start()
        lab.gen = gen
        try:
            yield lab
        finally:
            gen.stop()
            lab.set_faults("y1", None)


def gate_step(lab, pct, *gates):
    """Set Y's share with lb_weight, then judge the step with each gate (one playbook)."""
    results = run_tasks([("lb_weight", {**lab.lb_args(), "x_servers": X_SERVERS, "y_servers": Y_SERVERS,
                                        "y_percent": pct}, False)]
                        + [("traffic_gate", gate, check) for gate, check in gates])
    assert not results[0].failed, results[0].get("msg")
    return results[1:]


def haproxy_gate(lab, **extra):
    return {"source": "haproxy", "haproxy_socket": lab.lb["kong_lb_haproxy_socket"],
            "backend": lab.lb["kong_lb_backend"], "x_servers": X_SERVERS, "y_servers": Y_SERVERS,
            "min_requests": 300, "min_duration": 1, "max_duration": 30, "interval": 0.5, **extra}


def metrics_gate(lab, **extra):
    def urls(names):
        return [lab.host(n)["kong_status_url"] + "/metrics" for n in names]
    return {"source": "kong_metrics", "x_servers": urls(X_SERVERS), "y_servers": urls(Y_SERVERS),
            "min_requests": 300, "min_duration": 1, "max_duration": 30, "interval": 0.5, **extra}


def test_a_healthy_y_passes(lab):
    by_lb, by_metrics = gate_step(lab, 50, (haproxy_gate(lab), False), (metrics_gate(lab), True))
    for result in (by_lb, by_metrics):
        assert not result.failed, result.get("msg")
        assert result["verdict"] == "pass", result["reason"]
        assert result["y"]["requests"] >= 300 and result["y"]["errors"] == 0
        assert result["x"]["requests"] > 0 and result["x"]["errors"] == 0
        assert result["duration_seconds"] >= 1 and not result.changed
    assert by_metrics["y"]["gateway_errors"] == 0 and by_metrics["y"]["upstream_errors"] == 0


def test_y_answering_errors_fails_the_step(lab):
    lab.set_faults("y1", {"proxy_5xx_rate": FAULT_RATE, "status": 503})
    try:
        by_lb, by_metrics = gate_step(lab, 50, (haproxy_gate(lab), False), (metrics_gate(lab), False))
    finally:
        lab.set_faults("y1", None)
    for result in (by_lb, by_metrics):
        assert not result.failed, result.get("msg")
        assert result["verdict"] == "fail", result["reason"]
        assert result["y"]["requests"] >= 300
        assert abs(result["y"]["error_rate"] - FAULT_RATE) < 0.05, result["y"]
        assert result["x"]["errors"] == 0
        assert "above the limit" in result["reason"]
    # /metrics says where the errors came from: Kong itself, not the upstream service.
    assert by_metrics["y"]["gateway_errors"] == by_metrics["y"]["errors"] > 0
    assert by_metrics["y"]["upstream_errors"] == 0
    assert by_lb["y"]["errors"] > 0 and by_lb["y"]["gateway_errors"] == 0


def test_too_little_traffic_to_y_is_inconclusive(lab):
    (result,) = gate_step(lab, 1, (haproxy_gate(lab, min_requests=500, min_duration=1, max_duration=3), False))
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
