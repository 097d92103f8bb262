"""Unit tests for the upgrade-path rules (kong-facts 7.1, 9.1)."""

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._version_rules import (
    KongVersion,
    VersionError,
    classify_path,
    hybrid_compatible,
    strategy_allowed,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("3.4.2", (3, 4, 2, None)),
        ("3.9.0.1", (3, 9, 0, 1)),
        ("2.8.4.9-enterprise-edition", (2, 8, 4, 9)),
        ("Kong Enterprise 3.9.0.0", (3, 9, 0, 0)),
        ("kong/3.10.0", (3, 10, 0, None)),
    ],
)
def test_parse_accepts_oss_and_enterprise_forms(raw, expected):
    version = KongVersion.parse(raw)
    assert (version.major, version.minor, version.patch, version.build) == expected


@pytest.mark.parametrize("raw", ["", "3.4", "latest", "3.4.x"])
def test_parse_rejects_non_versions_with_a_clear_message(raw):
    with pytest.raises(VersionError, match="is not a Kong version"):
        KongVersion.parse(raw)


@pytest.mark.parametrize(
    "cur, tgt, kind, supported",
    [
        ("3.6.0", "3.6.1", "patch", True),
        ("3.9.1", "3.10.0", "minor", True),
        ("2.8.4", "3.4.3", "lts", True),
        ("3.4.3", "3.10.0", "lts", True),
        ("2.8.4", "3.0.0", "major", True),
        ("3.4.3", "3.9.1", "unsupported", False),
        ("3.10.0", "3.9.1", "downgrade", False),
        ("3.9.1", "3.9.1", "none", True),
        ("1.5.0", "3.4.0", "unsupported", False),
    ],
)
def test_classify_path_follows_documented_rules(cur, tgt, kind, supported):
    result = classify_path(cur, tgt)
    assert result["kind"] == kind
    assert result["supported"] is supported


def test_unsupported_path_names_the_release_lines_to_go_through():
    result = classify_path("3.4.3", "3.7.0")
    assert result["steps"] == ["3.5", "3.6", "3.7"]
    assert "3.5 -> 3.6 -> 3.7" in result["reason"]


def test_skipping_lts_path_uses_lts_jumps():
    assert classify_path("2.8.4", "3.6.0")["steps"] == ["3.4", "3.5", "3.6"]


@pytest.mark.parametrize(
    "cur, tgt, allowed",
    [
        ("3.6.0", "3.6.1", True),
        ("3.4.0", "3.4.3", True),
        ("2.8.2", "2.8.4", True),
        ("2.8.1", "2.8.4", False),
        ("3.9.1", "3.10.0", False),
    ],
)
def test_blue_green_only_between_patches_from_282(cur, tgt, allowed):
    ok, reason = strategy_allowed("blue_green", cur, tgt)
    assert ok is allowed
    assert reason


def test_unknown_strategy_is_refused():
    ok, reason = strategy_allowed("canary", "3.9.1", "3.10.0")
    assert not ok and "dual_cluster" in reason


@pytest.mark.parametrize(
    "cp, dp, ok, text",
    [
        ("3.9.0", "3.8.1", True, "accepted"),
        ("3.9.0", "3.9.1", True, "accepted"),
        ("3.9.0", "3.10.0", False, "incompatible with older control plane version 3.9.0"),
        ("3.9.0", "2.8.0", False, "(3.x.y are accepted)"),
    ],
)
def test_hybrid_rule_matches_the_control_plane(cp, dp, ok, text):
    accepted, message = hybrid_compatible(cp, dp)
    assert accepted is ok
    assert text in message


@pytest.mark.parametrize(
    "strategy, mode, allowed",
    [
        ("rolling", "dbless", True),
        ("rolling", "data_plane", True),
        ("rolling", "traditional", False),
        ("rolling", "control_plane", False),
        ("dual_cluster", "control_plane", True),
        ("in_place", "traditional", True),
        ("dual_cluster", "dbless", False),
        ("in_place", "data_plane", False),
    ],
)
def test_rolling_only_for_dbless_nodes_and_data_planes(strategy, mode, allowed):
    ok, reason = strategy_allowed(strategy, "3.9.1", "3.10.0", mode)
    assert ok is allowed, reason


def test_unknown_mode_is_refused():
    ok, reason = strategy_allowed("rolling", "3.9.1", "3.10.0", "kubernetes")
    assert not ok and "dbless" in reason


@pytest.mark.parametrize(
    "cur, tgt, steps",
    [
        ("3.0.1", "3.4.3", ["3.1", "3.2", "3.3", "3.4"]),
        ("3.4.3", "3.14.0", ["3.10", "3.14"]),
        ("3.4.3", "3.12.0", ["3.10", "3.11", "3.12"]),
        ("2.5.0", "3.4.0", ["2.8", "3.4"]),
    ],
)
def test_intermediate_hops(cur, tgt, steps):
    assert classify_path(cur, tgt)["steps"] == steps


def test_enterprise_four_part_versions_compare_on_all_parts():
    assert KongVersion.parse("3.4.3.1") < KongVersion.parse("3.4.3.2")
    assert classify_path("3.4.3.1", "3.4.3.5")["kind"] == "patch"


@pytest.mark.parametrize("cur, tgt", [("3.9.1", "3.99.0"), ("3.15.0", "3.15.1"), ("4.0.0", "4.1.0")])
def test_a_version_past_the_newest_known_line_gets_no_invented_path(cur, tgt):
    result = classify_path(cur, tgt)
    assert result["kind"] == "unknown" and not result["supported"] and result["steps"] == []
    assert "later than the newest Kong release line these rules know (3.14)" in result["reason"]
    assert classify_path("3.10.0", "3.14.0")["kind"] == "lts"
