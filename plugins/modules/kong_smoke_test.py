#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kong_smoke_test
short_description: Smoke-test one Kong node directly, in one run - ready, then requests through its proxy
version_added: 1.1.0
description:
  - Waits until the node is ready (O(ready_url) answers 200), then sends every request in O(smoke_requests) to its proxy
    (O(proxy_url)), directly and not through the load balancer, and checks each answer's status code.
  - With O(metrics_url), also checks that the node counts its answers on its Prometheus C(/metrics)
    (C(kong_http_requests_total) or C(kong_http_status)) and returns what it found; it does not fail on it.
  - One module run does what took one task per request before, so a smoke test costs about one run per node.
  - Only reads; it runs in check mode as well (a node that is not running yet fails the same way).
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.smoke_requests
options:
  proxy_url:
    description:
      - The node's proxy, as the node itself reaches it (for example V(http://127.0.0.1:8000)).
    type: str
    required: true
  ready_url:
    description:
      - The URL that answers 200 once the node is ready, for example its Status API's C(/status/ready) (Kong 3.3+) or
        its Admin API's C(/status).
    type: str
    required: true
  admin_token:
    description:
      - Sent as the C(Kong-Admin-Token) header with the readiness request (an Admin API behind RBAC).
    type: str
  ready_timeout:
    description:
      - Seconds the node may take to become ready.
    type: int
    default: 60
  metrics_url:
    description:
      - The node's C(/metrics) (Status API); when given, the module returns whether the node counts its answers there.
    type: str
  metrics_timeout:
    description:
      - Seconds to wait for the counters to appear on O(metrics_url) (they appear with the first proxied answer).
    type: int
    default: 5
  timeout:
    description:
      - Seconds each request may take.
    type: int
    default: 10
  validate_certs:
    description:
      - Verify TLS certificates.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details:
      - It only reads, and does the same in check mode.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Smoke-test a new node before it gets traffic
  kongops.upgrade.kong_smoke_test:
    proxy_url: http://127.0.0.1:8000
    ready_url: http://127.0.0.1:8100/status/ready
    smoke_requests:
      - path: /echo
        host: api.example.com
        status: [200]
"""

RETURN = r"""
ready:
  description: How the node was judged ready (the URL that answered, after how many seconds).
  returned: always
  type: dict
  sample: {"url": "http://127.0.0.1:8100/status/ready", "seconds": 0.012}
answers:
  description: Each request with the status code that came back.
  returned: always
  type: list
  elements: dict
  sample: [{"method": "GET", "path": "/echo", "status": 200, "passed": true}]
metrics_counted:
  description: Whether O(metrics_url) shows the node counting its answers.
  returned: when O(metrics_url) is given
  type: bool
  sample: true
metrics_status:
  description: The status code O(metrics_url) last answered (none when it did not answer).
  returned: when O(metrics_url) is given
  type: int
  sample: 200
"""

import re
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._smoke import SMOKE_REQUEST_OPTIONS, fetch, run_requests

COUNTED = re.compile(r"^kong_http_(requests_total|status)\{", re.MULTILINE)


def wait_ready(params):
    headers = {"Kong-Admin-Token": params["admin_token"]} if params["admin_token"] else {}
    started = time.time()
    deadline = started + params["ready_timeout"]
    while True:
        status, body = fetch(params["ready_url"], headers=headers, timeout=params["timeout"],
                             validate_certs=params["validate_certs"])
        if status == 200:
            return {"url": params["ready_url"], "seconds": round(time.time() - started, 3)}, None
        if time.time() >= deadline:
            seen = "answered %s" % status if status is not None else "did not answer (%s)" % body
            return None, "not ready within %s s: %s %s" % (params["ready_timeout"], params["ready_url"], seen)
        time.sleep(0.25)


def metrics_counted(params):
    deadline = time.time() + params["metrics_timeout"]
    while True:
        status, body = fetch(params["metrics_url"], timeout=params["timeout"], validate_certs=params["validate_certs"])
        if status == 200 and COUNTED.search(body.decode("utf-8", "replace")):
            return True, status
        if time.time() >= deadline:
            return False, status
        time.sleep(0.5)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            proxy_url=dict(type="str", required=True),
            ready_url=dict(type="str", required=True),
            admin_token=dict(type="str", no_log=True),
            ready_timeout=dict(type="int", default=60),
            smoke_requests=dict(type="list", elements="dict", default=[], options=SMOKE_REQUEST_OPTIONS),
            metrics_url=dict(type="str"),
            metrics_timeout=dict(type="int", default=5),
            timeout=dict(type="int", default=10),
            validate_certs=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    result = {"changed": False, "answers": []}
    result["ready"], problem = wait_ready(params)
    if problem:
        module.fail_json(msg="the node is %s" % problem, **result)
    result["answers"], problem = run_requests(params["proxy_url"], params["smoke_requests"], params["timeout"],
                                              params["validate_certs"])
    if problem:
        module.fail_json(msg=problem, **result)
    if params["metrics_url"]:
        result["metrics_counted"], result["metrics_status"] = metrics_counted(params)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
