#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: traffic_gate
short_description: Judge one traffic step of an upgrade, Y against X over the same interval
version_added: 1.0.0
description:
  - Reads X's and Y's numbers at the start of the step and then every O(interval) seconds, from one of three sources.
    C(haproxy) reads cumulative counters from the load balancer (HAProxy C(show stat) per server - response classes,
    connection and response errors, retries and redispatches, response times). C(kong_metrics) reads them from the
    Kong nodes' Prometheus C(/metrics), where 5xx answers are split by source, C(kong) for the gateway and C(service)
    for the upstream. C(prometheus) asks a Prometheus server that scrapes those C(/metrics) for the numbers of the
    whole interval since the step began (PromQL C(increase) and C(histogram_quantile) over that range).
  - With counters it works on deltas over the step, and restarts its baseline when a counter goes backwards (a reload
    reset it); Prometheus's C(increase) copes with resets itself.
  - Judges only once Y has served O(min_requests) and O(min_duration) has passed; until then it keeps observing, and
    at O(max_duration) it answers C(inconclusive). It fails early when Y's error rate already breaks a limit with
    enough requests.
  - C(fail) when Y's error rate is above O(max_error_rate), or above X's rate over the same interval by more than
    O(max_error_rate_increase). Errors counted for Y include retries and redispatches HAProxy hid from clients.
  - On a complete step (never early), also C(fail) when Y's latency is above X's over the same interval by more than
    O(max_latency_ratio) times and by more than O(latency_floor_ms). What latency is depends on the source, see
    O(max_latency_ratio). Latency is not compared (RV(latency.result=not_compared)) when a side has no number for it
    or X served fewer than O(min_requests) (at 100 % X serves nothing).
  - Returns the verdict with the numbers behind it. It changes nothing; acting on the verdict is the caller's job.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
options:
  source:
    description:
      - Where the numbers come from.
    type: str
    choices: [haproxy, kong_metrics, prometheus]
    default: haproxy
  haproxy_socket:
    description:
      - HAProxy runtime API socket (UNIX path or C(tcp:HOST:PORT)), with O(source=haproxy).
    type: str
  backend:
    description:
      - HAProxy backend holding the X and Y servers.
    type: str
    default: kong_proxy
  x_servers:
    description:
      - With O(source=haproxy), HAProxy server names of X; with O(source=kong_metrics), C(/metrics) URLs of X nodes.
      - With O(source=prometheus), the X nodes' scrape targets as Prometheus labels them in C(instance)
        (C(HOST:PORT) of each status listener), unless O(prometheus_x_selector) is set; may be empty when it is.
    type: list
    elements: str
    required: true
  y_servers:
    description:
      - As O(x_servers), for Y.
    type: list
    elements: str
    required: true
  prometheus_url:
    description:
      - Base URL of the Prometheus server (its HTTP API answers at C(/api/v1/query) under it), with
        O(source=prometheus). It must scrape every X and Y node's status listener C(/metrics) with Kong's prometheus
        plugin on (on 3.x with C(config.status_code_metrics) and, for latency, C(config.latency_metrics)).
      - Put no credentials in the URL (it appears in messages without them, but Ansible shows module arguments at
        high verbosity); use O(prometheus_headers).
    type: str
  prometheus_x_selector:
    description:
      - Label matchers selecting X's scrape targets, as inside a PromQL selector's braces, for example
        C(job="kong", kong_cluster="blue"). They must match the targets' labels (C(up) has them too) and no Y target.
      - Default C(instance=~"<x_servers joined with |, regex-escaped>").
    type: str
  prometheus_y_selector:
    description:
      - As O(prometheus_x_selector), for Y; default from O(y_servers).
    type: str
  prometheus_headers:
    description:
      - HTTP headers sent with every query, for example C(Authorization) for a Prometheus behind authentication or
        C(X-Scope-OrgID) for a multi-tenant one. Never logged.
    type: dict
  min_requests:
    description:
      - Requests Y must serve in the step before it is judged. With zero errors, N requests bound Y's error rate below
        about 3/N at 95 % confidence. X must have served as many for Y to be compared with it; while X still
        serves (a step below 100 %), the step goes on until it has, up to O(max_duration).
    type: int
    default: 300
  min_duration:
    description:
      - Seconds the step lasts at least. With O(source=prometheus), give it a few scrape intervals.
    type: float
    default: 10
  max_duration:
    description:
      - Seconds after which the step is judged C(inconclusive) if Y has not served O(min_requests).
    type: float
    default: 300
  max_error_rate:
    description:
      - Highest acceptable error rate of Y (0.01 is 1 %).
    type: float
    default: 0.01
  max_error_rate_increase:
    description:
      - Highest acceptable excess of Y's error rate over X's over the same interval (0.005 is half a point).
    type: float
    default: 0.005
  max_latency_ratio:
    description:
      - Y fails when its latency is more than this many times X's over the same interval B(and) more than
        O(latency_floor_ms) above it. V(0) turns the check off (the numbers are still returned).
      - What each source measures, per group of nodes. C(kong_metrics) - the O(latency_quantile) of Kong's
        O(latency_metric) histogram, from the deltas of its buckets between the step's start and its end, summed over
        the group's nodes, services and routes, interpolated inside a bucket as Prometheus does (Kong's buckets are
        coarse - 1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500 ms and up on 3.9 - so the value is an estimate
        between two bounds). C(prometheus) - C(histogram_quantile) of the same histogram's C(increase) over the step.
        C(haproxy) - HAProxy has no quantiles, only C(ttime), each server's average total time of its last 1024
        requests (all of them while it has served fewer), read at the end of the step and weighted by the requests
        each server served in the step; at a low weight those 1024 requests can reach back before the step.
    type: float
    default: 2
  latency_floor_ms:
    description:
      - Latency differences of at most this many milliseconds never fail the step, whatever the ratio (a quantile of
        a few milliseconds doubles on noise).
    type: float
    default: 50
  latency_quantile:
    description:
      - The quantile compared, between 0 and 1 (0.99 is p99), with O(source=kong_metrics) and O(source=prometheus).
        HAProxy has averages only.
    type: float
    default: 0.99
  latency_metric:
    description:
      - Which of Kong's latency histograms, with O(source=kong_metrics) and O(source=prometheus). C(request) - the
        whole request as Kong saw it (C(kong_request_latency_ms), 2.x C(kong_latency{type="request"})); C(kong) -
        the time Kong and its plugins added (C(kong_kong_latency_ms)); C(upstream) - the upstream's
        (C(kong_upstream_latency_ms)). Kong 3.x has them only with the prometheus plugin's C(config.latency_metrics).
    type: str
    choices: [request, kong, upstream]
    default: request
  interval:
    description:
      - Seconds between two readings.
    type: float
    default: 1
  timeout:
    description:
      - Seconds to wait for each reading (each request of it).
    type: float
    default: 5
