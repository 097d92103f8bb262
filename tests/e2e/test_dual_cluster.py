"""Dual-cluster upgrades end to end on real Kong, under steady load through HAProxy or NGINX."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    admin_call,
    assert_reached_over_ssh_and_kong_unprivileged,
    assert_upgraded,
    echoed_headers,
    fast_gate,
    run_playbook,
    run_under_load,
)
from labfixtures import running_lab

# 3.4.2 -> 3.9.1 (LTS to latest) skips minors, which Kong does not guarantee: it needs the override.
# 2.8.5 -> 3.4.2 (LTS to LTS) crosses 3.0's migrations, which rewrite regex route paths to `~...`.
PAIRS = [("3.4.2", "3.9.1"), ("2.8.5", "3.4.2")]

# kong_upgrade_install_method=tasks: a user's install tasks file, included once per Y node. The lab
# has Y installed already, so this one only records each call (a test double for an installer).
INSTALL_TASKS = """\
- name: Record that Kong {{ kong_upgrade_y_version }} was installed on {{ kong_upgrade_install_host }}
  ansible.builtin.lineinfile:
    path: "{{ install_marker }}"
    line: "{{ kong_upgrade_install_host }} {{ kong_upgrade_y_version }}"
    create: true
    mode: "0600"
  delegate_to: "{{ kong_upgrade_install_host }}"
"""


def nonzero(counts):
    return {table: n for table, n in counts.items() if n}


@pytest.mark.parametrize("x_version, y_version", PAIRS, ids=[f"{x}-to-{y}" for x, y in PAIRS])
def test_dual_cluster_upgrade_serves_every_request_and_is_idempotent(x_version, y_version, tmp_path):
    # The older pair runs behind NGINX (weights in an upstream include, graceful reloads, gates on
    # the nodes' /metrics), the newer behind HAProxy (runtime API, gates on its counters).
    # The newer pair reaches its nodes and the LB over SSH, as the unprivileged user that runs Kong,
    # and installs Y with the package method: apt, through sudo, from the lab's repository of Kong
    # .debs (the older pair installs Y with a tasks file of the operator's).
    lb = "nginx" if x_version == "2.8.5" else "haproxy"
    ssh = lb == "haproxy"
    began = time.monotonic()
    with running_lab("--x-version", x_version, "--y-version", y_version, "--x-nodes", "2", "--y-nodes", "2",
                     "--lb", lb, *(("--connection", "ssh", "--y-install", "package") if ssh else ()),
                     kong="real") as lab:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=x_version == "3.4.2")
        marker = tmp_path / "installed.txt"
        if ssh:
            # Y is not installed: the package method installs kong=Y on every Y node.
            assert not Path(lab.host("y1")["kong_executable"]).exists()
            extra.update(kong_upgrade_install_method="package")
        if x_version == "2.8.5":
            (tmp_path / "install-kong.yml").write_text(INSTALL_TASKS)
            extra.update(kong_upgrade_install_method="tasks", kong_upgrade_install_tasks_file=str(tmp_path / "install-kong.yml"),
                         install_marker=str(marker))
        # X serves the seeded regex route (2.8: `/regex2/\d+$`, 3.x: `~/regex2/\d+$`) with its plugin.
        assert echoed_headers(lab.frontend, "/regex2/42").get("x-lab-route") == "svc2-regex"
        if lb == "nginx":
            # Behind NGINX the gate reads each node's answers from Kong's /metrics: the operator runs
            # the prometheus plugin on X (2.8 counts every answer by status code, kong_http_status).
            status, plugin = admin_call("POST", lab.host("x1")["kong_admin_url"] + "/plugins", {"name": "prometheus"})
            assert status == 201, plugin
            # Migrated to 3.4.2 that plugin counts nothing (status_code_metrics is off by default
            # since 3.0): the run stops at the smoke test, before Y gets any traffic, and says why.
            refused, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
            assert refused.rc != 0 and "failed in phase 'smoke_test'" in refused.stdout, refused.explain()
            assert "config.status_code_metrics = true" in refused.stdout, refused.explain()
            assert "kong_upgrade_y_status_code_metrics=true" in refused.stdout, refused.explain()
            assert summary["failed"] == 0 and set(summary["ok_by_version"]) == {x_version}, summary["by_version"]
            # With the setting, the collection turns it on in Y's database (only there) after the migrations.
            extra["kong_upgrade_y_status_code_metrics"] = True
            marker.unlink()  # the refused run installed Y too

        first, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        upgraded = time.monotonic()
        assert first.rc == 0, first.explain()
        assert_upgraded(lab, summary, y_version)
        if ssh:
            assert_reached_over_ssh_and_kong_unprivileged(lab)
            # The package apt installed: kong at exactly Y, its binary where Kong's packages put it,
            # and the Y nodes run that binary.
            package = subprocess.run(["dpkg-query", "-W", "-f", "${Version} ${db:Status-Status}", "kong"],
                                     capture_output=True, text=True, check=True).stdout
            assert package == f"{y_version} installed", package
            assert lab.host("y1")["kong_executable"] == "/usr/local/bin/kong"
            assert y_version in subprocess.run(["/usr/local/bin/kong", "version"], capture_output=True, text=True,
                                               check=True).stdout
            assert "Install Kong Y with apt, pinned to version Y" in first.stdout
        # Y serves the regex route with its plugin: on 2.8.5 -> 3.4.2, 3.0's migration rewrote its
        # path to `~/regex2/\d+$` in Y's database; without that, the root route would answer.
        served = echoed_headers(lab.frontend, "/regex2/42", via=True)
        assert served.get("x-lab-route") == "svc2-regex" and y_version in served["via"], served

        report = json.loads((lab.run_dir / "reports" / f"kong-{x_version}-to-{y_version}.json").read_text())
        assert (lab.run_dir / "reports" / f"kong-{x_version}-to-{y_version}.md").is_file()
        assert report["status"] == "succeeded"
        fingerprints = report["fingerprints"]
        assert fingerprints["at_freeze"]["keys_hash"] == fingerprints["compared_with_x"]["keys_hash"]
        # Y's migrated database holds every entity frozen on X (3.x adds empty tables, drops `ttls`).
        assert nonzero(fingerprints["verified"]["counts"]) == nonzero(fingerprints["at_freeze"]["counts"])
        assert report["freeze_lifted"] is True
        assert [step["verdict"] for step in report["traffic_steps"]] == ["pass"] * 4
        assert report["backup"]["checksum"]
        if lb == "nginx":
            status, plugin = admin_call("GET", lab.host("y1")["kong_admin_url"] + "/plugins/" + plugin["id"])
            assert status == 200 and plugin["config"]["status_code_metrics"] is True, plugin
        if x_version == "2.8.5":
            assert marker.read_text().splitlines() == [f"{name} {y_version}" for name in lab.hosts("kong_y")]

        second = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path)
        assert second.rc == 0, second.explain()
        assert second.changed == 0, second.explain()
        print(f"dual-cluster {x_version} -> {y_version} on real Kong behind {lb}: {summary['requests']} requests, "
              f"0 failed; upgrade {upgraded - began:.0f} s, with the second run {time.monotonic() - began:.0f} s")
    if ssh:
        # lab down removed what the package method installed from its repository, and the source.
        left = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "kong"], capture_output=True, text=True,
                              check=False).stdout
        assert left in ("", "not-installed", "config-files") and not Path("/usr/local/bin/kong").exists(), left
