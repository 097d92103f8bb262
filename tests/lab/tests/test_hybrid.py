"""Hybrid mode (kong-facts 9, 6.4) on both providers: the control plane's
`/clustering/data-planes` (fields by version, sync_status, config_hash), DP sync and
changes, the version gate, plugins a DP lacks, and the DP cache.

Real nodes use one shared-mode cluster certificate (`kong hybrid gen_cert`, as the lab
does); the emulator accepts the same settings and talks plain HTTP (ARCHITECTURE.md).
Every DP connects from 127.0.0.1, so the CP lists `ip: 127.0.0.1` for all of them."""

from __future__ import annotations

import contextlib
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


def _synced_row(cp, dp, dp_id: str) -> dict:
    dp_hash = _status_hash(dp)
    return poll(lambda: _rows(cp).get(dp_id, {}).get("config_hash") == dp_hash and _rows(cp)[dp_id], 60,
                f"the CP's row of {dp.version} with the DP's hash")


@pytest.mark.parametrize("provider", ["emulated", "real"])
def test_a_39_cp_with_a_39_and_a_34_dp(pg, bins, cert, echo_port, node_tmp):
    """Sync, `/clustering/data-planes` by version, a change reaching both DPs, a plugin the
    3.4 DP lacks (redirect came with 3.9: plugin_set_incompatible, it keeps its last
    configuration), then the CP down: both serve from their cache, also after a restart."""
    info, cp = _control_plane(pg, bins, cert, node_tmp, "3.9.1", echo_port)
    new = _data_plane(node_tmp, "dp39", "3.9.1", cp, cert("3.9.1"))
    old = _data_plane(node_tmp, "dp34", "3.4.2", cp, cert("3.9.1"))
    res = run_kong(bins("3.9.1"), "start", "-c", str(cp.conf_path))  # CP first: no initial retry wait
    cp_pid = node_pid(cp.prefix)
    try:
        assert res.rc == 0, str(res)
        with running_node(bins("3.9.1"), new), running_node(bins("3.4.2"), old):
            with pytest.raises(OSError):  # the CP serves no proxy
                http_call(f"{cp.proxy_url}/echo/x", timeout=2)
            for dp in (new, old):
                poll(lambda dp=dp: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 30, f"{dp.version} DP synced")
                code, body = http_json(f"http://127.0.0.1:{dp.status}/status")
                assert code == 200 and re.fullmatch(r"[0-9a-f]{32}", body["configuration_hash"])
                assert body["configuration_hash"] != EMPTY and "database" not in body
                assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (200, {"message": "ready"})
                with pytest.raises(OSError):  # no Admin API on a data plane
                    http_call(f"http://127.0.0.1:{dp.admin}/", timeout=2)
            ids = {dp.version: _node_id(dp) for dp in (new, old)}
            for dp in (new, old):
                row = _synced_row(cp, dp, ids[dp.version])
                assert (row["sync_status"], row["version"], row["ip"]) == ("normal", dp.version, "127.0.0.1")
                assert 1209000 < row["ttl"] <= 1209600 and abs(row["last_seen"] - time.time()) < 60
                assert set(row) == {"id", "ip", "hostname", "version", "sync_status", "config_hash", "last_seen",
                                    "ttl", "updated_at", "labels", "cert_details", "rpc_capabilities"}, row
            assert "data plane minor version 3.4.2 is different to control plane minor version 3.9.1" in \
                (cp.prefix / "logs" / "error.log").read_text()
            status, headers, body = http_call(f"http://127.0.0.1:{cp.admin}/clustering/status")
            assert status == 200 and headers.get("deprecation") == "true"
            assert set(json.loads(body)[ids["3.9.1"]]) == {"config_hash", "hostname", "ip", "last_seen"}

            # a change on the CP reaches both, with a new hash on both sides
            synced = {dp.version: _status_hash(dp) for dp in (new, old)}
            code, body = http_json(f"http://127.0.0.1:{cp.admin}/services/echo/routes", "POST",
                                   {"name": "r-new", "paths": ["/new"]})
            assert code == 201, body
            for dp in (new, old):
                poll(lambda dp=dp: http_call(f"{dp.proxy_url}/new/x")[0] == 200, 30, f"the new route on {dp.version}")
                assert _status_hash(dp) not in (synced[dp.version], EMPTY)
                _synced_row(cp, dp, ids[dp.version])

            # a plugin the 3.4 DP does not have: it keeps its configuration
            synced = {dp.version: _status_hash(dp) for dp in (new, old)}
            code, body = http_json(f"http://127.0.0.1:{cp.admin}/routes/r-echo/plugins", "POST",
                                   {"name": "redirect", "config": {"location": "https://example.test/"}})
            assert code == 201, body
            code, body = http_json(f"http://127.0.0.1:{cp.admin}/services/echo/routes", "POST",
                                   {"name": "r-after", "paths": ["/after"]})
            assert code == 201, body
            poll(lambda: http_call(f"{new.proxy_url}/after/x")[0] == 200, 30, "the 3.9 DP with the redirect")
            poll(lambda: _rows(cp)[ids["3.4.2"]]["sync_status"] == "plugin_set_incompatible", 60,
                 "the 3.4 DP marked plugin_set_incompatible")
            assert _status_hash(old) == synced["3.4.2"] and http_call(f"{old.proxy_url}/after/x")[0] == 404
            assert http_call(f"{old.proxy_url}/new/x")[0] == 200, "the 3.4 DP serves its last configuration"

            # the CP goes away: both serve from their cache, also after a restart
            assert run_kong(bins("3.9.1"), "stop", "-p", str(cp.prefix)).rc == 0
            poll(lambda: not alive(cp_pid), 10, "the CP gone")  # real `kong stop` does not wait
            cached = _status_hash(new)
            res = run_kong(bins("3.9.1"), "restart", "-c", str(new.conf_path))
            assert res.rc == 0, str(res)
            poll(lambda: http_call(f"{new.proxy_url}/after/x")[0] == 200, 10, "the DP serving from its cache")
            assert http_json(f"http://127.0.0.1:{new.status}/status/ready") == (200, {"message": "ready"})
            assert _status_hash(new) == cached
            assert http_call(f"{old.proxy_url}/new/x")[0] == 200
            log = poll(lambda: "connection to control plane" in (new.prefix / "logs" / "error.log").read_text()
                       and (new.prefix / "logs" / "error.log").read_text(), 30, "the broken-connection log")
            assert re.search(rf"connection to control plane wss://127\.0\.0\.1:{cp.cluster}/v1/outlet\?node_id="
                             r"\S+ broken: .* \(retrying after \d+ seconds\)", log), log[-2000:]
    finally:
        kill_node(cp.prefix, cp_pid)


