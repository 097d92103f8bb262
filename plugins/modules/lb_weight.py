#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lb_weight
short_description: Set and read the split of traffic between Kong X and Y servers on a load balancer
version_added: 1.0.0
description:
  - Reads the servers of one HAProxy backend (runtime API) or one NGINX upstream (include file) and sets
    their weights and admin states, changing only what differs.
  - Takes explicit per-server weights (O(weights)), or two pools (O(x_servers), O(y_servers)) and the share
    of traffic for Y (O(y_percent)), from which it computes per-server weights so the share is right
    whatever the pool sizes.
  - Drains servers (O(drain)) and waits until their current sessions reach zero, within O(drain_timeout).
    A server that is already drained, in maintenance, or down is not waited on. NGINX cannot count sessions per
    server; there the module waits until the workers that served before the reload have finished their
    requests (needs O(nginx_pidfile)).
  - A server or backend that does not exist is an error, raised before anything changes.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
options:
  driver:
    description:
      - V(haproxy) uses the runtime API on an admin-level socket; weights apply at once and survive reloads
        through the server-state file.
      - V(nginx) rewrites the upstream include file, validates it with C(nginx -t) and reloads gracefully.
        Open-source NGINX has no weight 0, so a server with weight 0 is written C(down).
    type: str
    choices: [haproxy, nginx]
    required: true
  haproxy_socket:
    description:
      - Admin-level runtime API socket, a UNIX socket path or C(tcp:HOST:PORT).
      - Required with O(driver=haproxy).
    type: str
  backend:
    description:
      - HAProxy backend name.
    type: str
    default: kong_proxy
  haproxy_state_file:
    description:
      - HAProxy C(server-state-file). After a change, the runtime state is dumped there so a reload keeps it.
    type: path
  nginx_upstream_file:
    description:
      - Path of the NGINX include file holding the C(server) lines of the upstream.
      - A C(server) line is named by a trailing C(# <name>) comment, or by its address.
      - Required with O(driver=nginx).
    type: path
  nginx_binary:
    description:
      - The C(nginx) executable used for C(nginx -t) and C(nginx -s reload).
    type: path
    default: nginx
  nginx_conf:
    description:
      - The main NGINX configuration file (C(-c)), when not the default.
    type: path
  nginx_prefix:
    description:
      - The NGINX prefix (C(-p)), when not the default.
    type: path
  nginx_error_log:
    description:
      - The error log NGINX uses while it tests and reloads the configuration (C(-e), NGINX 1.19.5+), when not the
        compiled-in default (which an unprivileged user often cannot write).
    type: path
  nginx_pidfile:
    description:
      - The NGINX master's pid file (the C(pid) directive). With it, after each reload the module waits until the
        master serves with new workers only (a reload NGINX could not apply leaves the old workers and the old
        weights in place although C(nginx -s reload) succeeds), and O(drain) waits until the old workers have
        finished their requests. Reads C(/proc), so Linux only.
      - Without it, the module does not confirm reloads and cannot wait for a drain.
    type: path
  weights:
    description:
      - Explicit weights per server name. Mutually exclusive with O(y_percent).
    type: dict
  x_servers:
    description:
      - Server names of the old cluster X.
    type: list
    elements: str
    default: []
  y_servers:
    description:
      - Server names of the new cluster Y.
    type: list
    elements: str
    default: []
  y_percent:
    description:
      - Share of traffic for Y, from 0 to 100. Needs O(x_servers) and O(y_servers).
    type: float
  max_weight:
    description:
      - Largest per-server weight used when computing weights from O(y_percent).
      - HAProxy accepts up to 256; the module allows up to 1000 for NGINX.
    type: int
    default: 100
  ready:
    description:
      - Servers to put back in normal operation (admin state C(ready)).
    type: list
    elements: str
    default: []
  drain:
    description:
      - Servers to drain. HAProxy keeps health checks and sends them no new traffic; NGINX marks them C(down)
        and lets old workers finish.
    type: list
    elements: str
    default: []
  maint:
    description:
      - Servers to put in maintenance (no traffic, no checks).
    type: list
    elements: str
    default: []
  drain_timeout:
    description:
      - Seconds to wait for drained servers to reach zero current sessions (NGINX, for the old workers to finish).
        V(0) does not wait.
    type: float
    default: 60
attributes:
  check_mode:
    support: full
    details:
      - The current weights and states are read; the changes are computed and returned, not applied.
  diff_mode:
    support: full
notes:
  - HAProxy static balance algorithms accept only 0% and 100% weights; the module stops with a message naming
    the algorithm to use instead.
"""

EXAMPLES = r"""
- name: Send 10 % of traffic to cluster Y
  kongops.upgrade.lb_weight:
    driver: haproxy
    haproxy_socket: /run/haproxy/admin.sock
    backend: kong_proxy
    x_servers: [x1, x2, x3]
    y_servers: [y1, y2]
    y_percent: 10

- name: Drain the old nodes and wait until their sessions end
  kongops.upgrade.lb_weight:
    driver: haproxy
    haproxy_socket: /run/haproxy/admin.sock
    drain: [x1, x2, x3]
    drain_timeout: 120

- name: Explicit weights on NGINX
  kongops.upgrade.lb_weight:
    driver: nginx
    nginx_upstream_file: /etc/nginx/conf.d/upstream_kong.conf
    nginx_pidfile: /run/nginx.pid
    weights:
      x1: 0
      y1: 100
"""

RETURN = r"""
servers:
  description:
    - Every server of the backend after the change (predicted in check mode), by server name.
    - Each has C(address), C(weight) (the effective weight, 0 for a server in maintenance or marked C(down)),
      C(admin_state) (C(ready), C(maint) or C(drain)), C(up) (its health checks pass; always true with NGINX,
      which has no active checks) and C(sessions) (current sessions; NGINX reports none, so 0).
    - HAProxy servers also have C(initial_weight), the weight the configuration gives (C(srv_iweight)).
    - NGINX servers also have C(configured_weight), the C(weight=) of the server line, kept while the server is C(down).
  returned: always
  type: dict
  sample: {"x1": {"address": "127.0.1.1:8000", "weight": 90, "initial_weight": 100, "admin_state": "ready", "up": true,
                  "sessions": 3}}
servers_before:
  description: Every server of the backend before the change, with the keys of RV(servers).
  returned: always
  type: dict
  sample: {"x1": {"address": "127.0.1.1:8000", "weight": 100, "initial_weight": 100, "admin_state": "ready", "up": true, "sessions": 3},
           "y1": {"address": "127.0.2.1:8000", "weight": 0, "initial_weight": 0, "admin_state": "ready", "up": true, "sessions": 0}}
changes:
  description: What was (or would be) changed, per server.
  returned: always
  type: dict
  sample: {"y1": {"weight": 10}}
y_share:
  description: Y's share in percent of the weight of servers that are ready and up, when O(y_servers) is given.
  returned: when O(y_servers) is given
  type: float
  sample: 10.0
requested_y_percent:
  description: The requested share, when O(y_percent) is given.
  returned: when O(y_percent) is given
  type: float
  sample: 10.0
drained_after_seconds:
  description:
    - Seconds waited for drained servers to reach zero sessions (NGINX, for its old workers to finish).
    - 0 when every server of O(drain) was already drained, in maintenance or down.
    - Absent when O(drain_timeout=0) (nothing is waited for).
  returned: when O(drain) is given, O(drain_timeout) is above 0 and not in check mode
  type: float
  sample: 4.6
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._lb import (
    HaproxyDriver,
    LbError,
    NginxDriver,
    compute_pool_weights,
    effective_share,
    wait_drained,
)


def _nginx_normalize(want, current):
    """NGINX has one way to send a server nothing: `down`, read back as weight 0 in maint."""
    if want.get("admin_state") == "ready" and "weight" not in want and current["weight"] == 0:
        want["weight"] = max(1, current.get("configured_weight", 1))
    if want.get("admin_state") in ("drain", "maint"):
        want["admin_state"] = "maint"
        want["weight"] = 0
    elif "weight" in want and "admin_state" not in want:
        want["admin_state"] = "ready" if want["weight"] > 0 else "maint"
    elif want.get("admin_state") == "ready" and want.get("weight") == 0:
        want["admin_state"] = "maint"


def _desired_changes(params, current, kind="haproxy"):
    """Validate names and compute {server: {weight?, admin_state?}} that differ from ``current``."""
    wanted = {}
    named = set(params["x_servers"]) | set(params["y_servers"]) | set(params["ready"]) | set(params["drain"]) \
        | set(params["maint"]) | set((params["weights"] or {}).keys())
    unknown = sorted(n for n in named if n not in current)
    if unknown:
        raise LbError("no server named %s in the load balancer (it has: %s); nothing was changed"
                      % (", ".join(unknown), ", ".join(sorted(current))))
    for group in ("ready", "drain", "maint"):
        for other in ("ready", "drain", "maint"):
            if group < other and set(params[group]) & set(params[other]):
                raise LbError("servers %s are listed in both %s and %s"
                              % (", ".join(sorted(set(params[group]) & set(params[other]))), group, other))
    if params["weights"]:
        for name, weight in params["weights"].items():
            try:
                weight = int(weight)
            except (TypeError, ValueError):
                raise LbError("weight of %s must be an integer, got %r" % (name, weight)) from None
            wanted.setdefault(name, {})["weight"] = weight
    if params["y_percent"] is not None:
        wx, wy, _share = compute_pool_weights(len(params["x_servers"]), len(params["y_servers"]),
                                              params["y_percent"], params["max_weight"])
        for name in params["x_servers"]:
            wanted.setdefault(name, {})["weight"] = wx
        for name in params["y_servers"]:
            wanted.setdefault(name, {})["weight"] = wy
    for state in ("ready", "drain", "maint"):
        for name in params[state]:
            wanted.setdefault(name, {})["admin_state"] = state
    changes = {}
    for name, want in wanted.items():
        if kind == "nginx":
            _nginx_normalize(want, current[name])
        diff = {key: value for key, value in want.items() if current[name].get(key) != value}
        if diff:
            changes[name] = diff
    return changes


def _render(servers):
    return "".join("%s weight=%d %s%s\n" % (name, srv["weight"], srv["admin_state"], "" if srv.get("up", True) else " DOWN")
                   for name, srv in sorted(servers.items()))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            driver=dict(type="str", choices=["haproxy", "nginx"], required=True),
            haproxy_socket=dict(type="str"),
            backend=dict(type="str", default="kong_proxy"),
            haproxy_state_file=dict(type="path"),
            nginx_upstream_file=dict(type="path"),
            nginx_binary=dict(type="path", default="nginx"),
            nginx_conf=dict(type="path"),
            nginx_prefix=dict(type="path"),
            nginx_error_log=dict(type="path"),
            nginx_pidfile=dict(type="path"),
            weights=dict(type="dict"),
            x_servers=dict(type="list", elements="str", default=[]),
            y_servers=dict(type="list", elements="str", default=[]),
            y_percent=dict(type="float"),
            max_weight=dict(type="int", default=100),
            ready=dict(type="list", elements="str", default=[]),
            drain=dict(type="list", elements="str", default=[]),
            maint=dict(type="list", elements="str", default=[]),
            drain_timeout=dict(type="float", default=60),
        ),
        required_if=[("driver", "haproxy", ["haproxy_socket"]), ("driver", "nginx", ["nginx_upstream_file"])],
        mutually_exclusive=[("weights", "y_percent")],
        required_by={"y_percent": ("x_servers", "y_servers")},
        supports_check_mode=True,
    )
    params = module.params
    if params["driver"] == "haproxy":
        driver = HaproxyDriver(params["haproxy_socket"], params["backend"], params["haproxy_state_file"])
    else:
        driver = NginxDriver(module, params["nginx_upstream_file"], params["nginx_binary"], params["nginx_conf"],
                             params["nginx_prefix"], params["nginx_pidfile"], params["nginx_error_log"])
    if not 1 <= params["max_weight"] <= driver.max_weight:
        module.fail_json(msg="max_weight must be between 1 and %d for %s, got %d"
                         % (driver.max_weight, params["driver"], params["max_weight"]))
    try:
        before = driver.read()
        changes = _desired_changes(params, before, driver.kind)
        for name, change in changes.items():
            if "weight" in change and not 0 <= change["weight"] <= driver.max_weight:
                raise LbError("weight %d for %s is outside 0..%d (%s)"
                              % (change["weight"], name, driver.max_weight, params["driver"]))
        after = {name: dict(srv, **changes.get(name, {})) for name, srv in before.items()}
        result = {"changed": bool(changes), "changes": changes, "servers_before": before}
        if changes and not module.check_mode:
            driver.apply(changes)
            after = driver.read()
        if params["drain"] and not module.check_mode and params["drain_timeout"] > 0:
            to_wait = [n for n in params["drain"] if before[n]["admin_state"] == "ready" or n in changes]
            if to_wait and driver.kind == "nginx" and not params["nginx_pidfile"]:
                module.warn("nginx_pidfile is not set, so the drain of %s is not waited for: NGINX's old workers "
                            "may still be finishing requests to them" % ", ".join(to_wait))
            # Nothing newly drained: nothing to wait for (NGINX's old workers from an earlier reload are
            # not this run's drain).
            waited = wait_drained(driver, to_wait, params["drain_timeout"]) if to_wait else 0.0
            result["drained_after_seconds"] = round(waited, 2)
            after = driver.read()
    except LbError as exc:
        module.fail_json(msg=str(exc))
    result["servers"] = after
    if params["y_servers"]:
        result["y_share"] = effective_share(after, set(params["y_servers"]))
    if params["y_percent"] is not None:
        result["requested_y_percent"] = params["y_percent"]
    if module._diff:
        result["diff"] = {"before": _render(before), "after": _render(after)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