attributes:
  check_mode:
    support: full
    details:
      - The module only reads; it observes and judges in check mode too.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Judge the 10 % step
  kongops.upgrade.traffic_gate:
    haproxy_socket: /run/haproxy/admin.sock
    x_servers: [x1, x2, x3]
    y_servers: [y1, y2, y3]
    min_requests: 500
    min_duration: 60
    max_duration: 600
  register: gate

- name: Judge the 10 % step with Prometheus, X and Y told apart by a label on their scrape targets
  kongops.upgrade.traffic_gate:
    source: prometheus
    prometheus_url: http://prometheus.example.net:9090
    prometheus_x_selector: job="kong", kong_cluster="blue"
    prometheus_y_selector: job="kong", kong_cluster="green"
    x_servers: []
    y_servers: []
    min_duration: 60
    max_latency_ratio: 1.5
    latency_floor_ms: 20
  register: gate

- name: Stop on anything but pass
  ansible.builtin.assert:
    that: gate.verdict == 'pass'
    fail_msg: "{{ gate.reason }}"
"""

RETURN = r"""
verdict:
  description: C(pass), C(fail) or C(inconclusive).
  returned: always
  type: str
  sample: pass
reason:
  description: The sentence behind the verdict, with its numbers (and the latency comparison's on a pass).
  returned: always
  type: str
  sample: "Y's error rate 0.0000% (0 of 612) is within the limit 1.0000% and within 0.5000 points of X's 0.0556%;
    Y's p99 request latency 14.2 ms is within the limit 63.0 ms (X's 13.0 ms, times 2 or plus 50 ms)"
