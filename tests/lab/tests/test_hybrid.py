"""Hybrid mode (kong-facts 9, 6.4) on both providers: the control plane's
`/clustering/data-planes` (fields by version, sync_status, config_hash), DP sync and
changes, the version gate, plugins a DP lacks, and the DP cache.

Real nodes use one shared-mode cluster certificate (`kong hybrid gen_cert`, as the lab
does); the emulator accepts the same settings and talks plain HTTP (ARCHITECTURE.md).
Every DP connects from 127.0.0.1, so the CP lists `ip: 127.0.0.1` for all of them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from nodefixtures import (
    NodePg,
    alive,
    http_call,
    http_json,
    kill_node,
    make_spec,
    node_pid,
    poll,
    provider_bin,
    provider_params,
    run_kong,
    running_node,
)

from kongemu import versions

EMPTY = "0" * 32


@pytest.fixture(scope="module")
def pg():
    cluster = NodePg()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def bins(provider, kong_root):
    return lambda version: provider_bin(provider, version, kong_root)


@pytest.fixture
def cert(bins, node_tmp):
    """A shared-mode cluster certificate made by the CP's own `kong hybrid gen_cert`."""
    def make(version: str) -> dict[str, str]:
        crt, key = node_tmp / "cluster.crt", node_tmp / "cluster.key"
        if not crt.exists():
            res = run_kong(bins(version), "hybrid", "gen_cert", str(crt), str(key))
            assert res.rc == 0, str(res)
            key.chmod(0o644)  # nginx workers (nobody) read it
        return {"cluster_cert": str(crt), "cluster_cert_key": str(key)}
    return make


def _control_plane(pg, bins, cert, node_tmp: Path, version: str, echo_port: int, extra_plugins: str = ""):
    info = pg.fresh()
    cp = make_spec(node_tmp, "cp", version, role="control_plane", **info.conf(), **cert(version))
    res = run_kong(bins(version), "migrations", "bootstrap", "-c", str(cp.conf_path))
    assert res.rc == 0, str(res)
    seed = cp.conf_path.with_name("seed.yml")
    seed.write_text(f'_format_version: "{versions.get(version).declarative_format}"\nservices:\n- name: echo\n  url: http://127.0.0.1:{echo_port}\n'
                    f"  routes:\n  - name: r-echo\n    paths: [/echo]\n{extra_plugins}", encoding="utf-8")
    res = run_kong(bins(version), "config", "db_import", str(seed), "-c", str(cp.conf_path))
    assert res.rc == 0, str(res)
    return info, cp


def _data_plane(node_tmp: Path, name: str, version: str, cp, cert):
    return make_spec(node_tmp, name, version, role="data_plane", database="off",
                     cluster_control_plane=f"127.0.0.1:{cp.cluster}", **cert)


def _rows(cp) -> dict[str, dict]:
    code, body = http_json(f"http://127.0.0.1:{cp.admin}/clustering/data-planes")
    assert code == 200, body
    return {row["id"]: row for row in body["data"]}


def _node_id(dp, cp=None) -> str:
    """A 3.x data plane's id from its kong.id; a 2.8 one keeps none: its row on the CP."""
    path = dp.prefix / "kong.id"
    if path.exists():
        return path.read_text().strip()
    rows = poll(lambda: [r for r in _rows(cp).values() if r["version"] == dp.version], 30, "the DP's row")
    assert len(rows) == 1, rows
    return rows[0]["id"]


def _status_hash(dp) -> str:
    return http_json(f"http://127.0.0.1:{dp.status}/status")[1]["configuration_hash"]


