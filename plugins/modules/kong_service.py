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
  - For nodes managed by systemd, use M(ansible.builtin.systemd_service) instead; the collection's roles
    choose with C(kong_upgrade_process_manager).
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.kong_node
options:
  state:
    description:
      - V(started) starts the node when it does not run.
      - V(stopped) stops it when it runs; gracefully (C(kong quit)) unless O(graceful=false).
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
running:
  description: Whether the node runs now (predicted in check mode).
  returned: always
  type: bool
commands:
  description: The commands that ran, with their output.
  returned: always
  type: list
  elements: dict
duration_seconds:
  description: How long the command took.
  returned: when a command ran
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import KONG_NODE_ARGSPEC, KongCli, KongCliError


def is_running(cli):
    result = cli.run(["health"], with_conf=False)
    return result.rc == 0, result


def main():
    argument_spec = dict(KONG_NODE_ARGSPEC)
    argument_spec.update(
        state=dict(type="str", choices=["started", "stopped", "restarted", "reloaded"], required=True),
        graceful=dict(type="bool", default=True),
        quit_timeout=dict(type="int", default=10),
        quit_wait=dict(type="int", default=0),
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
    if command is None or module.check_mode:
        result["running"] = predicted
        if command is not None:
            result["planned"] = "kong " + " ".join(command)
        module.exit_json(**result)
    started = time.time()
    with_conf = command[0] in ("start", "restart", "reload")
    outcome = cli.run(command, with_conf=with_conf, db_options=command[0] in ("start", "restart"))
    result["duration_seconds"] = round(time.time() - started, 3)
    result["commands"].append(outcome.as_dict())
    if outcome.rc != 0:
        module.fail_json(msg="`kong %s` failed for the node in %s (rc=%s): %s" % (
            command[0], params["prefix"], outcome.rc, outcome.error_line or outcome.stdout.strip()), **result)
    result["running"], _health = is_running(cli)
    if result["running"] != predicted:
        module.fail_json(msg="after `kong %s` the node in %s %s" % (
            command[0], params["prefix"], "does not run; see its logs/error.log" if predicted else "still runs"),
            **result)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
