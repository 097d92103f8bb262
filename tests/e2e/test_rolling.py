"""Rolling upgrades end to end on the lab, under steady load through HAProxy: DB-less nodes and
hybrid data planes (the control plane already on Y), and faults before X is retired."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
import yaml
from ansible_runner import run_module
from e2e_helpers import admin_version, fast_gate, inject_proxy_5xx, pg_args, run_playbook, run_under_load
from labfixtures import running_lab

from labctl.load import LoadGenerator

X, Y = "3.9.1", "3.10.0"
NODES = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")
MODES = {
    "dbless": ("--mode", "dbless"),
    "data_plane": ("--mode", "hybrid", "--cp-version", Y),
}


def _configuration_hash(host):
    with urllib.request.urlopen(host["kong_admin_url"] + "/status", timeout=3) as response:  # noqa: S310 (lab URL)
        return json.loads(response.read())["configuration_hash"]


def _report(lab):
    return json.loads((lab.run_dir / "reports" / f"kong-{X}-to-{Y}.json").read_text())


@pytest.mark.parametrize("mode", sorted(MODES))
def test_rolling_upgrade_serves_every_request_keeps_the_configuration_and_is_idempotent(mode, tmp_path):
    # Hybrid also stops before retiring X (kong_upgrade_finalize=false, an approval step); then a run
    # that retires X is interrupted after x1 stopped, and the next run resumes there.
    hybrid = mode == "data_plane"
    with running_lab(*NODES, *MODES[mode]) as lab:
        hash_before = {_configuration_hash(host) for host in lab.hosts("kong_x").values()}
        assert len(hash_before) == 1
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode=mode)
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
                    assert admin_version(host["kong_admin_url"]) == X, f"{name} was retired before the approval"
                x1 = lab.host("x1")
                subprocess.run([x1["kong_executable"], "quit", "-p", x1["kong_prefix"]], check=True,
                               capture_output=True, timeout=60)
                resumed = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        finally:
            load.stop()
        summary = load.summary()
        print(f"rolling {mode}: {summary['requests']} requests, {summary['failed']} failed, by version "
              f"{summary['ok_by_version']}")
        assert first.rc == 0, first.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert summary["requests"] > 1000
        assert summary["ok_by_version"].get(Y, 0) > 0, summary["by_version"]

        # One Y node per batch: batch 1 takes Y to 50 % through the gated 10 and 25 % steps.
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
            assert admin_version(host["kong_admin_url"]) == Y, name
            assert {_configuration_hash(host)} == hash_before, name
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still answers after it was retired"
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {Y}, after["by_version"]

        assert report["status"] == "succeeded" and report["strategy"] == "rolling"
        assert set(report["configuration_hash"]["y_nodes"].values()) == hash_before
        assert report["fingerprints"]["verified"]["hash"] == first_report["fingerprints"]["at_freeze"]["hash"]
        assert {first_report["configuration_hash"]["at_freeze"]} == hash_before
        assert first_report["backup"]["checksum"]
        if hybrid:
            assert report["freeze_lifted"] is True
            assert run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"] is False
            listed = json.loads(urllib.request.urlopen(  # noqa: S310 (lab URL)
                lab.host("cp1")["kong_admin_url"] + "/clustering/data-planes", timeout=3).read())["data"]
            y_rows = [dp for dp in listed if dp["version"] == Y]
            assert len(y_rows) == 2 and {dp["sync_status"] for dp in y_rows} == {"normal"}
            assert {dp["config_hash"] for dp in y_rows} == hash_before

        second = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert second.rc == 0, second.explain()
        assert second.changed == 0, second.explain()


FAULTS = {
    # DB-less: y1 cannot start (its proxy_listen is an address x1 holds): y1 never gets traffic.
    "y_fails_to_start": ("dbless", False, lambda lab: {"kong_upgrade_y_conf_overrides": {
        "proxy_listen": lab.host("x1")["kong_proxy_listen"]}}, "batch 1: start_y"),
    # Hybrid: y1 serves the frozen configuration but not what the operator's smoke test expects.
    "smoke_test_fails": ("data_plane", False, lambda lab: {"kong_upgrade_smoke_requests": [{"path": "/", "status": [418]}]},
                         "batch 1: smoke_test"),
    # Hybrid: y1 answers 5xx for half its requests once it gets its 10 % (emulator faults file).
    "y_returns_5xx_at_10_percent": ("data_plane", True, lambda lab: {}, "batch 1: shift_traffic"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_rolling_failure_before_x_is_retired_returns_traffic_to_x(fault, tmp_path):
    mode, answers_5xx, extra_vars, phase = FAULTS[fault]
    with running_lab(*NODES, *MODES[mode]) as lab:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode=mode, **extra_vars(lab))
        if answers_5xx:
            inject_proxy_5xx(lab, "kong_y")
        run, summary = run_under_load(lab, "upgrade_rolling", extra, tmp_path)
        print(f"rolling fault {fault}: {summary['requests']} requests, {summary['failed']} failed "
              f"{summary['failed_by_reason']}")

        assert run.rc != 0, run.explain()
        assert f"The rolling upgrade failed in phase '{phase}'" in run.stdout, run.explain()
        assert "Fix the cause and run the playbook again" in run.stdout
        if answers_5xx:
            # Only the injected answers failed, and only while y1 had its 10 % share.
            assert set(summary["failed_by_reason"]) <= {"http_503"}, summary["failed_by_reason"]
            assert 0 < summary["failed"] < 0.1 * summary["requests"]
        else:
            assert summary["failed"] == 0, summary["failed_by_reason"]

        # All traffic on X, the Y nodes stopped, X serving, the freeze lifted (hybrid).
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {X}, after["by_version"]
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == X, name
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still runs after the rollback"
        report = _report(lab)
        assert report["status"] == "failed, rolled back to X"
        assert report["failure"]["phase"] == phase
        assert report["rollback"]["traffic_on_x"] is True and report["rollback"]["y_stopped"] is True
        if mode == "data_plane":
            assert report["rollback"]["thawed"] is True
            assert run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"] is False


def test_rolling_same_host_restores_x_on_a_failed_host_and_resumes(tmp_path):
    # DB-less, each host upgraded in place behind HAProxy. x2's Y cannot start (a wrapper in front
    # of Y's kong refuses `start`): x1 stays on Y, x2 gets X back; a run without the fault resumes.
    with running_lab(*NODES, *MODES["dbless"]) as lab:
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

        failed, summary = run_under_load(lab, "upgrade_rolling", extra, tmp_path)
        print(f"rolling same-host, x2 fails: {summary['requests']} requests, {summary['failed']} failed")
        assert failed.rc != 0, failed.explain()
        assert "The rolling upgrade (same-host) failed in phase 'batch 2: start_y'" in failed.stdout, failed.explain()
        assert "X started again on x2" in failed.stdout and "stay on Y: x1" in failed.stdout, failed.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert admin_version(lab.host("x1")["kong_admin_url"]) == Y
        assert admin_version(lab.host("x2")["kong_admin_url"]) == X
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {X, Y}, after["by_version"]
        report = _report(lab)
        assert report["status"] == "failed, rolled back to X"
        assert report["rollback"]["hosts_restored_to_x"] == ["x2"] and report["rollback"]["x_serving_again"] is True

        # Fixed: the run resumes with x2 only (x1 already runs Y) and completes.
        lab.inventory_path.write_text(original)
        resumed, summary = run_under_load(lab, "upgrade_rolling", extra, tmp_path)
        print(f"rolling same-host, resumed: {summary['requests']} requests, {summary['failed']} failed")
        assert resumed.rc == 0, resumed.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) == Y, name
            assert {_configuration_hash(host)} == hash_before, name
        report = _report(lab)
        assert report["status"] == "succeeded"
        assert [b["nodes"] for b in report["batches"]] == [["x2"]]
        assert {report["configuration_hash"]["at_freeze"]} == hash_before

        again = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert again.rc == 0, again.explain()
        assert again.changed == 0, again.explain()


def test_rolling_preflight_refuses_a_control_plane_older_than_y_and_a_wrong_mode(tmp_path):
    # The control plane still runs 3.9.1: it would reject 3.10.0 data planes (kong-facts 9.1).
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2",
                     "--mode", "hybrid", "--cp-version", X) as lab:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="data_plane")
        skew = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert skew.rc != 0 and skew.changed == 0, skew.explain()
        assert (f"data plane version {Y} is incompatible with older control plane version {X}" in skew.stdout
                and "Upgrade the control plane first" in skew.stdout), skew.explain()

        extra["kong_upgrade_mode"] = "dbless"
        wrong = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path)
        assert wrong.rc != 0 and wrong.changed == 0, wrong.explain()
        assert "x1 runs as mode hybrid, role data_plane, but kong_upgrade_mode is dbless" in wrong.stdout, wrong.explain()

        # Nothing changed: no freeze, no Y node, X serves everything.
        assert run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"] is False
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) is None, name
        after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=2, rate=100).run()
        assert after["failed"] == 0 and set(after["ok_by_version"]) == {X}, after["by_version"]