@pytest.mark.parametrize(("provider", "version"), provider_params(["3.4.2", "3.9.1"]))
def test_dp_syncs_and_cp_lists_it(pg, bins, cert, echo_port, node_tmp, version):
    info, cp = _control_plane(pg, bins, cert, node_tmp, version, echo_port)
    dp = _data_plane(node_tmp, "dp1", version, cp, cert(version))
    with running_node(bins(version), cp), running_node(bins(version), dp):
        with pytest.raises(OSError):  # the CP serves no proxy
            http_call(f"{cp.proxy_url}/echo/x", timeout=2)
        poll(lambda: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 30, "DP to proxy with the CP's config")
        code, body = http_json(f"http://127.0.0.1:{dp.status}/status")
        dp_hash = body["configuration_hash"]
        assert code == 200 and re.fullmatch(r"[0-9a-f]{32}", dp_hash) and dp_hash != EMPTY
        assert "database" not in body
        assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (200, {"message": "ready"})
        dp_id = _node_id(dp)
        with pytest.raises(OSError):  # no Admin API on a data plane
            http_call(f"http://127.0.0.1:{dp.admin}/", timeout=2)
        row = poll(lambda: _rows(cp).get(dp_id, {}).get("config_hash") == dp_hash and _rows(cp)[dp_id], 30,
                   "the CP's row with the DP's hash")
        assert row["sync_status"] == "normal"
        assert row["version"] == version
        assert row["ip"] == "127.0.0.1"
        assert 1209000 < row["ttl"] <= 1209600
        assert abs(row["last_seen"] - time.time()) < 60
        expected = {"id", "ip", "hostname", "version", "sync_status", "config_hash", "last_seen", "ttl",
                    "updated_at"}
        if versions.get(version).at_least(3, 9):
            expected |= {"labels", "cert_details", "rpc_capabilities"}
        assert set(row) == expected, row
        status, headers, body = http_call(f"http://127.0.0.1:{cp.admin}/clustering/status")
        assert status == 200 and headers.get("deprecation") == "true"
        assert json.loads(body)[dp_id] == {"config_hash": dp_hash, "hostname": row["hostname"], "ip": "127.0.0.1",
                                           "last_seen": json.loads(body)[dp_id]["last_seen"]}
        # a change on the CP's Admin API reaches the DP, with a new hash on both sides
        code, body = http_json(f"http://127.0.0.1:{cp.admin}/services/echo/routes", "POST",
                               {"name": "r-new", "paths": ["/new"]})
        assert code == 201, body
        poll(lambda: http_call(f"{dp.proxy_url}/new/x")[0] == 200, 30, "the new route on the DP")
        new_hash = poll(lambda: _status_hash(dp) not in (dp_hash, EMPTY) and _status_hash(dp), 10, "a new hash")
        poll(lambda: _rows(cp)[dp_id]["config_hash"] == new_hash, 60, "the CP's row with the new hash")


