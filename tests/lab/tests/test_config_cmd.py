"""`kong config db_export|db_import|parse|init` (kong-facts 5) with the installed launchers."""

from __future__ import annotations

import io
import time
from pathlib import Path

import yaml
from conftest import KongDb, KongRunner

from kongemu import conf as confmod
from kongemu import migrations, pg, schema, versions
from kongemu.logutil import Log

HINT = "\n\n  Run with --v (verbose) or --vv (debug) for more details\n"

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


def _bootstrap(kong: KongRunner, kong_db: KongDb, version: str = "3.4.3") -> None:
    assert kong(version, "migrations", "bootstrap", env=kong_db.env).returncode == 0


def _counts(kong_db: KongDb) -> dict[str, int]:
    return {t: kong_db.query(f"SELECT count(*) FROM {t}")[0][0]
            for t in ("services", "routes", "plugins", "consumers", "keyauth_credentials", "upstreams", "targets")}


def test_parse_without_a_database(kong: KongRunner, tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(GOOD, encoding="utf-8")
    env = {"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)}
    res = kong("3.4.3", "config", "parse", str(path), env=env)
    assert (res.returncode, res.stdout, res.stderr) == (0, "parse successful\n", "")
    res = kong("2.8.4", "config", "parse", str(path), env=env)
    assert res.returncode == 1
    assert res.stderr == "Error: Failed parsing:\nin '_format_version': expected one of: 1.1, 2.1" + HINT


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
    res = kong("3.4.3", "config", "parse", str(path), env={"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)})
    assert res.returncode == 1
    assert res.stderr == ("Error: Failed parsing:\n"
                          "in 'services':\n"
                          "  - in entry 1 of 'services':\n"
                          "    in 'host': expected a string\n"
                          "    in 'port': value should be between 0 and 65535\n"
                          "    in 'routes': expected an array" + HINT)
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
    res = kong("3.4.3", "config", "parse", str(path), env={"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)})
    assert res.stderr.startswith("Error: Failed parsing:\nin 'services':\n  - in entry 1 of 'services':\n"
                                 "    in 'routes':\n      - in entry 1 of 'routes':\n        in 'name2': unknown field\n"
                                 "  - in entry 2 of 'services':\n    in 'host': required field missing" + HINT)


def test_parse_needs_the_database_when_configured(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(GOOD, encoding="utf-8")
    res = kong("3.4.3", "config", "parse", str(path), env=dict(kong_db.env, KONG_PG_PORT="1"))
    assert res.returncode == 1
    assert res.stderr.startswith("Error: [PostgreSQL error] failed to retrieve PostgreSQL server_version_num: "
                                 "connection refused")
    res = kong("3.4.3", "config", "parse", str(path), env=kong_db.env)
    assert (res.returncode, res.out) == (0, "parse successful")


def test_db_only_subcommands_refuse_database_off(kong: KongRunner, tmp_path: Path) -> None:
    env = {"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)}
    res = kong("3.4.3", "config", "db_export", str(tmp_path / "out.yml"), env=env)
    assert res.returncode == 1 and res.stderr == "Error: 'kong config db_export' only works with a database." + HINT
    res = kong("3.4.3", "config", "db_import", str(tmp_path / "in.yml"), env=env)
    assert res.returncode == 1
    assert res.stderr.startswith("Error: 'kong config db_import' only works with a database.\nWhen using "
                                 "database=off, reload your declarative configuration\nusing the /config endpoint.")
    res = kong("3.4.3", "config", "nope", env=env)
    assert res.returncode == 1 and res.stderr.startswith("No such command for config: nope\n\n")


def test_import_export_round_trip(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    env = kong_db.env
    _bootstrap(kong, kong_db)
    path = tmp_path / "kong.yml"
    path.write_text(GOOD, encoding="utf-8")
    res = kong("3.4.3", "config", "db_import", env=env)
    assert res.returncode == 1
    assert res.stderr == "Error: expected a declarative configuration file; see `kong config --help`" + HINT
    res = kong("3.4.3", "config", "db_import", str(path), env=env)
    assert (res.returncode, res.stdout) == (0, "parse successful, beginning import\nimport successful\n"), res
    counts = _counts(kong_db)
    assert counts == {"services": 1, "routes": 2, "plugins": 2, "consumers": 1, "keyauth_credentials": 1,
                      "upstreams": 1, "targets": 1}
    kong_db.query("INSERT INTO consumers (id, username, ws_id) SELECT gen_random_uuid(), 'not-in-file', id "
                  "FROM workspaces")
    assert kong("3.4.3", "config", "db_import", str(path), env=env).returncode == 0
    assert _counts(kong_db) == dict(counts, consumers=2), "import upserts by primary key and deletes nothing"

    out = tmp_path / "export.yml"
    res = kong("3.4.3", "config", "db_export", str(out), env=env)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("_format_version: '3.0'\n_transform: false\n")
    assert "workspaces" not in text and "ws_id" not in text
    assert "\n  client_certificate: ~\n" in text, "nulls are written as ~"
    doc = yaml.safe_load(text)
    assert list(doc) == ["_format_version", "_transform", "consumers", "keyauth_credentials", "parameters",
                         "plugins", "routes", "services", "targets", "upstreams"]
    service_id = doc["services"][0]["id"]
    assert doc["services"][0]["path"] == "/anything" and doc["services"][0]["tags"] == ["lab"]
    route = next(r for r in doc["routes"] if r["name"] == "echo-route")
    assert route["service"] == service_id, "foreign keys are plain ids"
    assert doc["parameters"][0]["key"] == "cluster_id"
    res = kong("3.4.3", "config", "db_export", str(out), env=env)
    assert res.returncode == 1 and res.stderr == f"Error: {out} already exists. Will not overwrite it." + HINT

    assert kong("3.4.3", "migrations", "reset", "--yes", env=env).returncode == 0
    _bootstrap(kong, kong_db)
    res = kong("3.4.3", "config", "db_import", str(out), env=env)
    assert res.returncode == 0, res
    assert kong_db.query("SELECT id::text FROM services") == [(service_id,)]
    assert kong_db.query("SELECT value FROM parameters WHERE key = 'cluster_id'")[0][0] == doc["parameters"][0]["value"]
    assert _counts(kong_db) == dict(counts, consumers=2)


def test_db_export_of_a_28_database_writes_format_21(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    _bootstrap(kong, kong_db, "2.8.4")
    out = tmp_path / "export.yml"
    assert kong("2.8.4", "config", "db_export", str(out), env=kong_db.env).returncode == 0
    assert out.read_text(encoding="utf-8").startswith("_format_version: '2.1'\n_transform: false\n")


def test_kong_env_of_a_running_prefix_is_used(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    _bootstrap(kong, kong_db)
    info = versions.get("3.4.3")
    prefix = tmp_path / "node-prefix"
    conf = confmod.load(info, None, env=dict(kong_db.env, KONG_PREFIX=str(prefix)))
    confmod.write_kong_env(conf)
    out = tmp_path / "export.yml"
    res = kong("3.4.3", "config", "db_export", str(out), "-p", str(prefix), env={"KONG_PG_PORT": "1"})
    assert res.returncode == 1, "environment variables still override .kong_env"
    res = kong("3.4.3", "config", "db_export", str(out), "-p", str(prefix))
    assert res.returncode == 0, res
    assert out.exists()


def test_init_writes_an_example_and_refuses_to_overwrite(kong: KongRunner, tmp_path: Path) -> None:
    res = kong("3.4.3", "config", "init", cwd=str(tmp_path))
    assert (res.returncode, res.stdout) == (0, "")
    text = (tmp_path / "kong.yml").read_text(encoding="utf-8")
    assert '_format_version: "3.0"' in text
    res = kong("3.4.3", "config", "init", cwd=str(tmp_path))
    assert res.returncode == 1
    assert res.stderr == f"Error: {tmp_path / 'kong.yml'} already exists.\nWill not overwrite it." + HINT
    assert kong("3.4.3", "config", "parse", str(tmp_path / "kong.yml"),
                env={"KONG_DATABASE": "off", "KONG_PREFIX": str(tmp_path)}).returncode == 0


def test_bulk_import_of_10000_entities(kong_db: KongDb, tmp_path: Path) -> None:
    """Seeding scale: 10,000+ entities through the declarative import path."""
    info = versions.get("3.4.3")
    conf = kong_db.conf("3.4.3")
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
    from kongemu import declarative

    info = versions.get("3.4.3")
    first = declarative.load_store(GOOD, info)
    second = declarative.load_store(GOOD, info)
    assert first.config_hash == second.config_hash and len(first.config_hash) == 32
    assert declarative.config_hash(first.export()) == first.config_hash
    assert declarative.empty_store(info).config_hash == "0" * 32
    changed = declarative.load_store(GOOD.replace("minute: 100", "minute: 101"), info)
    assert changed.config_hash != first.config_hash