@pytest.mark.parametrize(("provider", "cp_version", "dp_versions"), [
    *provider_params([("3.4.2", ("3.9.1", "2.8.5"))]),
    *provider_params([("2.8.5", ("3.4.2",))]),
])
def test_incompatible_dps_refused(pg, bins, cert, echo_port, node_tmp, cp_version, dp_versions):
    """kong-facts 9.1: a newer DP minor and another major are refused, logged by the CP
    and listed as kong_version_incompatible; the DP gets nothing."""
    messages = {
        ("3.4.2", "3.9.1"): "data plane version 3.9.1 is incompatible with older control plane version 3.4.2",
        ("3.4.2", "2.8.5"): "data plane version 2.8.5 is incompatible with control plane version 3.4.2 "
                            "(3.x.y are accepted)",
        ("2.8.5", "3.4.2"): "data plane version 3.4.2 is incompatible with control plane version 2.8.5 "
                            "(2.x.y are accepted)",
    }
    info, cp = _control_plane(pg, bins, cert, node_tmp, cp_version, echo_port)
    dps = [_data_plane(node_tmp, f"dp{v.replace('.', '')}", v, cp, cert(cp_version)) for v in dp_versions]
    with contextlib.ExitStack() as stack:
        stack.enter_context(running_node(bins(cp_version), cp))
        for dp in dps:
            stack.enter_context(running_node(bins(dp.version), dp))
        for dp in dps:
            dp_id = _node_id(dp, cp)
            row = poll(lambda dp_id=dp_id: _rows(cp).get(dp_id), 30, f"the refused {dp.version} DP's row")
            assert (row["sync_status"], row["version"], row["ip"]) == \
                ("kong_version_incompatible", dp.version, "127.0.0.1")
            message = messages[(cp_version, dp.version)]
            poll(lambda dp_id=dp_id, message=message: f"[clustering] {message} [id: {dp_id}"
                 in (cp.prefix / "logs" / "error.log").read_text(), 10, "the CP's log line")
            assert _status_hash(dp) == EMPTY
            if versions.get(dp.version).has_ready:
                assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (
                    503, {"message": "no configuration available (empty configuration present)"})
            assert http_call(f"{dp.proxy_url}/echo/x")[0] == 404
