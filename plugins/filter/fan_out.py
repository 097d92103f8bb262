# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that let one node step run on every node at once, whatever the shape of the play.

A strategy's orchestration runs once, on the control node (``run_once``); a node step runs as one
task over the play's hosts. In a play over the control node and the node groups (our playbooks),
each node runs its own item, so Ansible's forks run the step on every node at once. In a play over
the control node alone (a team's own play that includes our role), the control node runs every
item by delegation, one after the other, as before. ``node_items`` says which items a host runs,
``fan_in`` gathers what every host registered, ``failure`` finds what failed wherever it failed.
``step_hosts`` names the hosts a phase that concerns a few nodes is included for (the play's first
host and those nodes), so its tasks cost the control node nothing for the other hosts.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from jinja2.runtime import Undefined


def _names(value, what):
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise AnsibleFilterError("%s expects a list of host names, got %s" % (what, type(value).__name__))
    return [str(name) for name in value]


def node_items(nodes, host, play_hosts):
    """The nodes ``host`` works on in a node step: itself when it is one of ``nodes`` and a host of
    the play; and, on the play's first host (the one ``run_once`` runs on), every node of ``nodes``
    that is not a host of the play, reached by delegation."""
    nodes = _names(nodes, "node_items")
    play_hosts = _names(play_hosts, "node_items (play hosts)")
    host = str(host)
    items = [host] if host in nodes and host in play_hosts else []
    if play_hosts and host == play_hosts[0]:
        items.extend(node for node in nodes if node not in play_hosts and node not in items)
    return items


def step_hosts(nodes, play_hosts):
    """The hosts of the play that a phase concerning ``nodes`` is included for: the play's first
    host (it runs the phase's run_once tasks and the items of nodes outside the play), then every
    node of ``nodes`` that is a host of the play, in the play's order. Pass it to node_items and
    fan_in inside the phase in place of the play's hosts."""
    nodes = set(_names(nodes, "step_hosts"))
    play_hosts = _names(play_hosts, "step_hosts (play hosts)")
    return [host for index, host in enumerate(play_hosts) if index == 0 or host in nodes]


def _get(container, key, default=None):
    try:
        value = container[key]
    except (KeyError, TypeError, AttributeError):
        return default
    return default if isinstance(value, Undefined) else value


def fan_in(name, hostvars, play_hosts, order=None, loop_var="kong_upgrade_item"):
    """Every item result that the play's hosts registered under ``name`` in a node step (each host
    registers the items it ran, see node_items): in the order of ``order`` (the step's nodes) by
    each result's ``loop_var``, else in the order of the play's hosts."""
    if not isinstance(name, str):
        raise AnsibleFilterError("fan_in expects the name of a registered variable, got %s" % type(name).__name__)
    results = []
    for host in _names(play_hosts, "fan_in (play hosts)"):
        registered = _get(_get(hostvars, host, {}), name)
        if isinstance(registered, Mapping):
            results.extend(_get(registered, "results", None) or [])
    if order is not None:
        rank = {node: index for index, node in enumerate(_names(order, "fan_in (order)"))}
        results.sort(key=lambda result: rank.get(str(_get(result, loop_var, "")), len(rank)))
    return results


def _message(result):
    if not isinstance(result, Mapping):
        return "no message"
    failed_items = [item for item in (_get(result, "results", None) or [])
                    if isinstance(item, Mapping) and _get(item, "failed")]
    messages = []
    for item in failed_items:
        message = str(_get(item, "msg", "failed"))
        if message not in messages:
            messages.append(message)
    if messages:
        return "; ".join(messages)
    return str(_get(result, "msg", None) or _get(result, "reason", None) or "no message")


def failure(here, hostvars, play_hosts):
    """What failed, for a rescue: ``here`` is ``{'task': ansible_failed_task, 'result':
    ansible_failed_result}`` of the host running the rescue (None when it did not fail itself); a
    node step that failed on a node sets them on that node only, so the play's hosts are searched.
    Returns ``{'task': name or None, 'message': text, 'host': host or None}``; task None when
    nothing failed (a recovery)."""
    task = _get(here, "task")
    result = _get(here, "result")
    host = None
    if task is None:
        for name in _names(play_hosts, "failure (play hosts)"):
            vars_of = _get(hostvars, name, {})
            found = _get(vars_of, "ansible_failed_task")
            if found is not None:
                task, result, host = found, _get(vars_of, "ansible_failed_result"), name
                break
    if task is None:
        return {"task": None, "message": "no message", "host": None}
    return {"task": str(_get(task, "name", None) or "unknown task"), "message": _message(result), "host": host}


class FilterModule:
    """Node steps over the play's hosts."""

    def filters(self):
        return {"node_items": node_items, "fan_in": fan_in, "failure": failure, "step_hosts": step_hosts}
