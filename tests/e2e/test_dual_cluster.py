"""Dual-cluster upgrades end to end on the lab, under steady load through HAProxy or NGINX."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import admin_version, fast_gate, run_playbook, run_under_load
from labfixtures import running_lab

PAIRS = [("3.9.1", "3.10.0"), ("2.8.4", "3.4.3")]

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


@pytest.mark.parametrize("x_version, y_version", PAIRS, ids=[f"{x}-to-{y}" for x, y in PAIRS])
def test_dual_cluster_upgrade_serves_every_request_and_is_idempotent(x_version, y_version, tmp_path):
    # The older pair runs behind NGINX (weights in an upstream include, graceful reloads, gates on
    # the nodes' /metrics), the newer behind HAProxy (runtime API, gates on its counters).
    lb = "nginx" if x_version == "2.8.4" else "haproxy"
    with running_lab("--x-version", x_version, "--y-version", y_version, "--x-nodes", "2", "--y-nodes", "2", "--lb", lb) as lab:
        extra = fast_gate(lab.run_dir)
        marker = tmp_path / "installed.txt"
        if x_version == "2.8.4":
            (tmp_path / "install-kong.yml").write_text(INSTALL_TASKS)
            extra.update(kong_upgrade_install_method="tasks", kong_upgrade_install_tasks_file=str(tmp_path / "install-kong.yml"),
                         install_marker=str(marker))
        first, summary = run_under_load(lab, "upgrade_dual_cluster", extra, tmp_path)
        assert first.rc == 0, first.explain()
        assert summary["failed"] == 0, summary["failed_by_reason"]
        assert summary["requests"] > 1000
        assert summary["ok_by_version"].get(y_version, 0) > 0, summary["by_version"]

        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) == y_version, name
        for name, host in lab.hosts("kong_x").items():
            assert admin_version(host["kong_admin_url"]) is None, f"{name} still answers after decommission"

        report = json.loads((lab.run_dir / "reports" / f"kong-{x_version}-to-{y_version}.json").read_text())
        assert (lab.run_dir / "reports" / f"kong-{x_version}-to-{y_version}.md").is_file()
        assert report["status"] == "succeeded"
        fingerprints = report["fingerprints"]
        assert fingerprints["at_freeze"]["keys_hash"] == fingerprints["compared_with_x"]["keys_hash"]
        assert fingerprints["verified"]["counts"] == fingerprints["at_freeze"]["counts"]
        assert report["freeze_lifted"] is True
        assert [step["verdict"] for step in report["traffic_steps"]] == ["pass"] * 4
        assert report["backup"]["checksum"]
        if x_version == "2.8.4":
            assert marker.read_text().splitlines() == [f"{name} {y_version}" for name in lab.hosts("kong_y")]

        second = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, tmp_path)
        assert second.rc == 0, second.explain()
        assert second.changed == 0, second.explain()
