"""The filters behind node steps over the play's hosts (plugins/filter/fan_out.py): which items each
host runs in either shape of play, gathering what every host registered, finding a failure on the
node it happened on. The playbook-level behaviour is covered by the e2e tests."""

import pytest
from ansible.errors import AnsibleFilterError
from jinja2.runtime import Undefined

from ansible_collections.kongops.upgrade.plugins.filter.fan_out import failure, fan_in, node_items, step_hosts

NODES = ["y1", "y2", "y3"]


def test_in_a_play_over_the_nodes_each_node_runs_its_own_item_and_the_control_node_none():
    play = ["localhost", "x1", "y1", "y2", "y3"]
    assert node_items(NODES, "localhost", play) == []
    assert [node_items(NODES, host, play) for host in NODES] == [["y1"], ["y2"], ["y3"]]
    assert node_items(NODES, "x1", play) == []


def test_in_a_play_over_the_control_node_alone_it_runs_every_item():
    assert node_items(NODES, "localhost", ["localhost"]) == NODES


def test_nodes_left_out_of_the_play_are_run_by_its_first_host():
    play = ["localhost", "y1"]
    assert node_items(NODES, "localhost", play) == ["y2", "y3"]
    assert node_items(NODES, "y1", play) == ["y1"]
    # A play over the nodes alone: the first node runs its own item and those of the nodes left out.
    assert node_items(NODES, "y2", ["y2", "y3"]) == ["y2", "y1"]
    assert node_items([], "localhost", ["localhost"]) == []
    assert node_items(None, "localhost", ["localhost"]) == []


def test_a_string_for_a_list_of_nodes_is_refused():
    with pytest.raises(AnsibleFilterError, match="expects a list of host names"):
        node_items("y1,y2", "localhost", ["localhost"])


def test_fan_in_gathers_each_hosts_results_in_play_order():
    hostvars = {
        "localhost": {"reg": {"results": [], "skipped": True}},
        "y1": {"reg": {"results": [{"item": "y1", "rc": 0}]}},
        "y2": {"reg": {"results": [{"item": "y2", "rc": 1}]}},
        "y3": {"reg": {"skipped": True}},  # skipped by a condition: no results
        "y4": {"reg": Undefined()},
    }
    assert fan_in("reg", hostvars, ["localhost", "y1", "y2", "y3", "y4", "gone"]) == \
        [{"item": "y1", "rc": 0}, {"item": "y2", "rc": 1}]
    with pytest.raises(AnsibleFilterError):
        fan_in(None, hostvars, ["y1"])


def test_failure_is_found_on_the_node_it_happened_on():
    here = {"task": None, "result": None}
    hostvars = {
        "localhost": {"ansible_failed_task": Undefined()},
        "y1": {},
        "y2": {"ansible_failed_task": {"name": "Start Y"},
               "ansible_failed_result": {"results": [{"item": "y2", "failed": True, "msg": "port taken"},
                                                     {"item": "y2b", "failed": True, "msg": "port taken"},
                                                     {"item": "y3", "failed": False}]}},
    }
    assert failure(here, hostvars, ["localhost", "y1", "y2"]) == \
        {"task": "Start Y", "message": "port taken", "host": "y2"}


def test_failure_on_the_rescuing_host_wins_and_none_means_nothing_failed():
    here = {"task": {"name": "Shift traffic"}, "result": {"msg": "gate failed"}}
    assert failure(here, {}, ["localhost"]) == {"task": "Shift traffic", "message": "gate failed", "host": None}
    assert failure({"task": {"name": ""}, "result": {"reason": "unreachable"}}, {}, [])["task"] == "unknown task"
    assert failure({"task": None, "result": None}, {"localhost": {}}, ["localhost"]) == \
        {"task": None, "message": "no message", "host": None}
    assert failure({"task": {"name": "t"}, "result": {"msg": ""}}, {}, [])["message"] == "no message"


def test_fan_in_puts_the_results_in_the_order_of_the_steps_nodes():
    hostvars = {"y2": {"reg": {"results": [{"kong_upgrade_item": "y2"}]}},
                "localhost": {"reg": {"results": [{"kong_upgrade_item": "y3"}]}},
                "y1": {"reg": {"results": [{"kong_upgrade_item": "y1"}]}}}
    gathered = fan_in("reg", hostvars, ["y2", "localhost", "y1"], ["y1", "y2", "y3"])
    assert [result["kong_upgrade_item"] for result in gathered] == ["y1", "y2", "y3"]
    by_job = {"y1": {"reg": {"results": [{"kong_upgrade_job": "y1"}]}}}
    assert fan_in("reg", by_job, ["y1"], ["y1"], loop_var="kong_upgrade_job") == [{"kong_upgrade_job": "y1"}]


def test_step_hosts_are_the_first_host_and_the_phase_nodes_in_play_order():
    play = ["localhost", "x1", "x2", "y1", "y2", "y3"]
    assert step_hosts(["y3", "y1"], play) == ["localhost", "y1", "y3"]
    assert step_hosts([], play) == ["localhost"]
    assert step_hosts(["y9"], play) == ["localhost"]  # not a host of the play: the first host runs it
    assert step_hosts(["x1"], ["x1", "localhost"]) == ["x1"]


def test_inside_a_phase_every_node_item_runs_exactly_once():
    play = ["localhost", "x1", "x2", "y1", "y2", "y3"]
    for nodes in (["y1", "y2"], ["y1", "x2"], ["y3", "y9"], []):
        here = step_hosts(["y1", "y2"], play)
        ran = [item for host in here for item in node_items(nodes, host, here)]
        assert sorted(ran) == sorted(nodes), nodes  # nodes outside the phase fall to its first host


def test_step_hosts_refuses_a_string():
    with pytest.raises(AnsibleFilterError, match="list of host names"):
        step_hosts("y1", ["localhost", "y1"])
