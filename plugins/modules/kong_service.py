#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kong_service
short_description: Start, gracefully stop, restart or reload one Kong node with its own CLI
version_added: 1.0.0
description:
  - Reads whether the node runs with C(kong health) (its prefix) and runs C(kong start), C(kong quit)
    (graceful, the default) or C(kong stop), C(kong restart) or C(kong reload) only when needed.
  - A started node is judged by its readiness, never by the exit code of C(kong start) alone (its nginx workers
    may die at once while C(kong start) still prints C(Kong started) and exits 0). With O(status_url) or
    O(admin_url), the module waits until the node answers C(GET /status/ready) with 200 (Kong 3.3+) or, on
    versions without that endpoint, C(GET /status) on its Admin API; a failure says what the node's error log says.
  - For nodes managed by systemd, use M(ansible.builtin.systemd_service) instead; the collection's roles
    choose with C(kong_upgrade_process_manager).
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.smoke_requests
  - kongops.upgrade.kong_node
options:
  state:
    description:
      - V(started) starts the node when it does not run.
      - V(stopped) stops it when it runs; gracefully (C(kong quit)) unless O(graceful=false). The module then waits
        until the node's nginx master has exited, up to 10 s more, because C(kong quit) returns once the PID file is gone,
        and C(kong stop) once it sent the signal, both before nginx closes its listening sockets and exits.
      - V(restarted) always restarts it (C(kong restart)).
      - V(reloaded) reloads a running node (C(kong reload)); fails when it does not run.
    type: str
    choices: [started, stopped, restarted, reloaded]
    required: true
  graceful:
    description:
      - Stop with C(kong quit) (stop accepting, finish in-flight requests) rather than C(kong stop).
    type: bool
    default: true
  quit_timeout:
    description:
      - Seconds C(kong quit) lets in-flight requests finish before it stops the node forcefully (C(-t)).
    type: int
    default: 10
  quit_wait:
    description:
      - Seconds C(kong quit) waits before it starts to quit (C(-w)), for load balancers to notice.
    type: int
    default: 0
  admin_url:
    description:
      - The node's Admin API, to judge a started node by C(GET /status) where O(status_url) is not given or the
        version has no C(/status/ready).
    type: str
  status_url:
    description:
      - The node's Status API, to judge a started node by C(GET /status/ready) (Kong 3.3+).
      - Without O(admin_url) and O(status_url), a started node is judged by C(kong health) only.
    type: str
  admin_token:
    description:
      - Sent as the C(Kong-Admin-Token) header to the Admin API.
    type: str
  validate_certs:
    description:
      - Verify TLS certificates of O(admin_url) and O(status_url).
    type: bool
    default: true
  ready_timeout:
    description:
      - Seconds a started node may take to become ready. The wait ends at once when the node's error log says its
        workers cannot be respawned.
    type: int
    default: 60
  smoke_proxy_url:
    description:
      - The node's proxy, as the node reaches it. With O(state=started) or O(state=restarted), once the node is
        ready, every request in O(smoke_requests) is sent to it directly, and a status code not expected fails the
        module (the node is left running). A node is so smoke-tested as soon as it is ready, in the run that started it.
    type: str
attributes:
  check_mode:
    support: full
    details:
      - Whether the node runs is read with C(kong health); the command that would run is returned.
  diff_mode:
    support: full
    details:
      - The diff shows whether the node runs before and after.
"""

EXAMPLES = r"""
- name: Start a new node
  kongops.upgrade.kong_service:
    kong_executable: /usr/local/bin/kong
    conf: /etc/kong/kong.conf
    prefix: /usr/local/kong
    state: started

- name: Quit an old node gracefully, giving requests 30 s
  kongops.upgrade.kong_service:
    kong_executable: /usr/local/bin/kong
    prefix: /usr/local/kong
    state: stopped
    quit_timeout: 30
"""

RETURN = r"""
running_before:
  description: Whether the node ran before.
  returned: always
  type: bool
  sample: false
running:
  description: Whether the node runs now (predicted in check mode).
  returned: always
  type: bool
  sample: true
planned:
  description: In check mode, the kong command a real run would run.
  returned: in check mode, when a command would run
  type: str
  sample: kong start
commands:
  description: The commands that ran, with their output.
  returned: always
  type: list
  elements: dict
  sample: [{"cmd": "/usr/local/bin/kong start -c /etc/kong/kong.conf -p /usr/local/kong --lock-timeout 60", "rc": 0,
            "stdout_lines": ["Kong started"], "stderr_lines": []}]
duration_seconds:
  description: How long the command took.
  returned: when a command ran
  type: float
  sample: 3.274
exit_wait_seconds:
  description: How long the stopped node's nginx master took to exit after the stop command returned.
  returned: when O(state=stopped) stopped a node whose PID file named its nginx master
  type: float
  sample: 0.021
stopped_answering_epoch:
  description:
    - When the stopped node's proxy stopped accepting connections (seconds since the epoch, the node's clock),
      watched while the stop command ran; the command's end when that was not seen.
    - Clients lose the node at this moment, not when the command was launched or returned.
  returned: when O(state=stopped) stopped a node whose prefix names its C(proxy_listen)
  type: float
  sample: 1796371200.125
