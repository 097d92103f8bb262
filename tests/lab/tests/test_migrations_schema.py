"""Expand/contract for real (schema.py): which columns each release reads and writes,
what `up` and `teardown` change, and how an older release breaks after `finish`."""

from __future__ import annotations

import io

import pytest
from conftest import KongDb

from kongemu import migrations, pg, schema, versions
from kongemu.logutil import Log


def migrate(kong_db: KongDb, version: str, command: str, **args: object) -> str:
    out = io.StringIO()
    code = migrations.execute(versions.get(version), kong_db.conf(version),
                              {"command": command, "lock_timeout": 5, **args}, Log(out, io.StringIO()))
    assert code in (0, 4, 5), out.getvalue()
    return out.getvalue()


def store(kong_db: KongDb, version: str) -> schema.EntityStore:
    return schema.EntityStore(pg.connect(kong_db.conf(version)), versions.get(version))


def columns(kong_db: KongDb, table: str) -> set[str]:
    rows = kong_db.query("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                         "AND table_name = %s", (table,))
    return {r[0] for r in rows}


def test_every_teardown_migration_owns_a_column_pair() -> None:
    pairs = schema.compat_pairs()
    assert {(p.subsystem, p.name) for p in pairs} == set(versions.teardown_catalog())
    by_key = {(p.subsystem, p.name): p for p in pairs}
    core = by_key[("core", "016_280_to_300")]
    assert (core.table, core.legacy, core.new) == ("routes", "pre_core_016_280_to_300", "core_016_280_to_300")
    plugin = by_key[("http-log", "001_280_to_300")]
    assert (plugin.table, plugin.legacy, plugin.new) == ("plugins", "pre_http_log_001_280_to_300",
                                                         "http_log_001_280_to_300")


@pytest.mark.parametrize("version", ["2.8.4", "3.6.0", "3.10.0"])
def test_bootstrap_creates_the_columns_of_the_release(kong_db: KongDb, version: str) -> None:
    migrate(kong_db, version, "bootstrap")
    info = versions.get(version)
    present = {"routes": columns(kong_db, "routes"), "plugins": columns(kong_db, "plugins")}
    for pair in schema.compat_pairs():
        known = info.knows(pair.subsystem, pair.name)
        assert (pair.new in present[pair.table]) == known, pair
        assert (pair.legacy in present[pair.table]) == (not known), pair
    assert set(schema.compat_read_columns(info, "routes")) <= present["routes"]
    assert set(schema.compat_read_columns(info, "plugins")) <= present["plugins"]
    workspaces = kong_db.query("SELECT name FROM workspaces")
    assert workspaces == [("default",)]
    assert kong_db.query("SELECT key FROM parameters") == [("cluster_id",)]
    for table in ("cluster_events", "clustering_data_planes", "ratelimiting_metrics", "response_ratelimiting_metrics",
                  "sessions", "oauth2_tokens", "acme_storage", "keyauth_credentials", "upstreams", "targets"):
        assert columns(kong_db, table), table


@pytest.mark.parametrize(("old", "new"), [("2.8.4", "3.4.3"), ("3.4.3", "3.9.1"), ("3.6.0", "3.6.1")])
def test_old_store_works_after_up_and_fails_after_finish(kong_db: KongDb, old: str, new: str) -> None:
    migrate(kong_db, old, "bootstrap")
    old_store = store(kong_db, old)
    svc = old_store.insert("services", {"name": "s1", "host": "example.test"})
    old_store.insert("routes", {"name": "r1", "hosts": ["a.test"], "service": {"id": svc["id"]}})
    old_store.insert("plugins", {"name": "key-auth", "route": {"id": old_store.get("routes", "r1")["id"]}})
    migrate(kong_db, new, "up")
    expanded = [p for p in schema.compat_pairs()
                if versions.get(new).knows(p.subsystem, p.name) and not versions.get(old).knows(p.subsystem, p.name)]
    assert expanded, "the pair must have a migration with a teardown"
    for pair in expanded:
        cols = columns(kong_db, pair.table)
        assert {pair.legacy, pair.new} <= cols
        copied = kong_db.query(f"SELECT count(*) FROM {pair.table} WHERE {pair.new} = {pair.legacy}")[0][0]
        assert copied == 1, pair
    # Old release: reads and writes still work, writing only the legacy column.
    assert len(old_store.load_config().plugins) == 1
    old_store.insert("consumers", {"username": "written-by-old"})
    old_store.insert("routes", {"name": "r2", "paths": ["/two"]})
    new_store = store(kong_db, new)
    new_store.insert("routes", {"name": "r3", "paths": ["/three"]})
    for pair in (p for p in expanded if p.table == "routes"):
        rows = dict(kong_db.query(f"SELECT name, {pair.new} FROM routes WHERE name IN ('r2', 'r3')"))
        assert rows == {"r2": None, "r3": new}
        legacy = dict(kong_db.query(f"SELECT name, {pair.legacy} FROM routes WHERE name IN ('r2', 'r3')"))
        assert legacy == {"r2": old, "r3": new}, "a newer release writes both columns while the legacy exists"
    migrate(kong_db, new, "finish")
    for pair in expanded:
        assert pair.legacy not in columns(kong_db, pair.table)
    for call in (old_store.load_config, old_store.probe, lambda: old_store.page("services"),
                 lambda: old_store.get("consumers", "written-by-old"),
                 lambda: old_store.insert("consumers", {"username": "late"})):
        with pytest.raises(schema.IncompatibleSchema):
            call()
    # The newer store had cached the legacy columns: it recovers on its next write.
    new_store.insert("routes", {"name": "r4", "paths": ["/four"]})
    assert len(new_store.load_config().routes) == 4
    old_store.close()
    new_store.close()


def test_a_release_without_the_teardown_runs_a_destructive_up(kong_db: KongDb) -> None:
    # kong-facts 3.4/4.1: the three 3.6 plugin migrations had no teardown in 3.6.x; their up
    # removed the old data at once. 3.7 gave them a teardown (up keeps, finish removes).
    migrate(kong_db, "3.5.0", "bootstrap")
    old_store = store(kong_db, "3.5.0")
    assert old_store.load_config().count() == 0
    migrate(kong_db, "3.6.0", "up")
    assert "pre_acme_003_350_to_360" not in columns(kong_db, "plugins")
    assert migrations.state_for(kong_db.conf("3.6.0"), versions.get("3.6.0")).pending_migrations is None
    with pytest.raises(schema.IncompatibleSchema):
        old_store.load_config()
    old_store.close()


def test_37_keeps_the_legacy_columns_until_finish(kong_db: KongDb) -> None:
    migrate(kong_db, "3.5.0", "bootstrap")
    migrate(kong_db, "3.7.0", "up")
    cols = columns(kong_db, "plugins")
    assert {"pre_acme_003_350_to_360", "acme_003_350_to_360"} <= cols
    old_store = store(kong_db, "3.5.0")
    old_store.load_config()
    migrate(kong_db, "3.7.0", "finish")
    assert "pre_acme_003_350_to_360" not in columns(kong_db, "plugins")
    with pytest.raises(schema.IncompatibleSchema):
        old_store.load_config()
    old_store.close()


def test_newer_bootstrap_is_incompatible_with_an_older_release(kong_db: KongDb) -> None:
    migrate(kong_db, "3.9.1", "bootstrap")
    older = store(kong_db, "3.4.3")
    with pytest.raises(schema.IncompatibleSchema):
        older.probe()
    older.close()
