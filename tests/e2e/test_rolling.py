"""Rolling upgrades end to end on real Kong 3.9.0 -> 3.9.1, under steady load through HAProxy:
DB-less nodes (no database reachable at all) and hybrid data planes (the control plane already on
3.9.1), faults before X is retired, and preflight refusals.

Real data planes serve no Admin API (Kong renders it only for the traditional and control_plane
roles) and every lab data plane connects from 127.0.0.1 with the machine's hostname, so the
control plane tells them apart by node id only: a node is read here through its status listener
(`/status`, and the version in its `Server` header), as the collection reads it."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.request

import pytest
import yaml
from ansible_runner import run_module
from e2e_helpers import (
    assert_reached_over_ssh_and_kong_unprivileged,
    fast_gate,
    pg_args,
    run_playbook,
    run_under_load,
    y_overload_fault,
)
from labfixtures import running_lab

from labctl.load import LoadGenerator

X, Y = "3.9.0", "3.9.1"
NODES = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")
MODES = {
    "dbless": ("--mode", "dbless"),
    "data_plane": ("--mode", "hybrid", "--cp-version", Y),
}


def _status(host):
    """(the node's /status document, the Kong version its Server header names), or (None, None)
    when the status listener does not answer."""
    try:
        with urllib.request.urlopen(host["kong_status_url"] + "/status", timeout=3) as response:  # noqa: S310 (lab URL)
            match = re.search(r"kong/(\S+)", response.headers.get("Server", ""))
            return json.loads(response.read()), match.group(1) if match else None
    except OSError:
        return None, None


def _version(host):
    return _status(host)[1]


def _configuration_hash(host):
    return _status(host)[0]["configuration_hash"]


def _report(lab):
    return json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())


def _data_planes(lab):
    with urllib.request.urlopen(lab.host("cp1")["kong_admin_url"] + "/clustering/data-planes",  # noqa: S310 (lab URL)
                                timeout=3) as response:
        return json.loads(response.read())["data"]


@contextlib.contextmanager
def _error_logs_on_failure(lab):
    """On a failed assertion, print the end of every node's error log (the lab removes them)."""
    try:
        yield
    except AssertionError:
        for log in sorted((lab.run_dir / "nodes").glob("*/logs/error.log")):
            lines = log.read_text(errors="replace").splitlines()
            print(f"--- {log.relative_to(lab.run_dir)} (last 40 of {len(lines)} lines)", *lines[-40:], sep="\n")
        raise


def _assert_on_x_only(lab):
    """All traffic on X, every X node serving X, every Y node stopped."""
    after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
    assert after["failed"] == 0 and set(after["ok_by_version"]) == {X}, after["by_version"]
    for name, host in lab.hosts("kong_x").items():
        assert _version(host) == X, name
    for name, host in lab.hosts("kong_y").items():
        assert _version(host) is None, f"{name} still runs after the rollback"


# The hybrid case is extended (left out of `make test`, second cut): the DB-less case takes the same
# batches and gates over SSH; hybrid rolling batches stay in make test through the fault
# y_returns_5xx_at_10_percent below and test_rolling_preflight_refuses_a_control_plane_older_than_y_and_a_wrong_mode.
@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.extended) if m == "data_plane" else m
                                  for m in sorted(MODES)])