x:
  description: X's numbers over the step (requests, errors, error_rate, gateway_errors, upstream_errors, retries,
    latency_ms - the statistic RV(latency.statistic) - and avg_response_ms, HAProxy's C(rtime), where the source has
    them).
  returned: always
  type: dict
  sample: {"requests": 5400, "errors": 3, "error_rate": 0.000556, "gateway_errors": 1, "upstream_errors": null, "retries": 0,
           "avg_response_ms": 12.3, "latency_ms": 13.0}
y:
  description: Y's numbers over the step, as RV(x).
  returned: always
  type: dict
  sample: {"requests": 612, "errors": 0, "error_rate": 0.0, "gateway_errors": 0, "upstream_errors": null, "retries": 0,
           "avg_response_ms": 11.8, "latency_ms": 14.2}
latency:
  description: Y's latency against X's.
  returned: always
  type: dict
  sample: {"result": "pass", "reason": "Y's p99 request latency 14.2 ms is within the limit 63.0 ms (X's 13.0 ms, times 2 or plus 50 ms)",
           "statistic": "p99 request latency", "quantile": 0.99, "x_ms": 13.0, "y_ms": 14.2, "limit_ms": 63.0, "max_ratio": 2.0,
           "floor_ms": 50.0}
  contains:
    result:
      description: C(pass), C(fail), C(off) (O(max_latency_ratio=0)) or C(not_compared) (a side has no number, X
        served too little, or the step ended early or inconclusive).
      type: str
      sample: pass
    reason:
      description: The sentence behind RV(latency.result).
      type: str
      sample: "Y's p99 request latency 14.2 ms is within the limit 63.0 ms (X's 13.0 ms, times 2 or plus 50 ms)"
    statistic:
      description: What was compared, C(p99 request latency) (Kong's histograms) or C(HAProxy ttime average).
      type: str
      sample: p99 request latency
    quantile:
      description: O(latency_quantile).
      type: float
      sample: 0.99
    x_ms:
      description: X's value, in milliseconds (null when not measured).
      type: float
      sample: 13.0
    y_ms:
      description: Y's value, in milliseconds (null when not measured).
      type: float
      sample: 14.2
    limit_ms:
      description: The highest value Y could have had, in milliseconds (null when not compared).
      type: float
      sample: 63.0
    max_ratio:
      description: O(max_latency_ratio).
      type: float
      sample: 2.0
    floor_ms:
      description: O(latency_floor_ms).
      type: float
      sample: 50.0
duration_seconds:
  description: How long the step was observed.
  returned: always
  type: float
  sample: 60.04
samples:
  description: Number of readings after the baseline.
  returned: always
  type: int
  sample: 60
counter_resets:
  description: How many times a counter went backwards and the baseline was taken again (always 0 with Prometheus,
    whose C(increase) handles resets).
  returned: always
  type: int
  sample: 0
thresholds:
  description: The limits the verdict was judged against.
  returned: always
  type: dict
  sample: {"min_requests": 500, "max_error_rate": 0.01, "max_error_rate_increase": 0.005, "min_duration": 60.0, "max_duration": 600.0,
           "max_latency_ratio": 2.0, "latency_floor_ms": 50.0, "latency_quantile": 0.99}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._admin_api import AdminApiError, KongHttp
from ansible_collections.kongops.upgrade.plugins.module_utils._gate import (
    Gate,
    GateError,
    LatencyLimit,
    haproxy_counters,
    prometheus_counters,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._lb import HaproxyDriver, LbError
from ansible_collections.kongops.upgrade.plugins.module_utils._prometheus import (
    PrometheusClient,
    PrometheusWindow,
    instance_selector,
)


def haproxy_reader(params):
    driver = HaproxyDriver(params["haproxy_socket"], params["backend"], timeout=params["timeout"])
    names = list(params["x_servers"]) + list(params["y_servers"])

    def read():
        return haproxy_counters(driver.command("show stat"), params["backend"], names)
    return read, params["x_servers"], params["y_servers"]


def metrics_reader(params):
    def fetch(url):
        base, path = url, "/metrics"
        if url.rstrip("/").endswith("/metrics"):
            base, path = url.rstrip("/")[:-len("/metrics")], "/metrics"
        response = KongHttp(base, timeout=params["timeout"]).request("GET", path, expect=(200,))
        return prometheus_counters(response.body.decode("utf-8", "replace"), params["latency_metric"])

    def read():
        counters = {}
        for group, urls in (("x", params["x_servers"]), ("y", params["y_servers"])):
            total = {}
            for url in urls:
                for key, value in fetch(url).items():
                    total[key] = total.get(key, 0) + value
            counters[group] = total
        return counters
    return read, ["x"], ["y"]


def prometheus_window(params):
    selectors = {}
    for group in ("x", "y"):
        selector = params["prometheus_%s_selector" % group]
        servers = params["%s_servers" % group]
        selectors[group] = selector if selector else (instance_selector(servers) if servers else None)
    client = PrometheusClient(params["prometheus_url"], params["prometheus_headers"], params["timeout"])
    return PrometheusWindow(client, selectors["x"], selectors["y"], params["latency_quantile"],
                            params["latency_metric"])


def check(params):
    """What is wrong with the parameters, as sentences."""
    problems = []
    if not params["y_servers"] and not (params["source"] == "prometheus" and params["prometheus_y_selector"]):
        problems.append("y_servers is empty: there is nothing to judge")
    if params["min_requests"] < 1:
        problems.append("min_requests must be at least 1")
    if not 0 <= params["max_error_rate"] <= 1 or not 0 <= params["max_error_rate_increase"] <= 1:
        problems.append("max_error_rate and max_error_rate_increase are fractions between 0 and 1 (0.01 is 1 %)")
    if params["max_duration"] < params["min_duration"]:
        problems.append("max_duration (%s) must not be shorter than min_duration (%s)"
                        % (params["max_duration"], params["min_duration"]))
    if params["interval"] <= 0:
        problems.append("interval must be positive")
    if params["max_latency_ratio"] != 0 and params["max_latency_ratio"] < 1:
        problems.append("max_latency_ratio (%s) must be 1 or more (Y at most that many times X's latency), or 0 to "
                        "turn the latency check off" % params["max_latency_ratio"])
    if params["latency_floor_ms"] < 0:
        problems.append("latency_floor_ms must not be negative")
    if not 0 < params["latency_quantile"] < 1:
        problems.append("latency_quantile is a fraction between 0 and 1, exclusive (0.99 is p99)")
    return problems


def main():
    module = AnsibleModule(
        argument_spec=dict(
            source=dict(type="str", choices=["haproxy", "kong_metrics", "prometheus"], default="haproxy"),
            haproxy_socket=dict(type="str"),
            backend=dict(type="str", default="kong_proxy"),
            x_servers=dict(type="list", elements="str", required=True),
            y_servers=dict(type="list", elements="str", required=True),
            prometheus_url=dict(type="str"),
            prometheus_x_selector=dict(type="str"),
            prometheus_y_selector=dict(type="str"),
            prometheus_headers=dict(type="dict", no_log=True),
            min_requests=dict(type="int", default=300),
            min_duration=dict(type="float", default=10),
            max_duration=dict(type="float", default=300),
            max_error_rate=dict(type="float", default=0.01),
            max_error_rate_increase=dict(type="float", default=0.005),
            max_latency_ratio=dict(type="float", default=2),
            latency_floor_ms=dict(type="float", default=50),
            latency_quantile=dict(type="float", default=0.99),
            latency_metric=dict(type="str", choices=["request", "kong", "upstream"], default="request"),
            interval=dict(type="float", default=1),
            timeout=dict(type="float", default=5),
        ),
        required_if=[("source", "haproxy", ["haproxy_socket"]), ("source", "prometheus", ["prometheus_url"])],
        supports_check_mode=True,
    )
    params = module.params
    problems = check(params)
    if problems:
        module.fail_json(msg="; ".join(problems))
    if params["source"] == "haproxy":
        read, x_names, y_names = haproxy_reader(params)
        statistic = "HAProxy ttime average"
    elif params["source"] == "kong_metrics":
        read, x_names, y_names = metrics_reader(params)
        statistic = None
    else:
        read, x_names, y_names = prometheus_window(params), [], []
        statistic = None
    latency = LatencyLimit(params["max_latency_ratio"], params["latency_floor_ms"], params["latency_quantile"],
                           statistic or "p%g %s latency" % (100 * params["latency_quantile"], params["latency_metric"]))
    gate = Gate(read, x_names, y_names, params["min_requests"], params["min_duration"], params["max_duration"],
                params["max_error_rate"], params["max_error_rate_increase"], params["interval"], latency=latency)
    try:
        result = gate.run()
    except (GateError, LbError, AdminApiError) as exc:
        module.fail_json(msg="cannot read the traffic counters: %s" % exc)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
