"""What migrations do to the data, on both providers: a configuration imported with the older
release (`kong config db_import`), then the newer `up` and `finish`, read back with SQL
(`routes.paths`, `plugins.config`: the same columns in real Kong's tables and the
emulator's). Real Kong overrules kong-facts 4.1 here: core 016_280_to_300 rewrites regex
paths in `up`; the plugin migrations with a teardown copy in `up` and remove in `finish`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import KongDb, KongRunner
from nodefixtures import provider_params

from kongemu import schema

SEED_28 = r"""_format_version: "2.1"
services:
- name: echo
  url: http://127.0.0.1:9
  routes:
  - name: plain
    paths: [/plain]
    plugins:
    - name: pre-function
      config:
        functions: ["kong.response.set_header('X-Pre', '1')"]
  - name: regex
    paths: ['/reg/\d+', '/caf%C3%A9/\d+', /prefix]
  plugins:
  - name: http-log
    config:
      http_endpoint: http://127.0.0.1:9/log
      headers:
        X-Two: [a, b]
        X-Empty: []
  - name: rate-limiting
    config: {minute: 10, policy: redis, redis_host: 127.0.0.1, redis_port: 9}
"""

SEED_34 = r"""_format_version: "3.0"
services:
- name: echo
  url: http://127.0.0.1:9
  plugins:
  - name: rate-limiting
    config: {minute: 10, policy: redis, redis_host: 127.0.0.1, redis_port: 9, redis_database: 2}
  - name: response-ratelimiting
    config: {limits: {sms: {minute: 10}}, policy: local}
  - name: opentelemetry
    config: {endpoint: http://127.0.0.1:9/v1/traces, queue: {max_batch_size: 1}}
  routes:
  - name: regex
    paths: ['~/reg/\d+']
"""


def _config(kong_db: KongDb, name: str) -> dict[str, Any]:
    rows = kong_db.query("SELECT config FROM plugins WHERE name = %s", (name,))
    assert len(rows) == 1, (name, rows)
    return rows[0][0]


def _paths(kong_db: KongDb, name: str) -> list[str]:
    return kong_db.query("SELECT paths FROM routes WHERE name = %s", (name,))[0][0]


def _seed(kong: KongRunner, kong_db: KongDb, tmp_path: Path, version: str, text: str) -> None:
    assert kong(version, "migrations", "bootstrap", env=kong_db.env).returncode == 0
    path = tmp_path / "seed.yml"
    path.write_text(text, encoding="utf-8")
    res = kong(version, "config", "db_import", str(path), env=kong_db.env)
    assert res.returncode == 0, res


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_28_to_34_regex_paths_in_up_plugin_configs_in_finish(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    _seed(kong, kong_db, tmp_path, "2.8.5", SEED_28)
    assert _config(kong_db, "pre-function")["functions"] == ["kong.response.set_header('X-Pre', '1')"]
    assert _config(kong_db, "http-log")["headers"] == {"X-Two": ["a", "b"], "X-Empty": {}}, "cjson: [] is {}"
    assert kong("3.4.2", "migrations", "up", env=kong_db.env).returncode == 0
    # up: regex paths get their `~` (percent-encoded unreserved characters decoded once)
    assert _paths(kong_db, "regex") == ["~/reg/\\d+", "~/café/\\d+", "/prefix"]
    assert _paths(kong_db, "plain") == ["/plain"]
    pre = _config(kong_db, "pre-function")
    assert pre["access"] == pre["functions"] == ["kong.response.set_header('X-Pre', '1')"]
    assert _config(kong_db, "http-log")["headers"] == {"X-Two": ["a", "b"], "X-Empty": {}}, "cjson: [] is {}"
    assert kong("3.4.2", "migrations", "finish", env=kong_db.env).returncode == 0
    # finish: the teardowns rewrite what 2.8 reads
    assert "functions" not in _config(kong_db, "pre-function")
    assert _config(kong_db, "pre-function")["access"] == ["kong.response.set_header('X-Pre', '1')"]
    assert _config(kong_db, "http-log")["headers"] == {"X-Two": "a, b"}
    assert _config(kong_db, "rate-limiting")["redis_host"] == "127.0.0.1", "006_350_to_360 is 3.6's"


@pytest.mark.parametrize(("provider", "new"), provider_params(["3.9.1"]) + provider_params(["3.7.0"], ("emulated",)))
def test_34_to_37_plus_redis_fields_moved_in_up_removed_in_finish(
        kong: KongRunner, kong_db: KongDb, tmp_path: Path, new: str) -> None:
    _seed(kong, kong_db, tmp_path, "3.4.2", SEED_34)
    assert kong(new, "migrations", "up", env=kong_db.env).returncode == 0
    limits = _config(kong_db, "rate-limiting")
    assert limits["redis"]["host"] == limits["redis_host"] == "127.0.0.1"
    assert limits["redis"]["port"] == 9 and limits["redis"]["database"] == 2
    assert _config(kong_db, "response-ratelimiting")["redis"]["host"] is None
    assert _config(kong_db, "opentelemetry")["queue"]["max_batch_size"] == 1
    assert kong(new, "migrations", "finish", env=kong_db.env).returncode == 0
    limits = _config(kong_db, "rate-limiting")
    assert not [k for k in limits if k.startswith("redis_")], limits
    assert limits["redis"]["host"] == "127.0.0.1"
    assert _config(kong_db, "opentelemetry")["queue"]["max_batch_size"] == 200
    assert _paths(kong_db, "regex") == ["~/reg/\\d+"]


def test_36x_up_is_destructive(kong: KongRunner, kong_db: KongDb, tmp_path: Path) -> None:
    """Emulator only (no 3.5/3.6 build here): the three 3.6 plugin migrations had no teardown
    in 3.6.x, their `up` removed the old fields at once (kong-facts 3.4)."""
    _seed(kong, kong_db, tmp_path, "3.5.0", SEED_34)
    assert kong("3.6.0", "migrations", "up", env=kong_db.env).returncode == 0
    limits = _config(kong_db, "rate-limiting")
    assert limits["redis"]["host"] == "127.0.0.1" and "redis_host" not in limits
    assert kong("3.6.0", "migrations", "list", env=kong_db.env).returncode == 0, "nothing pending"


@pytest.mark.parametrize(("provider", "version"), provider_params(["2.8.5", "3.9.1"]))
def test_bootstrap_creates_kongs_tables(kong: KongRunner, kong_db: KongDb, version: str) -> None:
    assert kong(version, "migrations", "bootstrap", env=kong_db.env).returncode == 0
    tables = {r[0] for r in kong_db.query("SELECT table_name FROM information_schema.tables "
                                          "WHERE table_schema = current_schema()")}
    assert tables >= {"workspaces", "services", "routes", "consumers", "plugins", "keyauth_credentials", "upstreams",
                      "targets", "cluster_events", "clustering_data_planes", "ratelimiting_metrics",
                      "response_ratelimiting_metrics", "sessions", "oauth2_tokens", "acme_storage", "parameters",
                      "schema_meta", "locks"}, tables
    assert kong_db.query("SELECT name FROM workspaces") == [("default",)]
    assert ("cluster_id",) in kong_db.query("SELECT key FROM parameters")


def test_migrate_path_280_300() -> None:
    """Emulator only: its copy of kong/db/migrations/migrate_path_280_300.lua."""
    assert schema.migrate_path_280_300("/plain/path-1_2.~") == "/plain/path-1_2.~"
    assert schema.migrate_path_280_300("/reg/\\d+") == "~/reg/\\d+"
    assert schema.migrate_path_280_300("/caf%C3%A9/(x)") == "~/café/(x)"
    assert schema.migrate_path_280_300("/a%2Fb/(x)") == "~/a%2Fb/(x)", "reserved characters stay encoded"
    assert schema.migrate_path_280_300("/a%2eb/(x)") == "~/a\\.b/(x)", "regex metacharacters are escaped"
