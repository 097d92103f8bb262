"""`kong config db_export|db_import|parse|init` (kong-facts 5) on both providers (the emulator
and real Kong), except the emulator's own bulk import and hash tests (their docstrings)."""

from __future__ import annotations

import io
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import KongDb, KongRunner

from kongemu import migrations, pg, schema, versions
from kongemu.logutil import Log

HINT = "\n\n  Run with --v (verbose) or --vv (debug) for more details\n"
BOTH = pytest.mark.parametrize("provider", ["emulated", "real"])

GOOD = """_format_version: "3.0"
services:
- name: echo
  url: http://127.0.0.1:9000/anything
  tags: [lab]
  routes:
  - name: echo-route
    paths: [/echo]
    plugins:
    - name: rate-limiting
      config: {minute: 100}
  plugins:
  - name: key-auth
consumers:
- username: alice
  keyauth_credentials:
  - key: alice-key
routes:
- name: top-level-route
  hosts: [example.test]
  service: echo
upstreams:
- name: backend
  targets:
  - target: 127.0.0.1:9000
"""


def _bootstrap(kong: KongRunner, kong_db: KongDb, version: str = "3.4.2") -> None:
    assert kong(version, "migrations", "bootstrap", env=kong_db.env).returncode == 0


def _counts(kong_db: KongDb) -> dict[str, int]:
    return {t: kong_db.query(f"SELECT count(*) FROM {t}")[0][0]
            for t in ("services", "routes", "plugins", "consumers", "keyauth_credentials", "upstreams", "targets")}