def test_rolling_upgrade_serves_every_request_keeps_the_configuration_and_is_idempotent(mode, tmp_path):
    # Hybrid also stops before retiring X (kong_upgrade_finalize=false, an approval step); then a run
    # that retires X is interrupted after x1 stopped, and the next run resumes there.
    # DB-less runs over SSH, as the unprivileged user that runs Kong (the LB host becomes root).
    hybrid = mode == "data_plane"
    connection = "local" if hybrid else "ssh"
    with running_lab(*NODES, *MODES[mode], "--connection", connection, kong="real") as lab, \
            _error_logs_on_failure(lab):
        hash_before = {_configuration_hash(host) for host in lab.hosts("kong_x").values()}
        assert len(hash_before) == 1
        if hybrid:
            # What the control plane lists: one row per data plane, told apart by node id only.
            rows = _data_planes(lab)
            assert len({dp["id"] for dp in rows}) == 2 and len({(dp["ip"], dp["hostname"]) for dp in rows}) == 1, rows
        # As a play's `serial` takes it: half of the 2 Y nodes is one node per batch.
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode=mode, kong_upgrade_rolling_batch_size="50%")
        if not hybrid:
            # DB-less needs no database: a run that tried to reach one would fail on this port.
            extra["kong_upgrade_pg_port"] = 1
        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            first = run_playbook("upgrade_rolling", lab.inventory_path, dict(extra, kong_upgrade_finalize=not hybrid),
                                 tmp_path)
            report = first_report = _report(lab)
            if hybrid:
                assert first.rc == 0, first.explain()
                assert report["stopped_before_point_of_no_return"] is True and report["freeze_lifted"] is False
                for name, host in lab.hosts("kong_x").items():
                    assert _version(host) == X, f"{name} was retired before the approval"
                x1 = lab.host("x1")
                subprocess.run([x1["kong_executable"], "quit", "-p", x1["kong_prefix"]], check=True,
                               capture_output=True, timeout=60)
                resumed = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        finally:
            load.stop()
        summary = load.summary()
        print(f"rolling {mode} on real Kong: {summary['requests']} requests, {summary['failed']} failed, by version "
              f"{summary['ok_by_version']}")
        assert first.rc == 0, first.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert summary["requests"] > 1000
        assert summary["ok_by_version"].get(Y, 0) > 0, summary["by_version"]

        # One Y node per batch (50 % of 2): batch 1 takes Y to 50 % through the gated 10 and 25 % steps.
        assert [b["nodes"] for b in report["batches"]] == [["y1"], ["y2"]]
        assert [[s["percent"] for s in b["steps"]] for b in report["batches"]] == [[10, 25, 50], [100]]
        assert [step["verdict"] for step in report["traffic_steps"]] == ["pass"] * 4
        assert (lab.run_dir / "reports" / f"kong-{X}-to-{Y}.md").is_file()
        if hybrid:
            assert resumed.rc == 0, resumed.explain()
            report = _report(lab)
            # The resumed run goes on retiring X (x2) and thaws; traffic never moved back.
            assert "a previous run stopped past the point of no return (1 of 2 X nodes still run" in resumed.stdout
            assert report["traffic_steps"] == [] and report["status"] == "succeeded"

        for name, host in lab.hosts("kong_y").items():
            assert _version(host) == Y, name
            assert {_configuration_hash(host)} == hash_before, name
        for name, host in lab.hosts("kong_x").items():
            assert _version(host) is None, f"{name} still answers after it was retired"
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {Y}, after["by_version"]
        if connection == "ssh":
            assert_reached_over_ssh_and_kong_unprivileged(lab)

        assert report["status"] == "succeeded" and report["strategy"] == "rolling"
        assert set(report["configuration_hash"]["y_nodes"].values()) == hash_before
        assert report["fingerprints"]["verified"]["hash"] == first_report["fingerprints"]["at_freeze"]["hash"]
        assert {first_report["configuration_hash"]["at_freeze"]} == hash_before
        assert first_report["backup"]["checksum"]
        if hybrid:
            assert report["freeze_lifted"] is True
            assert run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"] is False
            # The control plane lists the Y data planes (by the node ids in their prefixes) in sync.
            y_ids = {(lab.run_dir / "nodes" / name / "kong.id").read_text().strip() for name in lab.hosts("kong_y")}
            y_rows = [dp for dp in _data_planes(lab) if dp["id"] in y_ids]
            assert {dp["version"] for dp in y_rows} == {Y} and len(y_rows) == 2, y_rows
            assert {dp["sync_status"] for dp in y_rows} == {"normal"}
            assert {dp["config_hash"] for dp in y_rows} == hash_before

        second = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert second.rc == 0, second.explain()
        assert second.changed == 0, second.explain()


