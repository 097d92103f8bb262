"""Hybrid mode (kong-facts 9, 6.4): CP outlet, DP sync, version gate, DP cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from nodefixtures import (
    NodePg,
    alive,
    http_call,
    http_json,
    kill_node,
    kong_bin,
    make_spec,
    node_pid,
    poll,
    run_kong,
    running_node,
)

from kongemu import versions
from kongemu.httpserver import HTTPServer, Request, Response

EMPTY = "0" * 32


class _Log:
    def error(self, msg: str) -> None:
        del msg

    warn = info = debug = notice = error


@pytest.fixture(scope="module")
def pg():
    cluster = NodePg()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def echo():
    def handle(request: Request) -> Response:
        return Response(200, [("Content-Type", "application/json")],
                        json.dumps({"path": request.target}).encode())

    srv = HTTPServer(_Log())
    srv.add_listener("echo", "127.0.0.1", 0, handle)
    port = srv._listeners[0].sock.getsockname()[1]  # noqa: SLF001
    srv.start()
    yield port
    srv.close_now()


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    return lambda version: kong_bin(version, root)


def _store(info, version: str):
    from kongemu import pg as kpg
    from kongemu import schema
    from kongemu.conf import KongConf

    return schema.EntityStore(kpg.connect(KongConf(info.conf())), versions.get(version))


def _control_plane(pg, bins, tmp_path: Path, version: str, echo_port: int):
    info = pg.fresh()
    cp = make_spec(tmp_path, "cp", version, role="control_plane", **info.conf())
    res = run_kong(bins(version), "migrations", "bootstrap", "-c", str(cp.conf_path))
    assert res.rc == 0, str(res)
    store = _store(info, version)
    try:
        svc = store.insert("services", {"name": "echo", "url": f"http://127.0.0.1:{echo_port}"})
        store.insert("routes", {"name": "r-echo", "paths": ["/echo"], "service": {"id": svc["id"]}})
    finally:
        store.close()
    return info, cp


def _data_plane(tmp_path: Path, name: str, version: str, cp):
    return make_spec(tmp_path, name, version, role="data_plane", database="off",
                     cluster_control_plane=f"127.0.0.1:{cp.cluster}")


def _rows(info, version: str) -> dict[str, dict]:
    store = _store(info, version)
    try:
        return {row["id"]: row for row in store.data_planes(1000).data}
    finally:
        store.close()


def _node_id(spec) -> str:
    return (spec.prefix / "kong.id").read_text().strip()


def test_dp_syncs_and_cp_lists_it(pg, bins, echo, tmp_path):
    version = "3.4.3"
    info, cp = _control_plane(pg, bins, tmp_path, version, echo)
    dp = _data_plane(tmp_path, "dp1", version, cp)
    with running_node(bins(version), cp), running_node(bins(version), dp):
        # the CP serves no proxy
        with pytest.raises(OSError):
            http_call(f"{cp.proxy_url}/echo/x", timeout=2)
        status = poll(lambda: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 15,
                      "DP to proxy with the CP's config")
        assert status
        code, body = http_json(f"http://127.0.0.1:{dp.status}/status")
        dp_hash = body["configuration_hash"]
        assert code == 200 and dp_hash != EMPTY and "database" not in body
        assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (200, {"message": "ready"})
        row = poll(lambda: _rows(info, version).get(_node_id(dp), {}).get("config_hash") == dp_hash
                   and _rows(info, version)[_node_id(dp)], 15, "the CP's row with the DP's hash")
        assert row["sync_status"] == "normal"
        assert row["version"] == version
        assert row["ip"] == "127.0.0.1"
        assert row["ttl"] > 1209000
        assert abs(row["last_seen"] - time.time()) < 30
        # a change on the CP reaches the DP (CP learns it through cluster_events)
        store = _store(info, version)
        try:
            svc = store.page("services").data[0]
            store.insert("routes", {"name": "r-new", "paths": ["/new"],
                                    "service": {"id": svc["id"]}})
            store.post_invalidation("00000000-0000-4000-8000-000000000001", "routes:r-new")
        finally:
            store.close()
        poll(lambda: http_call(f"{dp.proxy_url}/new/x")[0] == 200, 15, "the new route on the DP")
        new_hash = http_json(f"http://127.0.0.1:{dp.status}/status")[1]["configuration_hash"]
        assert new_hash != dp_hash
        poll(lambda: _rows(info, version)[_node_id(dp)]["config_hash"] == new_hash, 15,
             "the CP's row with the new hash")
        # admin API of the CP, when admin.py provides it
        code, body = http_json(f"http://127.0.0.1:{cp.admin}/clustering/data-planes")
        if code == 200:
            listed = {d["id"]: d for d in body["data"]}
            assert listed[_node_id(dp)]["sync_status"] == "normal"


@pytest.mark.parametrize("dp_version,message", [
    ("3.6.1", "data plane version 3.6.1 is incompatible with older control plane version 3.4.3"),
    ("2.8.4", "data plane version 2.8.4 is incompatible with control plane version 3.4.3 "
              "(3.x.y are accepted)"),
])
def test_incompatible_dp_refused(pg, bins, echo, tmp_path, dp_version, message):
    cp_version = "3.4.3"
    info, cp = _control_plane(pg, bins, tmp_path, cp_version, echo)
    dp = _data_plane(tmp_path, "dpx", dp_version, cp)
    with running_node(bins(cp_version), cp), running_node(bins(dp_version), dp):
        row = poll(lambda: _rows(info, cp_version).get(_node_id(dp)), 15, "the refused DP's row")
        assert row["sync_status"] == "kong_version_incompatible"
        assert row["version"] == dp_version
        cp_log = (cp.prefix / "logs" / "error.log").read_text()
        assert f"[clustering] {message} [id: {_node_id(dp)}" in cp_log
        dp_log = poll(lambda: "connection to control plane" in
                      (dp.prefix / "logs" / "error.log").read_text()
                      and (dp.prefix / "logs" / "error.log").read_text(), 10, "the DP's log line")
        assert f"broken: {message} (retrying after " in dp_log
        assert f"wss://127.0.0.1:{cp.cluster}/v1/outlet?node_id=" in dp_log
        code, body = http_json(f"http://127.0.0.1:{dp.status}/status")
        assert body["configuration_hash"] == EMPTY
        if versions.get(dp_version).has_ready:
            assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (
                503, {"message": "no configuration available (configuration hash is not "
                                 "initialized)"})
        assert http_call(f"{dp.proxy_url}/echo/x")[0] == 404


def test_older_minor_dp_accepted(pg, bins, echo, tmp_path):
    info, cp = _control_plane(pg, bins, tmp_path, "3.4.3", echo)
    dp = _data_plane(tmp_path, "dpo", "3.2.2", cp)
    with running_node(bins("3.4.3"), cp), running_node(bins("3.2.2"), dp):
        poll(lambda: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 15, "old-minor DP proxying")
        row = poll(lambda: _rows(info, "3.4.3").get(_node_id(dp)), 15, "row")
        assert row["sync_status"] == "normal"
        assert "data plane minor version 3.2.2 is different to control plane minor version " \
               "3.4.3" in (cp.prefix / "logs" / "error.log").read_text()


def test_dp_serves_from_cache_when_cp_down_and_after_restart(pg, bins, echo, tmp_path):
    version = "3.9.1"
    info, cp = _control_plane(pg, bins, tmp_path, version, echo)
    dp = _data_plane(tmp_path, "dpc", version, cp)
    kong = bins(version)
    res = run_kong(kong, "start", "-c", str(cp.conf_path))   # CP first: no initial retry wait
    cp_pid = node_pid(cp.prefix)
    try:
        assert res.rc == 0, str(res)
        with running_node(kong, dp):
            poll(lambda: http_call(f"{dp.proxy_url}/echo/x")[0] == 200, 15, "DP synced")
            synced = http_json(f"http://127.0.0.1:{dp.status}/status")[1]["configuration_hash"]
            assert run_kong(kong, "stop", "-p", str(cp.prefix)).rc == 0
            assert not alive(cp_pid)
            _serves_from_cache(kong, dp, synced)
    finally:
        kill_node(cp.prefix, cp_pid)
        kill_node(dp.prefix)


def _serves_from_cache(kong, dp, synced: str) -> None:
    """The DP keeps serving while its CP is down, also after its own restart."""
    assert http_call(f"{dp.proxy_url}/echo/x")[0] == 200
    poll(lambda: "connection to control plane" in
         (dp.prefix / "logs" / "error.log").read_text(), 10, "the broken-connection log")
    res = run_kong(kong, "restart", "-c", str(dp.conf_path))
    assert res.rc == 0, str(res)
    assert http_call(f"{dp.proxy_url}/echo/x")[0] == 200
    assert http_json(f"http://127.0.0.1:{dp.status}/status/ready") == (200, {"message": "ready"})
    assert http_json(f"http://127.0.0.1:{dp.status}/status")[1]["configuration_hash"] == synced
