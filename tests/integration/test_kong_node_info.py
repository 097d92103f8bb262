"""kong_node_info on real Kong: traditional X nodes (3.9.0, with a 3.9.1 binary for the mismatch), a DB-less
node, a hybrid 3.9.1 control plane and its 3.9.0 data planes, and a clear failure when the node is not the
expected version. Real data planes serve no Admin API: they are read through their status listener and
their prefix."""

from __future__ import annotations

import pytest
from ansible_runner import run_module, run_sequence
from itlab import http_request, lab_session, poll

X, Y = "3.9.0", "3.9.1"


def info_args(host, **extra):
    return {"admin_url": host["kong_admin_url"], "status_url": host["kong_status_url"], **extra}


def check_and_real(*many):
    """The module only reads: check mode and a real run give the same facts and change nothing.
    Returns the facts of each node (one playbook for all)."""
    results = run_sequence("kong_node_info", [(args, check) for args in many for check in (True, False)])
    facts = []
    for check, real in zip(results[::2], results[1::2]):
        for result in (check, real):
            assert not result.failed, result.get("msg")
            assert not result.changed
        assert stable(check["node"]) == stable(real["node"])
        facts.append(real["node"])
    return facts[0] if len(facts) == 1 else facts


def stable(node):
    """A node's facts without what moves between two reads (a data plane's last contact)."""
    moving = ("last_seen", "ttl", "updated_at")
    return {**node, "data_planes": [{k: v for k, v in dp.items() if k not in moving} for dp in node["data_planes"]]}


@pytest.fixture(scope="module")
def traditional():
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "1") as lab:
        yield lab


def test_x_nodes_report_version_mode_readiness_and_database(traditional):
    hosts = [traditional.host(name) for name in ("x1", "x2")]
    facts = check_and_real(*[info_args(host, kong_executable=host["kong_executable"], expected_version=X)
                             for host in hosts])
    for host, node in zip(hosts, facts):
        assert node["version"] == node["cli_version"] == X
        assert node["edition"] == "community"
        assert (node["mode"], node["role"], node["database"]) == ("traditional", "traditional", "postgres")
        assert node["database_reachable"] is True
        assert node["ready"] is True and node["ready_message"] == "ready"
        assert node["configuration_hash"] is None and node["data_planes"] == []
        _status, root = http_request(host["kong_admin_url"] + "/")
        assert node["node_id"] == root["node_id"]


def test_an_unexpected_version_fails_clearly(traditional):
    x1 = traditional.host("x1")
    wrong, binary = run_sequence("kong_node_info", [
        (info_args(x1, expected_version=Y), False),
        (info_args(x1, expected_version=X, kong_executable=traditional.host("y1")["kong_executable"]), False)])
    assert wrong.failed
    assert f"runs Kong {X}, expected {Y}" in wrong["msg"] and x1["kong_admin_url"] in wrong["msg"]
    assert wrong["node"]["version"] == X
    assert binary.failed and f"is Kong {Y}, expected {X}" in binary["msg"]


def test_a_node_that_does_not_answer_fails_clearly(traditional):
    y1 = traditional.host("y1")  # installed, never started
    result = run_module("kong_node_info", info_args(y1))
    assert result.failed and "cannot read the Kong node" in result["msg"] and y1["kong_admin_url"] in result["msg"]


@pytest.fixture(scope="module")
def dbless():
    with lab_session("--mode", "dbless", "--x-version", X, "--y-version", Y, "--x-nodes", "1",
                     "--y-nodes", "0") as lab:
        yield lab


def test_a_dbless_node_reports_its_configuration_hash(dbless):
    x1 = dbless.host("x1")
    node = check_and_real(info_args(x1, expected_version=X))
    assert (node["mode"], node["role"], node["database"]) == ("dbless", "traditional", "off")
    assert node["database_reachable"] is None  # no `database` in /status for DB-less nodes from 3.4
    _status, status = http_request(x1["kong_status_url"] + "/status")
    assert node["configuration_hash"] == status["configuration_hash"]
    assert len(node["configuration_hash"]) == 32 and node["configuration_hash"] != "0" * 32
    assert node["ready"] is True


@pytest.fixture(scope="module")
def hybrid():
    with lab_session("--mode", "hybrid", "--x-version", X, "--y-version", Y, "--x-nodes", "2",
                     "--y-nodes", "0") as lab:
        yield lab


def test_a_control_plane_lists_its_data_planes_in_sync(hybrid):
    cp = hybrid.hosts("kong_cp")["cp1"]
    # A data plane has no Admin API on real Kong: its status listener and its prefix only.
    dps = dict(zip(("x1", "x2"), check_and_real(*[
        {"status_url": hybrid.host(n)["kong_status_url"], "prefix": hybrid.host(n)["kong_prefix"], "expected_version": X}
        for n in ("x1", "x2")])))
    for node in dps.values():
        assert (node["mode"], node["role"], node["database"]) == ("hybrid", "data_plane", "off")
        assert node["configuration_hash"] and node["ready"] is True
        assert node["source"] == "status_api" and node["version"] == X

    def synced():
        node = check_and_real(info_args(cp, expected_version=Y))
        planes = {dp["id"]: dp for dp in node["data_planes"]}
        ok = len(planes) == 2 and all(dp["sync_status"] == "normal" for dp in planes.values())
        return node if ok else None

    node = poll(synced, 30, "both data planes listed in sync", interval=1.0)
    assert (node["mode"], node["role"], node["database"]) == ("hybrid", "control_plane", "postgres")
    assert node["database_reachable"] is True
    planes = {dp["id"]: dp for dp in node["data_planes"]}
    for dp_node in dps.values():
        plane = planes[dp_node["node_id"]]
        assert plane["version"] == X
        assert plane["config_hash"] == dp_node["configuration_hash"]
        assert plane["last_seen"] > 0
