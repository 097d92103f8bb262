"""Crash recovery of rolling upgrades: the run is killed in the middle of a batch (SIGKILL of
ansible-playbook and its workers, as a crash or a lost session would), with Y's first batch already
serving part of the traffic, and the same playbook is run again. Real Kong 3.9.0 -> 3.9.1, 2 X and
2 Y nodes (two batches of one) behind HAProxy, under 100 requests/s that run across the killed run,
the re-run and a further run; labs as in test_rolling.py.

Every case asserts: 0 failed requests across the kill and both runs; the re-run says which run died
in which phase and that it resumes the shift where it was, and completes; every Y node serves the
configuration X served before (hybrid: the control plane's entities are all there and its freeze is
lifted); the report says `succeeded`; the further run changes nothing. Same-host mode is not
covered here (its batches stop and start X's own hosts; test_rolling.py covers its resume after a
failed host).
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import pytest
from ansible_runner import run_module
from e2e_helpers import entity_ids, fast_gate, lb_y_share, pg_args, run_playbook, run_playbook_killed_when, said
from labfixtures import running_lab

from labctl.load import LoadGenerator

X, Y = "3.9.0", "3.9.1"
NODES = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")


def _status(host):
    """(the node's /status document, the Kong version its Server header names), or (None, None)
    when its status listener does not answer (a data plane serves no Admin API)."""
    try:
        with urllib.request.urlopen(host["kong_status_url"] + "/status", timeout=3) as response:  # noqa: S310 (lab URL)
            match = re.search(r"kong/(\S+)", response.headers.get("Server", ""))
            return json.loads(response.read()), match.group(1) if match else None
    except OSError:
        return None, None


def _crash_and_resume(lab, extra, tmp_path, kill_at=None, kill_when=None, what=""):
    """Under one steady load: the rolling playbook killed (at phase ``kill_at`` by the hook, or when
    ``kill_when()`` returns something truthy), then run again, then once more. Returns the phase of
    the dead run's record, Y's share when it died, the three runs and the load summary."""
    times = [time.monotonic()]
    load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
    try:
        if kill_at:
            killed = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path,
                                  env={"KONGOPS_TEST_KILL_AT_PHASE": kill_at})
        else:
            killed, _seen = run_playbook_killed_when("upgrade_rolling", lab.inventory_path, extra, tmp_path,
                                                     kill_when, what=what)
        assert killed.rc == -signal.SIGKILL, killed.explain()
        record = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.state.json").read_text())
        assert record["ended"] is False, record
        y_share = lb_y_share(lab)
        times.append(time.monotonic())
        resumed = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        times.append(time.monotonic())
        settled = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        times.append(time.monotonic())
    finally:
        load.stop()
    summary = load.summary()
    print(f"rolling {extra['kong_upgrade_mode']} killed in {record['phase']!r} (Y share {y_share} %): "
          f"{summary['requests']} requests, {summary['failed']} failed, by version {summary['ok_by_version']}; "
          f"killed run, re-run, further run: {', '.join(f'{b - a:.0f} s' for a, b in zip(times, times[1:], strict=False))}")
    print("the re-run said:", *said(resumed, "ended without finishing", "a previous run stopped past the point of no return",
                                    "resumes the traffic shift"), sep="\n  ")
    return record["phase"], y_share, killed, resumed, settled, summary


def _assert_converged(lab, phase, y_share, resumed, settled, summary, hash_before):
    assert resumed.rc == 0, resumed.explain()
    assert f"ended without finishing, in phase '{phase}'" in resumed.stdout, resumed.explain()
    if y_share < 100.0:
        assert f"then it resumes the traffic shift at {y_share} %" in resumed.stdout, resumed.explain()
    assert summary["failed"] == 0, summary["failed_by_reason"]
    assert summary["ok_by_version"].get(Y, 0) > 0, summary["by_version"]
    for name, host in lab.hosts("kong_y").items():
        status, version = _status(host)
        assert version == Y and status["configuration_hash"] == hash_before, (name, version, status)
    for name, host in lab.hosts("kong_x").items():
        assert _status(host)[1] is None, f"{name} still answers after it was retired"
    after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
    assert after["failed"] == 0 and set(after["ok_by_version"]) == {Y}, after["by_version"]
    report = json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())
    assert report["status"] == "succeeded", report["status"]
    assert set(report["configuration_hash"]["y_nodes"].values()) == {hash_before}
    if y_share < 100.0:
        # The step in flight when the run died is judged again; the steps below it are not repeated.
        steps = [step["percent"] for step in report["traffic_steps"]]
        assert steps[0] == y_share and steps[-1] == 100.0 and all(
            step["verdict"] == "pass" for step in report["traffic_steps"]), report["traffic_steps"]
    assert settled.rc == 0 and settled.changed == 0, settled.explain()
    return report


# extended (left out of `make test`, second cut): a rolling run resumed in its second batch; test_rolling.py's hybrid case resumes a run
# interrupted while X is retired, and test_crash_recovery_traffic.py a run killed mid-shift.
@pytest.mark.extended
def test_dbless_killed_in_the_second_batch_resumes_the_shift(tmp_path):
    began = time.monotonic()
    with running_lab(*NODES, "--mode", "dbless", kong="real") as lab:
        hash_before = {_status(host)[0]["configuration_hash"] for host in lab.hosts("kong_x").values()}
        assert len(hash_before) == 1
        # DB-less needs no database: a run that tried to reach one would fail on this port.
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="dbless", kong_upgrade_pg_port=1)
        phase, y_share, _killed, resumed, settled, summary = _crash_and_resume(
            lab, extra, tmp_path, kill_at="batch 2: shift_traffic")
        # y1 serves half the traffic (batch 1 done), y2 runs without traffic yet.
        assert phase == "batch 2: shift_traffic" and y_share == 50.0, (phase, y_share)
        _assert_converged(lab, phase, y_share, resumed, settled, summary, hash_before.pop())
    print(f"rolling DB-less killed at 'batch 2: shift_traffic': {time.monotonic() - began:.0f} s")


# extended (left out of `make test`): a run resumed past the point of no return while X is retired is
# test_crash_recovery_traffic.py's test_blue_green_killed_while_x_is_retired_goes_on_retiring_x_then_finishes.
@pytest.mark.extended
def test_dbless_killed_while_x_is_retired_resumes_past_the_point_of_no_return(tmp_path):
    began = time.monotonic()
    with running_lab(*NODES, "--mode", "dbless", kong="real") as lab:
        hash_before = {_status(host)[0]["configuration_hash"] for host in lab.hosts("kong_x").values()}
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="dbless", kong_upgrade_pg_port=1)
        phase, y_share, _killed, resumed, settled, summary = _crash_and_resume(lab, extra, tmp_path,
                                                                               kill_at="decommission_x")
        # Killed once it went past the point of no return, before the first X node was drained.
        assert phase == "decommission_x" and y_share == 100.0, (phase, y_share)
        assert ("Y serves all traffic and a previous run stopped past the point of no return (in phase decommission_x "
                "by its record; 2 of 2 X nodes still run") in resumed.stdout, resumed.explain()
        report = _assert_converged(lab, phase, y_share, resumed, settled, summary, hash_before.pop())
        # No gate again, nothing moved back: the configuration proved on Y, X retired.
        assert report["traffic_steps"] == [] and report["rollback"] is None, report
        assert [step["phase"] for step in report["phases"] if step["phase"] != "preflight"] == \
            ["verify_config", "decommission_x", "decommission_x"], report["phases"]
    print(f"rolling DB-less killed at 'decommission_x': {time.monotonic() - began:.0f} s")


# extended (left out of `make test`): a rolling run resumed in its second batch is
# test_dbless_killed_in_the_second_batch_resumes_the_shift; the hybrid upgrade itself is test_rolling.py's.
@pytest.mark.extended
def test_hybrid_killed_while_the_second_batch_starts_resumes_the_shift(tmp_path):
    began = time.monotonic()
    with running_lab(*NODES, "--mode", "hybrid", "--cp-version", Y, kong="real") as lab:
        hash_before = {_status(host)[0]["configuration_hash"] for host in lab.hosts("kong_x").values()}
        assert len(hash_before) == 1
        entities_before = entity_ids(lab)
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="data_plane")
        y2 = lab.host("y2")
        # Killed from outside as soon as y2 (batch 2) answers: it runs, not yet checked in sync nor
        # smoke-tested, while y1 has half the traffic.
        phase, y_share, _killed, resumed, settled, summary = _crash_and_resume(
            lab, extra, tmp_path, kill_when=lambda: _status(y2)[1] == Y, what="y2 answers")
        assert phase == "batch 2: start_y" and y_share == 50.0, (phase, y_share)
        _assert_converged(lab, phase, y_share, resumed, settled, summary, hash_before.pop())
        assert entity_ids(lab) == entities_before, "an entity of the control plane was lost or added"
        freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
        assert not freeze.failed and freeze["frozen"] is False, freeze
    print(f"rolling hybrid killed in 'batch 2: start_y': {time.monotonic() - began:.0f} s")
