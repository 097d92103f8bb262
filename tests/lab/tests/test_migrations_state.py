"""The schema state computation (kong-facts 3.3) and list formatting (2.4), without a database.

Emulator only: unit tests of kongemu.migrations. The same states, as `kong migrations list`
and `status` print them, are compared with real Kong by test_conformance."""

from __future__ import annotations

from kongemu import conf as confmod
from kongemu import migrations, versions
from kongemu.migrations import MigrationList, SubsystemMigrations, compute_state
from kongemu.versions import Migration

SUBSYSTEMS = {
    "core": [Migration("000_base"), Migration("001_a"), Migration("002_b", teardown=True), Migration("003_c")],
    "key-auth": [Migration("000_base_key_auth")],
}


def names(mlist: MigrationList | None) -> dict[str, list[str]]:
    return {s.subsystem: s.names() for s in mlist or []}


def test_no_schema_meta_table_needs_bootstrap_and_everything_is_new() -> None:
    state = compute_state(None, SUBSYSTEMS)
    assert state.needs_bootstrap
    assert names(state.new_migrations) == {k: [m.name for m in v] for k, v in SUBSYSTEMS.items()}
    assert not state.is_up_to_date()


def test_empty_schema_meta_is_bootstrapped_but_all_new() -> None:
    state = compute_state([], SUBSYSTEMS)
    assert not state.needs_bootstrap
    assert state.executed_migrations is None
    assert names(state.new_migrations)["core"] == ["000_base", "001_a", "002_b", "003_c"]


def test_executed_pending_new_and_unknown_names_ignored() -> None:
    rows = [{"subsystem": "core", "last_executed": "001_a", "executed": ["000_base", "001_a", "999_newer"],
             "pending": ["002_b"]}, {"subsystem": "from-newer-kong", "last_executed": "x", "executed": ["x"],
                                     "pending": []}]
    state = compute_state(rows, SUBSYSTEMS)
    assert names(state.executed_migrations) == {"core": ["000_base", "001_a"]}
    assert names(state.pending_migrations) == {"core": ["002_b"]}
    assert names(state.new_migrations) == {"core": ["003_c"], "key-auth": ["000_base_key_auth"]}
    assert state.missing_migrations is None
    assert not state.is_up_to_date()


def test_pending_only_is_up_to_date() -> None:
    rows = [{"subsystem": "core", "last_executed": "003_c", "executed": ["000_base", "001_a", "003_c"],
             "pending": ["002_b"]}, {"subsystem": "key-auth", "last_executed": "000_base_key_auth",
                                     "executed": ["000_base_key_auth"], "pending": None}]
    state = compute_state(rows, SUBSYSTEMS)
    assert state.is_up_to_date()
    assert names(state.pending_migrations) == {"core": ["002_b"]}


def test_missing_is_only_the_last_executed_migration_when_absent() -> None:
    # last_executed names 002_b, which is in neither array: missing. 001_a is a hole
    # *before* last_executed: new (the narrow rule of State.load).
    rows = [{"subsystem": "core", "last_executed": "002_b", "executed": ["000_base"], "pending": []}]
    state = compute_state(rows, {"core": SUBSYSTEMS["core"]})
    assert names(state.missing_migrations) == {"core": ["002_b"]}
    assert names(state.new_migrations) == {"core": ["001_a", "003_c"]}


def test_list_format_right_aligns_names_per_section() -> None:
    mlist = MigrationList([
        SubsystemMigrations("core", "kong.db.migrations.core", [Migration("000_base"), Migration("003_100_to_110")]),
        SubsystemMigrations("response-ratelimiting", "x", [Migration("000_base_response_rate_limiting")]),
    ])
    assert str(mlist).splitlines() == [
        "                 core: 000_base, 003_100_to_110",
        "response-ratelimiting: 000_base_response_rate_limiting",
    ]
    assert str(MigrationList([SubsystemMigrations("core", "x", [Migration("000_base")])])) == "core: 000_base"


def test_status_json_leaves_out_empty_lists() -> None:
    state = compute_state([], {"core": [Migration("000_base")]})
    assert state.to_json() == ('{"needs_bootstrap":false,"new_migrations":[{"subsystem":"core",'
                               '"namespace":"kong.db.migrations.core","migrations":["000_base"]}]}')


def test_loaded_subsystems_follow_the_plugins_setting() -> None:
    info = versions.get("3.4.3")
    conf = confmod.load(info, None, env={"KONG_PLUGINS": "key-auth,custom"})
    assert list(migrations.loaded_subsystems(info, conf)) == ["core", "key-auth"]
    conf = confmod.load(info, None, env={"KONG_PLUGINS": "off"})
    assert list(migrations.loaded_subsystems(info, conf)) == ["core"]
    conf = confmod.load(info, None, env={})
    subs = list(migrations.loaded_subsystems(info, conf))
    assert subs[0] == "core" and subs[1:] == sorted(subs[1:]) and "session" in subs