ready:
  description: How the started node was judged ready (the URL that answered, after how many seconds).
  returned: when O(state=started) or O(state=restarted) and O(admin_url) or O(status_url) is given
  type: dict
  sample: {"url": "http://127.0.0.1:8007/status/ready", "seconds": 1.4}
smoke:
  description: Each smoke request sent once the node was ready, with the status code that came back.
  returned: when O(smoke_proxy_url) is given and the node was judged ready (not in check mode)
  type: list
  elements: dict
  sample: [{"method": "GET", "path": "/echo", "status": 200, "passed": true}]
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._admin_api import AdminApiError, KongHttp
from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import (
    KONG_NODE_ARGSPEC,
    KongCli,
    KongCliError,
    ListenWatch,
    error_log_path,
    error_log_problems,
    proxy_endpoints,
    read_conf_file,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._proc import pid_running, start_time
from ansible_collections.kongops.upgrade.plugins.module_utils._smoke import SMOKE_REQUEST_OPTIONS, run_requests

# How long a stopped node's nginx master may take to exit once `kong quit` or `kong stop` returned.
EXIT_GRACE_SECONDS = 10


def is_running(cli):
    result = cli.run(["health"], with_conf=False)
    return result.rc == 0, result


def nginx_master(prefix):
    """(pid, start time) of the nginx master named by ``<prefix>/pids/nginx.pid``, or None."""
    try:
        with open(os.path.join(prefix, "pids", "nginx.pid")) as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit() or int(text) <= 0:
        return None
    pid = int(text)
    return pid, start_time(pid)[0]


def wait_exit(master, grace):
    """Seconds the master took to exit, or None when it still runs after ``grace`` seconds."""
    started = time.time()
    while pid_running(*master):
        if time.time() - started >= grace:
            return None
        time.sleep(0.05)
    return round(time.time() - started, 3)


def log_size(path):
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def read_log(path, offset):
    """What the error log got since ``offset`` (its last 64 KiB when it was rotated or is new)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(offset if 0 <= offset <= size else max(0, size - 65536))
            return handle.read()[-65536:].decode("utf-8", "replace")
    except OSError:
        return ""


def probe(admin, status, data_plane=False):
    """(ready, what was seen): /status/ready on the Status API, else /status on the Admin API (or on the
    Status API, which serves it too, for a version without /status/ready such as 2.8). A data plane is
    ready only once its control plane sent it a configuration; that it answers is enough here (the
    rolling strategy waits for its sync with its own timeout and message)."""
    if status is not None:
        try:
            response = status.request("GET", "/status/ready")
        except AdminApiError as exc:
            return False, str(exc)
        if response.status == 200 or (data_plane and response.status == 503):
            return True, "%s/status/ready" % status.base_url
        if response.status != 404:
            body = response.json()
            message = body.get("message") if isinstance(body, dict) else None
            detail = ": %s" % message if message else ""
            return False, "%s/status/ready answered %s%s" % (status.base_url, response.status, detail)
    api = admin if admin is not None else status
    try:
        response = api.request("GET", "/status")
    except AdminApiError as exc:
        return False, str(exc)
    if response.status == 200:
        return True, "%s/status" % api.base_url
    return False, "%s/status answered %s" % (api.base_url, response.status)


def wait_ready(module, cli, log_path, log_offset):
    """Wait until the node is ready; fail with what its error log says when it does not become ready."""
    params = module.params
    admin = status = None
    if params["admin_url"]:
        admin = KongHttp(params["admin_url"], params["admin_token"], params["validate_certs"], timeout=3)
    if params["status_url"]:
        status = KongHttp(params["status_url"], None, params["validate_certs"], timeout=3)
    data_plane = (read_conf_file(params["conf"]).get("role") or "") == "data_plane"
    started = time.time()
    deadline = started + params["ready_timeout"]
    while True:
        ready, seen = probe(admin, status, data_plane)
        if ready:
            return {"url": seen, "seconds": round(time.time() - started, 3)}
        problems, fatal = error_log_problems(read_log(log_path, log_offset))
        if fatal or time.time() >= deadline:
            break
        time.sleep(0.5)
    running, _health = is_running(cli)
    log_text = ("its error log %s says: %s" % (log_path, " | ".join(problems)) if problems
                else "its error log %s has no error since the start" % log_path if log_path
                else "it has no error log file to read (proxy_error_log)")
    return {"failed": True, "msg": "the node in %s is not ready after `kong %s` (which exited 0) within %s s: %s; "
            "the nginx master %s; %s"
            % (params["prefix"], "start" if params["state"] == "started" else "restart",
               round(time.time() - started, 1), seen, "still runs (its workers do not serve)" if running
               else "is gone", log_text)}


def smoke_test(module, result):
    """A ready node: the smoke requests to its proxy, failing the module (the node left running) on an answer
    not expected."""
    params = module.params
    if not params["smoke_proxy_url"] or params["state"] not in ("started", "restarted"):
        return
    result["smoke"], problem = run_requests(params["smoke_proxy_url"], params["smoke_requests"],
                                            validate_certs=params["validate_certs"])
    if problem:
        module.fail_json(msg="the node in %s is ready but fails its smoke test: %s" % (params["prefix"], problem), **result)


def main():
    argument_spec = dict(KONG_NODE_ARGSPEC)
    argument_spec.update(
        state=dict(type="str", choices=["started", "stopped", "restarted", "reloaded"], required=True),
        graceful=dict(type="bool", default=True),
        quit_timeout=dict(type="int", default=10),
        quit_wait=dict(type="int", default=0),
        admin_url=dict(type="str"),
        status_url=dict(type="str"),
        admin_token=dict(type="str", no_log=True),
        validate_certs=dict(type="bool", default=True),
        ready_timeout=dict(type="int", default=60),
        smoke_proxy_url=dict(type="str"),
        smoke_requests=dict(type="list", elements="dict", default=[], options=SMOKE_REQUEST_OPTIONS),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "started", ["conf"]), ("state", "restarted", ["conf"])])
    params = module.params
    if not params["prefix"]:
        module.fail_json(msg="prefix is required: `kong health`, `kong quit` and `kong stop` find a node by its prefix")
    cli = KongCli.from_params(module)
    try:
        cli.check_inputs()
    except KongCliError as exc:
        module.fail_json(msg=str(exc))
    running, _health = is_running(cli)
    state = params["state"]
    command = None
    if state == "started" and not running:
        command = ["start"]
    elif state == "stopped" and running:
        command = ["quit", "-t", str(params["quit_timeout"]), "-w", str(params["quit_wait"])] if params["graceful"] \
            else ["stop"]
    elif state == "restarted":
        command = ["restart"]
    elif state == "reloaded":
        if not running:
            module.fail_json(msg="cannot reload the node in %s: it does not run; use state=started" % params["prefix"])
        command = ["reload"]
    result = {"changed": command is not None, "running_before": running, "commands": []}
    predicted = running if command is None else state != "stopped"
    result["diff"] = {"before": "running: %s\n" % running, "after": "running: %s\n" % predicted}
    if command is None and state == "started" and not module.check_mode and (params["admin_url"] or params["status_url"]):
        # Already running: still judged by its readiness (a master whose workers died answers `kong health`).
        log_path = error_log_path(read_conf_file(params["conf"]), params["prefix"])
        result["ready"] = wait_ready(module, cli, log_path, max(0, log_size(log_path) - 65536))
        if result["ready"].get("failed"):
            module.fail_json(msg=result["ready"].pop("msg"), **result)
        smoke_test(module, result)
    if command is None or module.check_mode:
        result["running"] = predicted
        if command is not None:
            result["planned"] = "kong " + " ".join(command)
        module.exit_json(**result)
    judge_ready = state in ("started", "restarted") and bool(params["admin_url"] or params["status_url"])
    log_path = error_log_path(read_conf_file(params["conf"]), params["prefix"]) if judge_ready else None
    log_offset = log_size(log_path)
    started = time.time()
    with_conf = command[0] in ("start", "restart", "reload")
    # Stopping: when the proxy stopped accepting (clients lose the node then, not when the command ends).
    watched = proxy_endpoints(params["prefix"]) if state == "stopped" else []
    master = nginx_master(params["prefix"]) if state == "stopped" else None
    with ListenWatch(watched) as watch:
        outcome = cli.run(command, with_conf=with_conf, db_options=command[0] in ("start", "restart"))
    result["duration_seconds"] = round(time.time() - started, 3)
    if watched:
        result["stopped_answering_epoch"] = watch.stopped_at if watch.stopped_at is not None else time.time()
    result["commands"].append(outcome.as_dict())
    if outcome.rc != 0:
        module.fail_json(msg="`kong %s` failed for the node in %s (rc=%s): %s" % (
            command[0], params["prefix"], outcome.rc, outcome.error_line or outcome.stdout.strip()), **result)
    if master is not None:
        # `kong quit` returns when the PID file is gone and `kong stop` when the signal is sent; nginx
        # closes its listening sockets after that. Stopped means exited, so that a node started next
        # on the same ports (in-place) finds them free.
        waited = wait_exit(master, EXIT_GRACE_SECONDS)
        if waited is None:
            module.fail_json(msg="after `kong %s` (rc=0) the nginx master (pid %s) of the node in %s still runs %s s "
                             "later; see its logs/error.log" % (command[0], master[0], params["prefix"],
                                                                EXIT_GRACE_SECONDS), **result)
        result["exit_wait_seconds"] = waited
    result["running"], _health = is_running(cli)
    if result["running"] != predicted:
        module.fail_json(msg="after `kong %s` the node in %s %s" % (
            command[0], params["prefix"], "does not run; see its logs/error.log" if predicted else "still runs"),
            **result)
    if judge_ready:
        result["ready"] = wait_ready(module, cli, log_path, log_offset)
        if result["ready"].get("failed"):
            module.fail_json(msg=result["ready"].pop("msg"), **result)
        smoke_test(module, result)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