FAULTS = {
    # DB-less: y1 cannot start, its proxy_listen is an address x1 holds (nginx: Address already in use).
    "y_fails_to_start": ("dbless", lambda lab: {"kong_upgrade_y_conf_overrides": {
        "proxy_listen": lab.host("x1")["kong_proxy_listen"]}}, "batch 1: start_y"),
    # Hybrid: y1 serves the frozen configuration but not what the operator's smoke test expects.
    "smoke_test_fails": ("data_plane", lambda lab: {"kong_upgrade_smoke_requests": [{"path": "/", "status": [418]}]},
                         "batch 1: smoke_test"),
    # Hybrid: y1's proxy has a request limit (Kong's injected nginx directives) that the smoke test
    # stays under and the load of its 10 % step does not: Kong itself answers 503.
    "y_returns_5xx_at_10_percent": ("data_plane", lambda lab: {"kong_upgrade_y_conf_overrides": y_overload_fault()},
                                    "batch 1: shift_traffic"),
}
# Left out of `make test` (marker extended; `make test-all` runs it): a failing smoke test comes
# before Y gets traffic and takes the rollback of a Y that fails to start.
EXTENDED_FAULTS = {"smoke_test_fails"}


# A team's own play over the control node alone that includes the role: the nodes are not hosts of
# the play, so the control node runs every node step by delegation (kongops.upgrade.node_items).
TEAM_PLAY = """\
- name: Our Kong upgrade, from the control node alone
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Upgrade the gateways with the rolling strategy
      ansible.builtin.include_role:
        name: kongops.upgrade.rolling
"""


@pytest.mark.parametrize("fault", [pytest.param(f, marks=pytest.mark.extended) if f in EXTENDED_FAULTS else f
                                   for f in sorted(FAULTS)])
def test_rolling_failure_before_x_is_retired_returns_traffic_to_x(fault, tmp_path):
    mode, extra_vars, phase = FAULTS[fault]
    with running_lab(*NODES, *MODES[mode], kong="real") as lab:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode=mode, **extra_vars(lab))
        playbook = "upgrade_rolling"
        if fault == "y_fails_to_start":
            # Also the role embedded in a team's play over the control node alone (the other faults: our
            # playbook, whose play holds the nodes): a node's failure is found and rolled back either way.
            playbook = tmp_path / "team_upgrade.yml"
            playbook.write_text(TEAM_PLAY, encoding="utf-8")
        run, summary = run_under_load(lab, str(playbook), extra, tmp_path)
        print(f"rolling fault {fault} on real Kong: {summary['requests']} requests, {summary['failed']} failed "
              f"{summary['failed_by_reason']}")

        assert run.rc != 0, run.explain()
        assert f"The rolling upgrade failed in phase '{phase}'" in run.stdout, run.explain()
        assert "Fix the cause and run the playbook again" in run.stdout
        if fault == "y_returns_5xx_at_10_percent":
            # Only Kong's own 503s failed, and only while y1 had its 10 % share.
            assert set(summary["failed_by_reason"]) <= {"http_503"}, summary["failed_by_reason"]
            assert 0 < summary["failed"] < 0.1 * summary["requests"]
        else:
            assert summary["failed"] == 0, summary["failed_by_reason"]
        if fault == "y_fails_to_start":
            assert "Address already in use" in run.stdout, run.explain()

        _assert_on_x_only(lab)
        report = _report(lab)
        assert report["status"] == "failed, rolled back to X"
        assert report["failure"]["phase"] == phase
        assert report["rollback"]["traffic_on_x"] is True and report["rollback"]["y_stopped"] is True
        if mode == "data_plane":
            assert report["rollback"]["thawed"] is True
            assert run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"] is False


