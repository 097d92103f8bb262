"""Unit tests for the traffic gate's latency limit, per source, and for its Prometheus source.

What each source measures: Kong `/metrics` - the quantile of the step's histogram bucket deltas;
HAProxy - `ttime` (an average), weighted by each server's requests in the step; Prometheus -
histogram_quantile over the step, asked with the PromQL checked here against a fake server.
"""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs

import pytest
from gate_fakes import FakeClock as Clock
from gate_fakes import scripted_gate

from ansible_collections.kongops.upgrade.plugins.module_utils._gate import (
    FAIL,
    INCONCLUSIVE,
    LATENCY_NOT_COMPARED,
    LATENCY_OFF,
    PASS,
    Gate,
    LatencyLimit,
    haproxy_counters,
    histogram_quantile,
    judge_latency,
    prometheus_counters,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._prometheus import (
    PrometheusClient,
    PrometheusError,
    PrometheusWindow,
    instance_selector,
    latency_query,
    matchers,
    request_counts,
    requests_query,
)
from ansible_collections.kongops.upgrade.plugins.modules.traffic_gate import check

INF = math.inf
# Kong 3.9's buckets (as real 3.9.1 prints them with latency_metrics on).
BOUNDS = ("1", "2", "5", "7", "10", "15", "20", "30", "50", "75", "100", "200", "500", "750", "1000", "3000", "6000",
          "+Inf")


def limit(max_ratio=2.0, floor_ms=50.0, quantile=0.99, statistic=None):
    return LatencyLimit(max_ratio, floor_ms, quantile, statistic)


def run_gate(script, x_names, y_names, latency, **kwargs):
    return scripted_gate(script, x_names, y_names, latency=latency, **kwargs).run()


# ----------------------------------------------------------------------------- histogram_quantile


def test_the_quantile_is_interpolated_inside_its_bucket_as_prometheus_does():
    buckets = {1.0: 0, 2.0: 10, 5.0: 90, INF: 100}
    # rank 50 falls in (2, 5], which holds 80 observations above the 10 below it: 2 + 3 * 40/80.
    assert histogram_quantile(0.5, buckets) == pytest.approx(3.5)
    # The first bucket starts at 0.
    assert histogram_quantile(0.5, {10.0: 100, INF: 100}) == pytest.approx(5.0)
    # A rank in the +Inf bucket answers the highest finite bound.
    assert histogram_quantile(0.99, {1.0: 10, 5.0: 50, INF: 100}) == 5.0


def test_the_quantile_needs_observations_and_a_plus_inf_bucket():
    assert histogram_quantile(0.99, {1.0: 0, INF: 0}) is None
    assert histogram_quantile(0.99, {1.0: 5, 2.0: 10}) is None
    assert histogram_quantile(0.99, {}) is None


def test_a_bucket_below_the_one_before_it_is_raised_to_it():
    # A scrape between two buckets' updates: Prometheus makes the counts monotonic first.
    assert histogram_quantile(0.5, {1.0: 60, 2.0: 50, INF: 100}) == pytest.approx(histogram_quantile(
        0.5, {1.0: 60, 2.0: 60, INF: 100}))


# ----------------------------------------------------------------------------- Kong /metrics


def kong3_metrics(requests, buckets, errors=0, kong_buckets=None):
    """Real 3.9.1 /metrics lines: counters and the request (and kong) latency histograms of one route."""
    labels = 'service="echo",route="root",workspace="default"'
    lines = [f'kong_http_requests_total{{{labels},code="200",source="service",consumer=""}} {requests - errors}']
    if errors:
        lines.append(f'kong_http_requests_total{{{labels},code="503",source="kong",consumer=""}} {errors}')
    lines.append("# TYPE kong_request_latency_ms histogram")
    for bound, count in zip(BOUNDS, buckets):
        lines.append(f'kong_request_latency_ms_bucket{{{labels},le="{bound}"}} {count}')
    lines.append(f"kong_request_latency_ms_count{{{labels}}} {buckets[-1]}")
    for bound, count in zip(BOUNDS, kong_buckets or []):
        lines.append(f'kong_kong_latency_ms_bucket{{{labels},le="{bound}"}} {count}')
    return "\n".join(lines) + "\n"


def cumulative(per_bucket):
    out, total = [], 0
    for count in per_bucket:
        total += count
        out.append(total)
    return out


def test_kong3_histogram_buckets_become_counters_of_the_chosen_metric():
    request = cumulative([0, 0, 0, 0, 0, 0, 90, 10] + [0] * 10)  # 90 in (15, 20], 10 in (20, 30]
    kong = cumulative([100] + [0] * 17)
    text = kong3_metrics(100, request, kong_buckets=kong)
    totals = prometheus_counters(text)
    assert totals["requests"] == 100
    assert totals["latency_le:20.0"] == 90 and totals["latency_le:30.0"] == 100 and totals["latency_le:+Inf"] == 100
    assert prometheus_counters(text, "kong")["latency_le:1.0"] == 100
    assert not [key for key in prometheus_counters(text, "upstream") if key.startswith("latency_le:")]


def test_kong28_latency_histogram_is_read_by_its_type_label():
    # Real 2.8.5: kong_latency_bucket{service,route,type,le}, type kong | request | upstream.
    text = "\n".join([
        'kong_http_status{service="echo",route="root",code="200"} 30',
        'kong_latency_bucket{service="echo",route="root",type="kong",le="1"} 23',
        'kong_latency_bucket{service="echo",route="root",type="kong",le="+Inf"} 30',
        'kong_latency_bucket{service="echo",route="root",type="request",le="1"} 2',
        'kong_latency_bucket{service="echo",route="root",type="request",le="+Inf"} 30',
    ]) + "\n"
    assert prometheus_counters(text)["latency_le:1.0"] == 2
    assert prometheus_counters(text, "kong")["latency_le:1.0"] == 23


def metrics_reading(x, y):
    return {"x": prometheus_counters(kong3_metrics(*x)), "y": prometheus_counters(kong3_metrics(*y))}


def fast(n):
    """Cumulative buckets of n requests, all in (5, 7] ms."""
    return cumulative([0, 0, 0, n] + [0] * 14)


def slow(n):
    """Cumulative buckets of n requests, all in (200, 500] ms."""
    return cumulative([0] * 12 + [n] + [0] * 5)


def add(a, b):
    return [p + q for p, q in zip(a, b)]


def test_kong_metrics_p99_comes_from_the_bucket_deltas_of_the_step():
    # Before the step Y served 10,000 slow requests; during it, only fast ones: Y passes.
    script = [metrics_reading((1000 * i, fast(1000 * i)), (10000 + 50 * i, add(slow(10000), fast(50 * i))))
              for i in range(100)]
    result = run_gate(script, ["x"], ["y"], limit())
    assert result["verdict"] == PASS, result["reason"]
    assert result["y"]["latency_ms"] == result["x"]["latency_ms"] == pytest.approx(6.98, abs=0.05)
    assert result["latency"]["result"] == PASS and result["latency"]["limit_ms"] == pytest.approx(57.0, abs=0.1)
    assert "within the limit" in result["reason"]


def test_kong_metrics_y_slower_than_x_fails_on_a_complete_step_only():
    script = [metrics_reading((1000 * i, fast(1000 * i)), (50 * i, slow(50 * i))) for i in range(100)]
    result = run_gate(script, ["x"], ["y"], limit())
    assert result["verdict"] == FAIL
    # Not early: it waited for min_duration, although Y had 100 requests after two readings.
    assert result["duration_seconds"] >= 5
    assert result["latency"]["result"] == FAIL
    assert result["latency"]["y_ms"] == pytest.approx(497.0) and result["latency"]["x_ms"] == pytest.approx(6.98, 0.01)
    assert result["reason"].startswith("Y's p99 latency 497.0 ms is above the limit 57.0 ms")


def test_latency_is_not_judged_when_the_step_ends_on_errors_or_too_little_traffic():
    errors = [metrics_reading((1000 * i, fast(1000 * i)), (50 * i, slow(50 * i), 10 * i)) for i in range(100)]
    result = run_gate(errors, ["x"], ["y"], limit())
    assert result["verdict"] == FAIL and "error rate" in result["reason"]
    assert result["latency"]["result"] == LATENCY_NOT_COMPARED
    little = [metrics_reading((1000 * i, fast(1000 * i)), (i, slow(i))) for i in range(100)]
    result = run_gate(little, ["x"], ["y"], limit(), max_duration=10)
    assert result["verdict"] == INCONCLUSIVE and result["latency"]["result"] == LATENCY_NOT_COMPARED


def test_without_histograms_latency_is_not_compared_and_the_step_still_passes():
    text = 'kong_http_requests_total{service="s",route="r",code="200",source="service",consumer=""} %d\n'
    script = [{"x": prometheus_counters(text % (1000 * i)), "y": prometheus_counters(text % (50 * i))}
              for i in range(100)]
    result = run_gate(script, ["x"], ["y"], limit())
    assert result["verdict"] == PASS
    assert result["latency"]["result"] == LATENCY_NOT_COMPARED and result["y"]["latency_ms"] is None
    assert "turn on the prometheus plugin's latency_metrics" in result["reason"]


def test_max_latency_ratio_zero_turns_the_check_off():
    script = [metrics_reading((1000 * i, fast(1000 * i)), (50 * i, slow(50 * i))) for i in range(100)]
    result = run_gate(script, ["x"], ["y"], limit(max_ratio=0))
    assert result["verdict"] == PASS
    assert result["latency"]["result"] == LATENCY_OFF and result["latency"]["y_ms"] == pytest.approx(497.0)
    assert "latency" not in result["reason"]
    assert result["thresholds"]["max_latency_ratio"] == 0


def test_the_default_gate_has_no_latency_check():
    script = [metrics_reading((1000 * i, fast(1000 * i)), (50 * i, slow(50 * i))) for i in range(100)]
    clock = Clock()
    readings = iter(script)
    result = Gate(lambda: next(readings), ["x"], ["y"], 100, 5, 60, 0.01, 0.005, clock=clock.time,
                  sleep=clock.sleep).run()
    assert result["verdict"] == PASS and result["latency"]["result"] == LATENCY_OFF


# ----------------------------------------------------------------------------- HAProxy


HEADER = "# pxname,svname,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,econ,eresp,wretr,wredis,rtime,ttime,"


def stat(rows):
    lines = [HEADER]
    for name, ok, ttime in rows:
        lines.append(f"kong_proxy,{name},0,{ok},0,0,0,0,0,0,0,0,{ttime},{ttime},")
    return "\n".join(lines) + "\n"


def haproxy_reading(rows):
    return haproxy_counters(stat(rows), "kong_proxy", [name for name, _ok, _ttime in rows])


def test_haproxy_latency_is_ttime_weighted_by_the_requests_of_the_step():
    # x1 served 900 requests of the step at 10 ms, x2 100 at 110 ms: (900*10 + 100*110) / 1000 = 20 ms.
    # x3 served none in the step: its average (of older requests) does not count.
    script = [haproxy_reading([("x1", 90 * i, 10), ("x2", 10 * i, 110), ("x3", 500, 900), ("y1", 20 * i, 30)])
              for i in range(100)]
    result = run_gate(script, ["x1", "x2", "x3"], ["y1"], limit(statistic="HAProxy ttime average"))
    assert result["x"]["latency_ms"] == 20.0 and result["y"]["latency_ms"] == 30.0
    assert result["latency"]["limit_ms"] == 70.0 and result["verdict"] == PASS
    assert result["latency"]["statistic"] == "HAProxy ttime average"


def test_haproxy_y_slower_than_x_fails():
    script = [haproxy_reading([("x1", 100 * i, 12), ("y1", 30 * i, 140)]) for i in range(100)]
    result = run_gate(script, ["x1"], ["y1"], limit(statistic="HAProxy ttime average"))
    assert result["verdict"] == FAIL
    assert result["reason"] == ("Y's HAProxy ttime average 140.0 ms is above the limit 62.0 ms: more than 2 times X's "
                                "12.0 ms over the same interval and more than 50 ms above it")


def test_the_floor_keeps_small_latencies_from_failing_on_noise():
    # Five times X's, but only 8 ms more.
    script = [haproxy_reading([("x1", 100 * i, 2), ("y1", 30 * i, 10)]) for i in range(100)]
    assert run_gate(script, ["x1"], ["y1"], limit())["verdict"] == PASS
    assert run_gate(script, ["x1"], ["y1"], limit(floor_ms=5))["verdict"] == FAIL


def test_latency_is_not_compared_when_x_served_too_little():
    x = {"requests": 20, "latency_ms": 5.0}
    y = {"requests": 500, "latency_ms": 900.0}
    info = judge_latency(x, y, limit(), min_requests=100)
    assert info["result"] == LATENCY_NOT_COMPARED and "X served 20 requests" in info["reason"]
    assert judge_latency(dict(x, requests=100), y, limit(), min_requests=100)["result"] == FAIL


# ----------------------------------------------------------------------------- Prometheus


def test_the_default_selector_matches_the_instances_exactly():
    assert instance_selector(["127.0.1.1:8007", "kong-x2.example:8100"]) == \
        'instance=~"127\\\\.0\\\\.1\\\\.1:8007|kong-x2\\\\.example:8100"'
    assert matchers(' {job="kong", kong_cluster="y"} ') == 'job="kong", kong_cluster="y"'
    assert matchers('kong_cluster="y",') == 'kong_cluster="y"'


def test_the_promql_compares_x_and_y_over_the_same_range():
    assert requests_query('kong_cluster="y"', 12.3456) == (
        'sum by (code, source) (increase({__name__=~"kong_http_requests_total|kong_http_status", '
        'kong_cluster="y"}[12346ms]))')
    assert latency_query('kong_cluster="y"', 30, 0.99) == (
        'histogram_quantile(0.99, sum by (le) (increase(kong_request_latency_ms_bucket{kong_cluster="y"}[30000ms])) '
        'or sum by (le) (increase(kong_latency_bucket{type="request", kong_cluster="y"}[30000ms])))')
    assert "kong_upstream_latency_ms_bucket" in latency_query("a=\"b\"", 1, 0.95, "upstream")


def sample(value, **labels):
    return {"metric": labels, "value": [1000.0, value]}


def test_request_counts_split_errors_by_source_and_round_increase():
    vector = [sample("901.6", code="200", source="service"), sample("40.2", code="503", source="kong"),
              sample("9.9", code="502", source="service"), sample("3", code="404", source="kong")]
    assert request_counts(vector) == {"requests": 955, "errors": 50, "error_rate": round(50 / 955, 6),
                                      "gateway_errors": 40, "upstream_errors": 10, "retries": 0}
    # 2.x has no source label: upstream errors are unknown.
    old = request_counts([sample("10", code="200"), sample("2", code="500")])
    assert old["errors"] == 2 and old["upstream_errors"] is None and old["gateway_errors"] == 0
    assert request_counts([])["error_rate"] is None


class FakePrometheus:
    """Answers each query from ``answers(promql, at)``; records the queries."""

    def __init__(self, answers):
        self.answers = answers
        self.queries = []
        self.url = self.display_url = "http://prometheus.test:9090"

    def query(self, promql, at=None):
        self.queries.append((promql, at))
        return self.answers(promql, at)


def step_answers(y_requests_per_second, y_p99="12.5", y_errors=0.0):
    def answers(promql, at):
        if promql.startswith("up{"):
            group = "y" if 'kong_cluster="y"' in promql else "x"
            return [sample("1", instance=f"{group}1:8007", job="kong", kong_cluster=group)]
        seconds = float(promql.split("[")[1].split("ms]")[0]) / 1000
        is_y = 'kong_cluster="y"' in promql
        if promql.startswith("sum by (code"):
            rate = y_requests_per_second if is_y else 1000
            answer = [sample(str(rate * seconds), code="200", source="service")]
            if is_y and y_errors:
                answer.append(sample(str(y_errors * seconds), code="503", source="kong"))
            return answer
        return [sample(y_p99 if is_y else "10.0")]
    return answers


def prometheus_gate(answers, latency=None, **kwargs):
    clock = Clock()
    client = FakePrometheus(answers)
    window = PrometheusWindow(client, 'kong_cluster="x"', 'kong_cluster="y"', clock=clock.time)
    options = dict(min_requests=300, min_duration=5, max_duration=30, max_error_rate=0.01,
                   max_error_rate_increase=0.005, interval=1.0)
    options.update(kwargs)
    gate = Gate(window, [], [], clock=clock.time, sleep=clock.sleep, latency=latency or limit(), **options)
    return gate.run(), client


def test_prometheus_passes_a_healthy_y_over_the_whole_interval():
    result, client = prometheus_gate(step_answers(100))
    assert result["verdict"] == PASS, result["reason"]
    assert result["y"]["requests"] == 500 and result["x"]["requests"] == 5000
    assert result["y"]["latency_ms"] == 12.5 and result["latency"]["result"] == PASS
    assert result["counter_resets"] == 0 and result["samples"] == 5
    # Every reading asks X and Y for the same range at the same instant, growing with the step.
    readings = [q for q in client.queries if not q[0].startswith("up{")]
    last = readings[-4:]
    assert len({at for _q, at in last}) == 1
    assert all("[5000ms]" in promql for promql, _at in last)


def test_prometheus_too_few_requests_waits_then_is_inconclusive():
    result, _client = prometheus_gate(step_answers(5), max_duration=12)
    assert result["verdict"] == INCONCLUSIVE and result["duration_seconds"] >= 12
    assert "fewer than the 300 needed" in result["reason"]


def test_prometheus_errors_fail_early_and_latency_fails_on_completion():
    result, _client = prometheus_gate(step_answers(100, y_errors=20))
    assert result["verdict"] == FAIL and result["duration_seconds"] < 5 and "above the limit" in result["reason"]
    assert result["y"]["gateway_errors"] == result["y"]["errors"] > 0
    result, _client = prometheus_gate(step_answers(100, y_p99="480.0"))
    assert result["verdict"] == FAIL and result["duration_seconds"] >= 5
    assert result["latency"] == dict(result["latency"], result=FAIL, x_ms=10.0, y_ms=480.0, limit_ms=60.0)
    # NaN (no observations in the range) is no number.
    result, _client = prometheus_gate(step_answers(100, y_p99="NaN"))
    assert result["verdict"] == PASS and result["latency"]["result"] == LATENCY_NOT_COMPARED


def test_prometheus_says_when_no_series_matched():
    def answers(promql, at):
        if promql.startswith("up{"):
            return [sample("1", instance="y1:8007" if 'kong_cluster="y"' in promql else "x1:8007")]
        return [] if 'kong_cluster="y"' in promql else step_answers(0)(promql, at)
    result, _client = prometheus_gate(answers, max_duration=3, min_duration=1)
    assert result["verdict"] == INCONCLUSIVE
    assert "no kong_http_requests_total or kong_http_status series of Y's targets {kong_cluster=\"y\"}" in \
        result["reason"]


def test_prometheus_refuses_selectors_matching_nothing_or_both_groups():
    window = PrometheusWindow(FakePrometheus(lambda promql, at: []), 'kong_cluster="x"', 'kong_cluster="y"')
    with pytest.raises(PrometheusError, match=r"no scrape target matching \{kong_cluster=\"x\"\}"):
        window.begin()
    window = PrometheusWindow(FakePrometheus(lambda promql, at: [sample("1", instance="n1:8007", job="kong")]),
                              'job="kong"', 'job="kong"')
    with pytest.raises(PrometheusError, match="n1:8007: X and Y must be told apart"):
        window.begin()
    with pytest.raises(PrometheusError, match="nothing to judge"):
        PrometheusWindow(FakePrometheus(lambda promql, at: []), 'job="kong"', "").begin()


def test_prometheus_without_x_judges_y_alone():
    def answers(promql, at):
        return step_answers(100)(promql, at)
    clock = Clock()
    window = PrometheusWindow(FakePrometheus(answers), None, 'kong_cluster="y"', clock=clock.time)
    result = Gate(window, [], [], 300, 5, 30, 0.01, 0.005, clock=clock.time, sleep=clock.sleep,
                  latency=limit()).run()
    assert result["verdict"] == PASS and result["x"]["requests"] == 0
    assert "X served too little" in result["reason"] and result["latency"]["result"] == LATENCY_NOT_COMPARED
    assert "X served 0 requests, too few to compare" in result["reason"]


# ----------------------------------------------------------------------------- the HTTP client


class Handler(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = {key: values[0] for key, values in parse_qs(body).items()}
        Handler.seen.append((self.path, {key.lower(): value for key, value in self.headers.items()}, form))
        if form["query"] == "bad(":
            status, doc = 400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}
        else:
            status, doc = 200, {"status": "success", "data": {"resultType": "vector",
                                                              "result": [sample("1", instance="a:1")]}}
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.seen.clear()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_client_posts_the_query_with_its_headers(server):
    client = PrometheusClient(server + "/", {"X-Scope-OrgID": "tenant-1"}, timeout=5)
    assert client.query("up", at=1234.5) == [sample("1", instance="a:1")]
    path, headers, form = Handler.seen[-1]
    assert path == "/api/v1/query" and form == {"query": "up", "time": "1234.500"}
    assert headers["x-scope-orgid"] == "tenant-1"


def test_the_client_reports_prometheus_errors_without_credentials(server):
    client = PrometheusClient(server.replace("http://", "http://user:s3cret@"), timeout=5)
    with pytest.raises(PrometheusError) as caught:
        client.query("bad(")
    assert "answered 400 to the query bad(: parse error at char 5" in str(caught.value)
    assert "s3cret" not in str(caught.value) and "user" not in str(caught.value)
    with pytest.raises(PrometheusError, match="cannot reach Prometheus at http://127.0.0.1:9/api/v1/query"):
        PrometheusClient("http://someone:s3cret@127.0.0.1:9", timeout=2).query("up")


# ----------------------------------------------------------------------------- the module's parameters


def params(**overrides):
    base = dict(source="prometheus", y_servers=[], prometheus_y_selector='kong_cluster="y"', min_requests=300,
                max_error_rate=0.01, max_error_rate_increase=0.005, min_duration=10, max_duration=300, interval=1,
                max_latency_ratio=2, latency_floor_ms=50, latency_quantile=0.99)
    base.update(overrides)
    return base


def test_the_module_checks_the_latency_parameters():
    assert check(params()) == []
    assert check(params(max_latency_ratio=0)) == []
    assert any("max_latency_ratio (0.5) must be 1 or more" in p for p in check(params(max_latency_ratio=0.5)))
    assert any("latency_quantile" in p for p in check(params(latency_quantile=1)))
    assert any("latency_floor_ms" in p for p in check(params(latency_floor_ms=-1)))
    assert check(params(prometheus_y_selector=None)) == ["y_servers is empty: there is nothing to judge"]
    assert check(params(source="haproxy")) == ["y_servers is empty: there is nothing to judge"]
