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
  - Reads cumulative counters at the start of the step and then every O(interval) seconds, from the load balancer
    (HAProxy C(show stat) per server - response classes, connection and response errors, retries and redispatches,
    response times) or from the Kong nodes' Prometheus C(/metrics) (where 5xx answers are split by source,
    C(kong) for the gateway and C(service) for the upstream).
  - Works on deltas over the step, and restarts its baseline when a counter goes backwards (a reload reset it).
  - Judges only once Y has served O(min_requests) and O(min_duration) has passed; until then it keeps observing, and
    at O(max_duration) it answers C(inconclusive). It fails early when Y already breaks a limit with enough requests.
  - C(fail) when Y's error rate is above O(max_error_rate), or above X's rate over the same interval by more than
    O(max_error_rate_increase). Errors counted for Y include retries and redispatches HAProxy hid from clients.
  - Returns the verdict with the numbers behind it. It changes nothing; acting on the verdict is the caller's job.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
options:
  source:
    description:
      - Where the counters come from.
    type: str
    choices: [haproxy, kong_metrics]
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
    type: list
    elements: str
    required: true
  y_servers:
    description:
      - With O(source=haproxy), HAProxy server names of Y; with O(source=kong_metrics), C(/metrics) URLs of Y nodes.
    type: list
    elements: str
    required: true
  min_requests:
    description:
      - Requests Y must serve in the step before it is judged. With zero errors, N requests bound Y's error rate below
        about 3/N at 95 % confidence.
    type: int
    default: 300
  min_duration:
    description:
      - Seconds the step lasts at least.
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
  interval:
    description:
      - Seconds between two readings of the counters.
    type: float
    default: 1
  timeout:
    description:
      - Seconds to wait for each reading.
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
  description: The sentence behind the verdict, with its numbers.
  returned: always
  type: str
  sample: "Y's error rate 0.0000% (0 of 612) is within the limit 1.0000% and within 0.5000 points of X's 0.0556%"
x:
  description: X's numbers over the step (requests, errors, error_rate, gateway_errors, upstream_errors, retries,
    avg_response_ms where the source has them).
  returned: always
  type: dict
  sample: {"requests": 5400, "errors": 3, "error_rate": 0.000556, "gateway_errors": 1, "upstream_errors": null, "retries": 0,
           "avg_response_ms": 12.3}
y:
  description: Y's numbers over the step, as RV(x).
  returned: always
  type: dict
  sample: {"requests": 612, "errors": 0, "error_rate": 0.0, "gateway_errors": 0, "upstream_errors": null, "retries": 0,
           "avg_response_ms": 11.8}
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
  description: How many times a counter went backwards and the baseline was taken again.
  returned: always
  type: int
  sample: 0
thresholds:
  description: The limits the verdict was judged against.
  returned: always
  type: dict
  sample: {"min_requests": 500, "max_error_rate": 0.01, "max_error_rate_increase": 0.005, "min_duration": 60.0, "max_duration": 600.0}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._admin_api import AdminApiError, KongHttp
from ansible_collections.kongops.upgrade.plugins.module_utils._gate import (
    Gate,
    GateError,
    haproxy_counters,
    prometheus_counters,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._lb import HaproxyDriver, LbError


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
        return prometheus_counters(response.body.decode("utf-8", "replace"))

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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            source=dict(type="str", choices=["haproxy", "kong_metrics"], default="haproxy"),
            haproxy_socket=dict(type="str"),
            backend=dict(type="str", default="kong_proxy"),
            x_servers=dict(type="list", elements="str", required=True),
            y_servers=dict(type="list", elements="str", required=True),
            min_requests=dict(type="int", default=300),
            min_duration=dict(type="float", default=10),
            max_duration=dict(type="float", default=300),
            max_error_rate=dict(type="float", default=0.01),
            max_error_rate_increase=dict(type="float", default=0.005),
            interval=dict(type="float", default=1),
            timeout=dict(type="float", default=5),
        ),
        required_if=[("source", "haproxy", ["haproxy_socket"])],
        supports_check_mode=True,
    )
    params = module.params
    problems = []
    if not params["y_servers"]:
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
    if problems:
        module.fail_json(msg="; ".join(problems))
    if params["source"] == "haproxy":
        read, x_names, y_names = haproxy_reader(params)
    else:
        read, x_names, y_names = metrics_reader(params)
    gate = Gate(read, x_names, y_names, params["min_requests"], params["min_duration"], params["max_duration"],
                params["max_error_rate"], params["max_error_rate_increase"], params["interval"])
    try:
        result = gate.run()
    except (GateError, LbError, AdminApiError) as exc:
        module.fail_json(msg="cannot read the traffic counters: %s" % exc)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