@pytest.mark.parametrize(("provider", "cp_version", "dp_version", "message"), [
    *provider_params([("3.4.2", "3.9.1", "data plane version 3.9.1 is incompatible with older control plane "
                                         "version 3.4.2")]),
    *provider_params([("3.4.2", "2.8.5", "data plane version 2.8.5 is incompatible with control plane version "
                                         "3.4.2 (3.x.y are accepted)")]),
    *provider_params([("2.8.5", "3.4.2", "data plane version 3.4.2 is incompatible with control plane version "
                                         "2.8.5 (2.x.y are accepted)")]),
])
def test_incompatible_dp_refused(pg, bins, cert, echo_port, node_tmp, cp_version, dp_version, message):
    info, cp = _control_plane(pg, bins, cert, node_tmp, cp_version, echo_port)
    dp = _data_plane(node_tmp, "dpx", dp_version, cp, cert(cp_version))
    with running_node(bins(cp_version), cp), running_node(bins(dp_version), dp):
        dp_id = _node_id(dp, cp)
        row = poll(lambda: _rows(cp).get(dp_id), 30, "the refused DP's row")
        assert row["sync_status"] == "kong_version_incompatible"
        assert row["version"] == dp_version
        assert row["ip"] == "127.0.0.1"
        poll(lambda: f"[clustering] {message} [id: {dp_id}" in (cp.prefix / "logs" / "error.log").read_text(), 10,
             "the CP's log line")
        assert _status_hash(dp) == EMPTY
        if versions.get(dp_version).has_ready:
            assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (
                503, {"message": "no configuration available (empty configuration present)"})
        assert http_call(f"{dp.proxy_url}/echo/x")[0] == 404


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_older_minor_dp_accepted_unless_a_configured_plugin_is_missing(pg, bins, cert, echo_port, node_tmp):
    """A 3.4 DP on a 3.9 CP is accepted (kong-facts 9.1); once the CP configures a plugin the
    DP does not have (redirect came with 3.9), the DP keeps its last configuration and the
    CP lists it as plugin_set_incompatible."""
    info, cp = _control_plane(pg, bins, cert, node_tmp, "3.9.1", echo_port)
    dp = _data_plane(node_tmp, "dpo", "3.4.2", cp, cert("3.9.1"))
    with running_node(bins("3.9.1"), cp), running_node(bins("3.4.2"), dp):
        poll(lambda: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 30, "old-minor DP proxying")
        dp_id = _node_id(dp)
        row = poll(lambda: _rows(cp).get(dp_id, {}).get("sync_status") == "normal" and _rows(cp)[dp_id], 30, "row")
        assert row["version"] == "3.4.2"
        assert "data plane minor version 3.4.2 is different to control plane minor version 3.9.1" in \
            (cp.prefix / "logs" / "error.log").read_text()
        synced = _status_hash(dp)
        code, body = http_json(f"http://127.0.0.1:{cp.admin}/routes/r-echo/plugins", "POST",
                               {"name": "redirect", "config": {"location": "https://example.test/"}})
        assert code == 201, body
        code, body = http_json(f"http://127.0.0.1:{cp.admin}/services/echo/routes", "POST",
                               {"name": "r-after", "paths": ["/after"]})
        assert code == 201, body
        poll(lambda: _rows(cp)[dp_id]["sync_status"] == "plugin_set_incompatible", 60,
             "the DP marked plugin_set_incompatible")
        assert _status_hash(dp) == synced and http_call(f"{dp.proxy_url}/after/x")[0] == 404
        assert http_call(f"{dp.proxy_url}/echo/x")[0] == 200, "the DP keeps serving its last configuration"


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_dp_serves_from_cache_when_cp_down_and_after_restart(pg, bins, cert, echo_port, node_tmp):
    version = "3.9.1"
    info, cp = _control_plane(pg, bins, cert, node_tmp, version, echo_port)
    dp = _data_plane(node_tmp, "dpc", version, cp, cert(version))
    kong = bins(version)
    res = run_kong(kong, "start", "-c", str(cp.conf_path))  # CP first: no initial retry wait
    cp_pid = node_pid(cp.prefix)
    try:
        assert res.rc == 0, str(res)
        with running_node(kong, dp):
            poll(lambda: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 30, "DP synced")
            synced = _status_hash(dp)
            assert run_kong(kong, "stop", "-p", str(cp.prefix)).rc == 0
            poll(lambda: not alive(cp_pid), 10, "the CP gone")  # real `kong stop` does not wait
            assert http_call(f"{dp.proxy_url}/echo/x")[0] == 200
            res = run_kong(kong, "restart", "-c", str(dp.conf_path))
            assert res.rc == 0, str(res)
            poll(lambda: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 10, "the DP serving from its cache")
            assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (200, {"message": "ready"})
            assert _status_hash(dp) == synced
            log = poll(lambda: "connection to control plane" in (dp.prefix / "logs" / "error.log").read_text()
                       and (dp.prefix / "logs" / "error.log").read_text(), 30, "the broken-connection log")
            assert re.search(rf"connection to control plane wss://127\.0\.0\.1:{cp.cluster}/v1/outlet\?node_id="
                             r"\S+ broken: .* \(retrying after \d+ seconds\)", log), log[-2000:]
    finally:
        kill_node(cp.prefix, cp_pid)
        kill_node(dp.prefix)
