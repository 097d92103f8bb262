"""Unit tests for the traffic gate's arithmetic and verdicts."""

from gate_fakes import scripted_gate

from ansible_collections.kongops.upgrade.plugins.module_utils._gate import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    haproxy_counters,
    prometheus_counters,
)

HEADER = "# pxname,svname,scur,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,econ,eresp,wretr,wredis,rtime,"


def stat(rows):
    lines = [HEADER]
    for name, ok, err in rows:
        lines.append(f"kong_proxy,{name},0,0,{ok},0,0,{err},0,0,0,0,0,3,")
    lines.append("kong_proxy,BACKEND,0,0,0,0,0,0,0,0,0,0,0,3,")
    return "\n".join(lines) + "\n"


make_gate = scripted_gate


def counters(x_ok, x_err, y_ok, y_err):
    return haproxy_counters(stat([("x1", x_ok, x_err), ("y1", y_ok, y_err)]), "kong_proxy", ["x1", "y1"])


def test_healthy_y_passes_after_min_duration_and_min_requests():
    script = [counters(1000 * i, 0, 50 * i, 0) for i in range(0, 100)]
    result = make_gate(script).run()
    assert result["verdict"] == PASS
    assert result["y"]["requests"] >= 100 and result["duration_seconds"] >= 5


def test_a_step_waits_while_x_serves_until_x_can_be_compared():
    # 50 %: at 5 s Y has its 100 requests and X only 95; X still serves, so the step goes on.
    script = [counters(19 * i, 0, 20 * i, 0) for i in range(0, 100)]
    result = make_gate(script).run()
    assert result["verdict"] == PASS
    assert result["x"]["requests"] >= 100 and result["duration_seconds"] == 6
    assert "X served too little" not in result["reason"]


def test_a_step_does_not_wait_for_x_that_serves_nothing_more():
    # 100 %: X's count stays where it was; the step ends at the minimum sample.
    script = [counters(0, 0, 0, 0)] + [counters(40, 0, 50 * i, 0) for i in range(1, 100)]
    result = make_gate(script).run()
    assert result["verdict"] == PASS
    assert result["duration_seconds"] == 5 and "X served too little to compare" in result["reason"]


def test_y_errors_fail_early_with_the_numbers():
    script = [counters(1000 * i, 0, 40 * i, 10 * i) for i in range(0, 100)]
    result = make_gate(script).run()
    assert result["verdict"] == FAIL
    assert "above the limit" in result["reason"]
    assert result["y"]["errors"] > 0


def test_too_little_traffic_is_inconclusive_at_the_deadline():
    script = [counters(1000 * i, 0, i, 0) for i in range(0, 100)]
    result = make_gate(script, max_duration=20).run()
    assert result["verdict"] == INCONCLUSIVE
    assert result["duration_seconds"] >= 20


def test_y_worse_than_x_by_more_than_the_allowed_increase_fails():
    script = [counters(1000 * i, 0, 995 * i, 5 * i) for i in range(0, 100)]
    result = make_gate(script, max_error_rate=0.05, max_error_rate_increase=0.001).run()
    assert result["verdict"] == FAIL and "exceeds X's" in result["reason"]


def test_counter_reset_restarts_the_baseline():
    script = [counters(0, 0, 0, 0), counters(100, 0, 100, 0), counters(10, 0, 10, 0)] + \
        [counters(10 + 100 * i, 0, 10 + 100 * i, 0) for i in range(1, 50)]
    result = make_gate(script).run()
    assert result["counter_resets"] >= 1
    assert result["verdict"] == PASS


def test_prometheus_splits_gateway_and_upstream_errors():
    text = """# HELP kong_http_requests_total x
kong_http_requests_total{service="s",route="r",code="200",source="service",consumer=""} 90
kong_http_requests_total{service="s",route="r",code="502",source="kong",consumer=""} 4
kong_http_requests_total{service="s",route="r",code="503",source="service",consumer=""} 6
"""
    totals = prometheus_counters(text)
    assert totals == {"requests": 100, "errors": 10, "gateway_errors": 4, "upstream_errors": 6, "retries": 0}


def test_prometheus_reads_kong_28_metric_names():
    text = 'kong_http_status{service="s",route="r",code="200"} 7\nkong_http_status{service="s",route="r",code="500"} 3\n'
    totals = prometheus_counters(text)
    assert totals["requests"] == 10 and totals["errors"] == 3