@BOTH
def test_parse_without_a_database(kong: KongRunner, tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(GOOD, encoding="utf-8")
    env = {"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)}
    res = kong("3.4.2", "config", "parse", str(path), env=env)
    assert (res.returncode, res.stdout, res.stderr) == (0, "parse successful\n", "")
    res = kong("2.8.5", "config", "parse", str(path), env=env)
    assert res.returncode == 1
    assert res.stderr == "Error: Failed parsing:\nin '_format_version': expected one of: 1.1, 2.1" + HINT


@BOTH
def test_parse_errors_are_kongs_flattened_text(kong: KongRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("""_format_version: "1.1"
services:
- name: foobar
  host: []
  port: -23
  protocol: https
  _comment: my comment
  _ignore:
  - foo: bar
  routes: 123
""", encoding="utf-8")
    res = kong("3.4.2", "config", "parse", str(path), env={"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)})
    assert res.returncode == 1
    # the fields of one entry come in Lua's table order on real Kong: compare them as a set
    lines = res.stderr[:-len(HINT)].splitlines()
    assert lines[:3] == ["Error: Failed parsing:", "in 'services':", "  - in entry 1 of 'services':"], res
    assert sorted(lines[3:]) == ["    in 'host': expected a string", "    in 'port': value should be between 0 and 65535",
                                 "    in 'routes': expected an array"], res
    path.write_text("""_format_version: "3.0"
services:
- name: s
  host: h.test
  routes:
  - name: r
    name2: x
    paths: [/r]
- name: t
""", encoding="utf-8")
    res = kong("3.4.2", "config", "parse", str(path), env={"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)})
    assert res.stderr.startswith("Error: Failed parsing:\nin 'services':\n  - in entry 1 of 'services':\n"
                                 "    in 'routes':\n      - in entry 1 of 'routes':\n        in 'name2': unknown field\n"
                                 "  - in entry 2 of 'services':\n    in 'host': required field missing" + HINT)


@BOTH
def test_parse_needs_the_database_when_configured(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(GOOD, encoding="utf-8")
    res = kong("3.4.2", "config", "parse", str(path), env=dict(kong_db.env, KONG_PG_PORT="1"))
    assert res.returncode == 1
    assert res.stderr.startswith("Error: [PostgreSQL error] failed to retrieve PostgreSQL server_version_num: "
                                 "connection refused")
    res = kong("3.4.2", "config", "parse", str(path), env=kong_db.env)
    assert (res.returncode, res.out) == (0, "parse successful")


@BOTH
def test_db_only_subcommands_refuse_database_off(kong: KongRunner, tmp_path: Path) -> None:
    env = {"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)}
    res = kong("3.4.2", "config", "db_export", str(tmp_path / "out.yml"), env=env)
    assert res.returncode == 1 and res.stderr == "Error: 'kong config db_export' only works with a database." + HINT
    res = kong("3.4.2", "config", "db_import", str(tmp_path / "in.yml"), env=env)
    assert res.returncode == 1
    assert res.stderr.startswith("Error: 'kong config db_import' only works with a database.\nWhen using "
                                 "database=off, reload your declarative configuration\nusing the /config endpoint.")
    res = kong("3.4.2", "config", "nope", env=env)
    assert res.returncode == 1 and res.stderr.startswith("No such command for config: nope\n\n")


@BOTH
def test_import_export_round_trip(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    env = kong_db.env
    _bootstrap(kong, kong_db)
    path = tmp_path / "kong.yml"
    path.write_text(GOOD, encoding="utf-8")
    res = kong("3.4.2", "config", "db_import", env=env)
    assert res.returncode == 1
    assert res.stderr == "Error: expected a declarative configuration file; see `kong config --help`" + HINT
    res = kong("3.4.2", "config", "db_import", str(path), env=env)
    assert (res.returncode, res.stdout) == (0, "parse successful, beginning import\nimport successful\n"), res
    counts = _counts(kong_db)
    assert counts == {"services": 1, "routes": 2, "plugins": 2, "consumers": 1, "keyauth_credentials": 1,
                      "upstreams": 1, "targets": 1}
    kong_db.query("INSERT INTO consumers (id, username, ws_id) SELECT gen_random_uuid(), 'not-in-file', id "
                  "FROM workspaces")
    # Kong gives entities without an id the uuid5 of their name or cache key, but a random id to
    # 3.x key-auth credentials: the same file a second time collides on the key
    res = kong("3.4.2", "config", "db_import", str(path), env=env)
    assert (res.returncode, res.stdout) == (1, "parse successful, beginning import\n"), res
    assert res.stderr == ("Error: Failed importing:\n[postgres] UNIQUE violation detected on '{key=\"alice-key\"}'"
                          + HINT), res
    assert _counts(kong_db) == dict(counts, consumers=2), "import deletes nothing"
    service_id = kong_db.query("SELECT id::text FROM services")[0][0]
    assert service_id == str(uuid.uuid5(uuid.uuid5(uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5"), "services"),
                                        "echo")), "Kong's generate_ids"

    out = tmp_path / "export.yml"
    res = kong("3.4.2", "config", "db_export", str(out), env=env)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    text = out.read_text(encoding="utf-8")
    assert "workspaces" not in text and "ws_id" not in text
    # Real Kong writes keys in Lua's table order, which differs between runs: the key may open its item.
    assert re.search(r"\n(  |- )client_certificate: ~\n", text), "nulls are written as ~"
    doc = yaml.safe_load(text)
    # keys in Lua's table order on real Kong (`_transform` may come first): compare as sets
    assert (doc["_format_version"], doc["_transform"]) == ("3.0", False)
    assert set(doc) == {"_format_version", "_transform", "consumers", "keyauth_credentials", "parameters",
                        "plugins", "routes", "services", "targets", "upstreams"}
    service_id = doc["services"][0]["id"]
    assert doc["services"][0]["path"] == "/anything" and doc["services"][0]["tags"] == ["lab"]
    route = next(r for r in doc["routes"] if r["name"] == "echo-route")
    assert route["service"] == service_id, "foreign keys are plain ids"
    assert doc["parameters"][0]["key"] == "cluster_id"
    res = kong("3.4.2", "config", "db_export", str(out), env=env)
    assert res.returncode == 1 and res.stderr == f"Error: {out} already exists. Will not overwrite it." + HINT

    assert kong("3.4.2", "migrations", "reset", "--yes", env=env).returncode == 0
    _bootstrap(kong, kong_db)
    for _attempt in range(2):  # an export carries every id: importing it again upserts by id
        res = kong("3.4.2", "config", "db_import", str(out), env=env)
        assert res.returncode == 0, res

    # the .kong_env of a node's prefix is read (`kong prepare` writes it); KONG_* still win
    prefix = tmp_path / "node-prefix"
    res = kong("3.4.2", "prepare", env=dict(env, KONG_PREFIX=str(prefix)))
    assert res.returncode == 0 and (prefix / ".kong_env").is_file(), res
    again = tmp_path / "again.yml"
    res = kong("3.4.2", "config", "db_export", str(again), "-p", str(prefix), env={"KONG_PG_PORT": "1"})
    assert res.returncode == 1 and not again.exists(), "environment variables still override .kong_env"
    res = kong("3.4.2", "config", "db_export", str(again), "-p", str(prefix))
    assert res.returncode == 0 and yaml.safe_load(again.read_text(encoding="utf-8"))["services"], res
    assert kong_db.query("SELECT id::text FROM services") == [(service_id,)]
    assert kong_db.query("SELECT value FROM parameters WHERE key = 'cluster_id'")[0][0] == doc["parameters"][0]["value"]
    assert _counts(kong_db) == dict(counts, consumers=2)


@BOTH
def test_db_export_of_a_28_database_writes_format_21(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    _bootstrap(kong, kong_db, "2.8.5")
    out = tmp_path / "export.yml"
    assert kong("2.8.5", "config", "db_export", str(out), env=kong_db.env).returncode == 0
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert (doc["_format_version"], doc["_transform"]) == ("2.1", False)


@BOTH
def test_init_writes_an_example_and_refuses_to_overwrite(kong: KongRunner, tmp_path: Path) -> None:
    res = kong("3.4.2", "config", "init", cwd=str(tmp_path))
    assert (res.returncode, res.stdout) == (0, "")
    text = (tmp_path / "kong.yml").read_text(encoding="utf-8")
    assert '_format_version: "3.0"' in text
    res = kong("3.4.2", "config", "init", cwd=str(tmp_path))
    assert res.returncode == 1
    assert res.stderr == f"Error: {tmp_path / 'kong.yml'} already exists.\nWill not overwrite it." + HINT
    assert kong("3.4.2", "config", "parse", str(tmp_path / "kong.yml"),
                env={"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)}).returncode == 0


def test_bulk_import_of_10000_entities(kong_db: KongDb, tmp_path: Path) -> None:
    """Emulator only: the scale of its own declarative import path (the lab seeds 10,000+
    entities with it); real Kong's db_import is checked by test_import_export_round_trip."""
    info = versions.get("3.4.2")
    conf = kong_db.conf("3.4.2")
    assert migrations.execute(info, conf, {"command": "bootstrap"}, Log(io.StringIO(), io.StringIO())) == 0
    n = 2500
    doc = {"_format_version": "3.0",
           "services": [{"name": f"svc-{i}", "url": f"http://127.0.0.1:9000/{i}",
                         "routes": [{"name": f"route-{i}", "paths": [f"/svc-{i}"]}]} for i in range(n)],
           "consumers": [{"username": f"user-{i}", "keyauth_credentials": [{"key": f"key-{i}"}]} for i in range(n)]}
    path = tmp_path / "big.yml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    from kongemu import declarative

    started = time.monotonic()
    entities = declarative.load_text(path.read_text(encoding="utf-8"), info)[0]
    store = schema.EntityStore(pg.connect(conf), info)
    parsed = time.monotonic()
    assert store.import_entities(entities) == 4 * n
    imported = time.monotonic()
    config = store.load_config()
    loaded = time.monotonic()
    assert config.count() == 4 * n
    assert store.page("consumers", size=1000).offset is not None
    store.close()
    print(f"\n10k entities: parse+validate {parsed - started:.2f}s, import {imported - parsed:.2f}s, "
          f"load_config {loaded - imported:.2f}s")


def test_configuration_hash_is_stable_and_shape_independent() -> None:
    """Emulator only: its own configuration hash (real Kong's hashes are compared with the
    data planes' in test_hybrid)."""
    from kongemu import declarative

    info = versions.get("3.4.2")
    first = declarative.load_store(GOOD, info)
    second = declarative.load_store(GOOD, info)
    assert first.config_hash == second.config_hash and len(first.config_hash) == 32
    assert declarative.config_hash(first.export()) == first.config_hash
    assert declarative.empty_store(info).config_hash == "0" * 32
    changed = declarative.load_store(GOOD.replace("minute: 100", "minute: 101"), info)
    assert changed.config_hash != first.config_hash