# extended (left out of `make test`, second cut): same-host rolling (each host upgraded in place behind the LB); the batches, gates and
# rollback of rolling are taken by the other cases of this file.
@pytest.mark.extended
def test_rolling_same_host_restores_x_on_a_failed_host_and_resumes(tmp_path):
    # DB-less, each host upgraded in place behind HAProxy (Y's kong installed beside X's, the same
    # prefix and ports). x2's Y cannot start (a wrapper in front of Y's kong refuses `start`): x1
    # stays on Y, x2 gets X back; a run without the fault resumes.
    with running_lab(*NODES, *MODES["dbless"], kong="real") as lab:
        y_kong = lab.host("y1")["kong_executable"]
        wrapper = tmp_path / "kong-that-cannot-start"
        wrapper.write_text('#!/bin/sh\nif [ "$1" = start ]; then\n'
                           '  echo "Error: injected fault: cannot start" >&2; exit 1\nfi\n'
                           f'exec {y_kong} "$@"\n')
        wrapper.chmod(0o755)
        original = lab.inventory_path.read_text()
        faulty = yaml.safe_load(original)
        faulty["all"]["children"]["kong_x"]["hosts"]["x2"]["kong_y_executable"] = str(wrapper)
        lab.inventory_path.write_text(yaml.safe_dump(faulty))
        hash_before = {_configuration_hash(host) for host in lab.hosts("kong_x").values()}
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="dbless", kong_upgrade_rolling_same_host=True,
                     kong_upgrade_rolling_y_executable=y_kong)

        # In-place on DB-less nodes (kong_upgrade_mode left at traditional): refused from the nodes' own mode.
        in_place = run_playbook("upgrade_in_place", lab.inventory_path, fast_gate(lab.run_dir), tmp_path)
        assert in_place.rc != 0 and in_place.changed == 0, in_place.explain()
        assert ("kong_upgrade_mode is traditional, but x1 runs dbless" in in_place.stdout
                and "use the rolling strategy" in in_place.stdout), in_place.explain()

        failed, summary = run_under_load(lab, "upgrade_rolling", extra, tmp_path)
        print(f"rolling same-host on real Kong, x2 fails: {summary['requests']} requests, {summary['failed']} failed")
        assert failed.rc != 0, failed.explain()
        assert "The rolling upgrade (same-host) failed in phase 'batch 2: start_y'" in failed.stdout, failed.explain()
        assert "X started again on x2" in failed.stdout and "stay on Y: x1" in failed.stdout, failed.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert _version(lab.host("x1")) == Y
        assert _version(lab.host("x2")) == X
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {X, Y}, after["by_version"]
        report = _report(lab)
        assert report["status"] == "failed, rolled back to X"
        assert report["rollback"]["hosts_restored_to_x"] == ["x2"] and report["rollback"]["x_serving_again"] is True

        # Fixed: the run resumes with x2 only (x1 already runs Y) and completes.
        lab.inventory_path.write_text(original)
        resumed, summary = run_under_load(lab, "upgrade_rolling", extra, tmp_path)
        print(f"rolling same-host on real Kong, resumed: {summary['requests']} requests, {summary['failed']} failed")
        assert resumed.rc == 0, resumed.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        for name, host in lab.hosts("kong_x").items():
            assert _version(host) == Y, name
            assert {_configuration_hash(host)} == hash_before, name
        report = _report(lab)
        assert report["status"] == "succeeded"
        assert [b["nodes"] for b in report["batches"]] == [["x2"]]
        assert {report["configuration_hash"]["at_freeze"]} == hash_before

        again = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert again.rc == 0, again.explain()
        assert again.changed == 0, again.explain()


def test_rolling_preflight_refuses_a_control_plane_older_than_y_and_a_wrong_mode(tmp_path):
    # Data planes 3.4.2 under a 3.4.2 control plane, Y 3.9.1: the control plane would reject 3.9
    # data planes (a newer minor). The path 3.4 -> 3.9 is allowed here so that only the skew refuses.
    with running_lab("--x-version", "3.4.2", "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2",
                     "--mode", "hybrid", "--cp-version", "3.4.2", kong="real") as lab:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="data_plane", kong_upgrade_allow_unsupported_path=True)
        skew = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert skew.rc != 0 and skew.changed == 0, skew.explain()
        assert (f"data plane version {Y} is incompatible with older control plane version 3.4.2" in skew.stdout
                and "Upgrade the control plane first" in skew.stdout), skew.explain()

        extra["kong_upgrade_mode"] = "dbless"
        wrong = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert wrong.rc != 0 and wrong.changed == 0, wrong.explain()
        assert "kong_upgrade_mode is dbless, but x1 runs data_plane, x2 runs data_plane" in wrong.stdout, wrong.explain()

        # The strategy of traditional nodes on data planes: the nodes' own mode refuses it before any backup.
        dual = run_playbook("upgrade_dual_cluster", lab.inventory_path,
                            dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=True), tmp_path)
        assert dual.rc != 0 and dual.changed == 0, dual.explain()
        assert ("kong_upgrade_mode is traditional, but x1 runs data_plane" in dual.stdout
                and "use the rolling strategy" in dual.stdout), dual.explain()

        # Nothing changed: no freeze, no Y node, X serves everything.
        assert run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"] is False
        for name, host in lab.hosts("kong_y").items():
            assert _version(host) is None, name
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=2, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {"3.4.2"}, after["by_version"]
