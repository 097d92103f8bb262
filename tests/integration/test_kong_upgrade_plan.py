"""kong_upgrade_plan through Ansible, four ways, for the upgrades the lab proves on real Kong (2.8.5 -> 3.4.2,
3.4.2 -> 3.9.1, 3.9.0 -> 3.9.1). The module only computes from two version strings: no Kong and no lab
are involved, so nothing here can run on real Kong; what it says about each path is checked against the
real upgrades in tests/e2e."""

from __future__ import annotations

from ansible_runner import four_ways, run_sequence


def plan(x, y, **extra):
    return {"x_version": x, "y_version": y, **extra}


def test_lts_to_lts_four_ways():
    real = four_ways("kong_upgrade_plan", plan("2.8.5", "3.4.2", strategy="dual_cluster"), expect_change=False)[1]
    assert real["path"]["supported"] and real["path"]["kind"] == "lts", real["path"]
    assert real["strategies"]["dual_cluster"]["allowed"] and real["recommended_strategy"] == "dual_cluster"
    assert not real["strategies"]["blue_green"]["allowed"]
    assert real["warnings_given"] == []


def test_a_patch_upgrade_allows_blue_green_four_ways():
    real = four_ways("kong_upgrade_plan", plan("3.9.0", "3.9.1", strategy="blue_green"), expect_change=False)[1]
    assert real["path"]["supported"] and real["path"]["kind"] == "patch", real["path"]
    assert real["strategies"]["blue_green"]["allowed"]


def test_an_undocumented_path_fails_unless_allowed_a_downgrade_always_and_a_newer_data_plane_is_refused():
    refused, allowed, allowed_check, down, forced, hybrid = run_sequence("kong_upgrade_plan", [
        (plan("3.4.2", "3.9.1", strategy="dual_cluster"), False),
        (plan("3.4.2", "3.9.1", strategy="dual_cluster", allow_unsupported_path=True), False),
        (plan("3.4.2", "3.9.1", strategy="dual_cluster", allow_unsupported_path=True), True),
        (plan("3.9.1", "3.4.2"), False),
        (plan("3.9.1", "3.4.2", allow_unsupported_path=True), False),
        (plan("3.9.0", "3.9.1", strategy="rolling", mode="data_plane", cp_version="3.4.2"), False)])
    assert refused.failed and not refused.changed and "allow_unsupported_path" in refused["msg"]
    assert "Nothing was changed" in refused["msg"] and not refused["path"]["supported"]
    for result in (allowed, allowed_check):
        assert not result.failed and not result.changed
        assert result["warnings_given"] and "UNSUPPORTED UPGRADE PATH" in result["warnings_given"][0]
    for result in (down, forced):
        assert result.failed and result["path"]["kind"] == "downgrade", result
    assert hybrid.failed and "Upgrade the control plane first" in hybrid["msg"]
    assert not hybrid["hybrid"]["y"]["accepted"]
