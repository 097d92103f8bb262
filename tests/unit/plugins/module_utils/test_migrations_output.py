"""Unit tests for reading `kong migrations list` / `status` output (kong-facts 2.4, 2.5)."""

import json

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._migrations_output import (
    MigrationsOutputError,
    count,
    parse_list,
    parse_status,
)

NEW_ONLY = """Executed migrations:
core: 000_base

New migrations available:
with-migrations: 000_base_with_migrations, 001_14_to_15

Run 'kong migrations up' to proceed
"""

PENDING_AND_NEW = """Executed migrations:
                 core: 000_base, 003_100_to_110
                  acl: 000_base_acl

Pending migrations:
core: 016_280_to_300

New migrations available:
session: 003_330_to_3100

Run 'kong migrations finish' when ready to complete pending migrations (postgres database will be incompatible with the previous Kong version)
"""


def test_new_only_output_from_kongs_own_spec():
    state = parse_list(5, NEW_ONLY)
    assert state["state"] == "new"
    assert state["executed"] == {"core": ["000_base"]}
    assert state["new"] == {"with-migrations": ["000_base_with_migrations", "001_14_to_15"]}


def test_right_aligned_subsystems_and_all_three_sections():
    state = parse_list(4, PENDING_AND_NEW)
    assert state["state"] == "pending"
    assert state["executed"]["core"] == ["000_base", "003_100_to_110"]
    assert state["executed"]["acl"] == ["000_base_acl"]
    assert state["pending"] == {"core": ["016_280_to_300"]}
    assert count(state["new"]) == 1


def test_needs_bootstrap_exit_code():
    state = parse_list(3, "Database needs bootstrapping or is older than Kong 1.0.\n")
    assert state["needs_bootstrap"] and state["state"] == "needs_bootstrap"


def test_error_exit_code_is_an_error():
    with pytest.raises(MigrationsOutputError, match="exit code 1"):
        parse_list(1, "")


def test_status_json_with_missing_keys_left_out():
    doc = {"needs_bootstrap": False,
           "executed_migrations": [{"subsystem": "core", "namespace": "kong.db.migrations.core",
                                    "migrations": ["000_base"]}],
           "pending_migrations": [{"subsystem": "http-log", "namespace": "x", "migrations": ["001_280_to_300"]}]}
    state = parse_status(json.dumps(doc))
    assert state["state"] == "pending"
    assert state["pending"] == {"http-log": ["001_280_to_300"]}
    assert state["new"] == {}


def test_status_that_is_not_json_is_an_error():
    with pytest.raises(MigrationsOutputError):
        parse_status("Error: boom")


def test_status_json_followed_by_the_prefix_line_real_kong_prints_last():
    # real Kong 3.x on a pipe, prefix not yet created: the JSON line, then the prefix message
    doc = {"needs_bootstrap": False, "new_migrations": [{"subsystem": "core", "migrations": ["024_380_to_390"]}]}
    out = json.dumps(doc) + "\nprefix directory /usr/local/kong not found, trying to create it\n"
    state = parse_status(out)
    assert state["state"] == "new" and state["new"] == {"core": ["024_380_to_390"]}
