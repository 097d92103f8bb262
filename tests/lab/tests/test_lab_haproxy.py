"""The lab with HAProxy: set-up, runtime API, and the smoke test (shift, drain, graceful quit).

One lab for the module (2 X nodes, 1 Y node) of real Kong 3.4.2 with 3.9.1 installed for Y.
Tests run in file order; the smoke test quits x1, and the last tests take the lab down and
check nothing is left behind.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labfixtures import LabHandle, lab_cli, poll, running_lab

from labctl.haproxy import RuntimeAPI
from labctl.lab import http_get
from labctl.load import LoadGenerator, kong_version
from labctl.paths import ECHO_PORT, FRONTEND_PORT, HAPROXY_ADMIN_TCP, PG_PORT, node_host
from labctl.proc import is_alive, port_in_use

X_VERSION = "3.4.2"
Y_VERSION = "3.9.1"
DRAIN_BIT = 0x08  # srv_admin_state: forced drain


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHandle]:
    with running_lab("--x-version", X_VERSION, "--y-version", Y_VERSION, "--x-nodes", "2",
                     "--y-nodes", "1", "--lb", "haproxy", kong="real") as handle:
        yield handle


def _api(lab: LabHandle) -> RuntimeAPI:
    return RuntimeAPI(unix_path=lab.lb["kong_lb_haproxy_socket"])


def test_up_prints_inventory_path_last_and_never_the_password(lab: LabHandle) -> None:
    assert lab.up_stdout.strip().splitlines()[-1] == str(lab.inventory_path)
    assert lab.inventory_path.name == "inventory.yml"
    password = lab.group_vars["kong_pg_password"]
    assert len(password) >= 16
    assert password not in lab.up_stdout + lab.up_stderr
    assert stat.S_IMODE(lab.inventory_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((lab.run_dir / "secrets.json").stat().st_mode) == 0o600


def test_inventory_describes_x_y_and_lb(lab: LabHandle) -> None:
    x = lab.hosts("kong_x")
    y = lab.hosts("kong_y")
    assert sorted(x) == ["x1", "x2"] and sorted(y) == ["y1"]
    assert x["x2"]["kong_proxy_listen"] == f"{node_host('x', 2)}:8000"  # 127.0.1.2 on the default net
    assert x["x2"]["kong_version"] == X_VERSION and y["y1"]["kong_version"] == Y_VERSION
    for host in (*x.values(), *y.values()):
        assert Path(host["kong_executable"]).is_file()
    assert Path(x["x1"]["kong_conf_path"]).is_file()
    assert stat.S_IMODE(Path(x["x1"]["kong_conf_path"]).stat().st_mode) == 0o600
    # Y: installed, not configured, not started
    assert not Path(y["y1"]["kong_conf_path"]).exists()
    assert not port_in_use(node_host("y", 1), 8000)
    assert lab.lb["kong_lb_driver"] == "haproxy" and lab.lb["kong_lb_backend"] == "kong_proxy"
    assert Path(lab.lb["kong_lb_haproxy_state_file"]).is_file()
    gv = lab.group_vars
    assert (gv["kong_pg_host"], gv["kong_pg_port"], gv["kong_pg_user"], gv["kong_pg_database"]) == (
        "127.0.0.1", PG_PORT, "kong", "kong")


def test_ansible_reads_the_inventory_and_reaches_every_host(lab: LabHandle) -> None:
    venv_bin = Path(lab.group_vars["ansible_python_interpreter"]).parent
    listed = subprocess.run([str(venv_bin / "ansible-inventory"), "-i", str(lab.inventory_path), "--list"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert sorted(data["kong_x"]["hosts"]) == ["x1", "x2"] and data["kong_lb"]["hosts"] == ["lb1"]
    assert data["_meta"]["hostvars"]["y1"]["kong_lb_server_name"] == "y1"
    ping = subprocess.run([str(venv_bin / "ansible"), "-i", str(lab.inventory_path), "all", "-m", "ping"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("| SUCCESS =>") == 4  # x1 x2 y1 lb1


def test_database_accepts_the_inventory_credentials(lab: LabHandle) -> None:
    import psycopg2

    gv = lab.group_vars
    conn = psycopg2.connect(host=gv["kong_pg_host"], port=gv["kong_pg_port"], user=gv["kong_pg_user"],
                            password=gv["kong_pg_password"], dbname=gv["kong_pg_database"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM schema_meta")
            row = cur.fetchone()
            assert row is not None and row[0] > 0  # bootstrapped by the X binary
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=gv["kong_pg_host"], port=gv["kong_pg_port"], user="kong",
                         password="wrong", dbname="kong", connect_timeout=3)


def test_runtime_socket_shows_x_at_100_and_y_at_0(lab: LabHandle) -> None:
    states = _api(lab).servers_state()
    assert set(states) == {"x1", "x2", "y1"}
    assert states["x1"]["srv_uweight"] == "100" and states["x2"]["srv_uweight"] == "100"
    assert states["y1"]["srv_uweight"] == "0"
    assert states["x1"]["srv_op_state"] == "2"  # running
    # the TCP admin socket answers the same
    host, port = lab.lb["kong_lb_haproxy_admin_tcp"].split(":")
    tcp_states = RuntimeAPI(tcp=(host, int(port))).servers_state()
    assert tcp_states["x2"]["srv_uweight"] == "100"
    # y1 is not running: its health check marks it DOWN
    poll(lambda: _api(lab).server_stat("y1")["status"].startswith("DOWN"), 10, "y1 DOWN in show stat")


def test_frontend_proxies_seeded_routes_through_kong_x(lab: LabHandle) -> None:
    for target in lab.load_targets:
        status, headers, body = http_get(lab.frontend + target["path"], headers=target["headers"])
        assert status == 200, (target, body[:200])
        assert kong_version(headers.get("via"), headers.get("server")) == X_VERSION
        assert json.loads(body)["echo"] == "lab-echo"
    # key-auth really is enforced on the keyed route
    keyed = [t for t in lab.load_targets if "keyauth" in t["name"]][0]
    status = http_get(lab.frontend + keyed["path"])[0]
    assert status == 401


def test_status_reports_every_component_alive(lab: LabHandle) -> None:
    res = lab_cli("status", "--json", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    comps = {c["name"]: c for c in data["components"]}
    for name in ("postgres", "echo", "haproxy", "x1", "x2"):
        assert comps[name]["alive"], comps[name]
    assert comps["y1"]["alive"] is False
    assert lab_cli("up", check=False).returncode != 0  # a second lab is refused


STARTED_OUTSIDE: dict[str, int] = {}


def test_a_y_node_started_like_the_collection_does_gets_no_traffic_at_weight_0(lab: LabHandle) -> None:
    x1, y1 = lab.host("x1"), lab.host("y1")
    conf = Path(x1["kong_conf_path"]).read_text()
    conf = conf.replace(x1["kong_prefix"], y1["kong_prefix"]).replace(f"{node_host('x', 1)}:", f"{node_host('y', 1)}:")
    Path(y1["kong_prefix"]).mkdir(parents=True)
    Path(y1["kong_conf_path"]).write_text(conf)
    Path(y1["kong_conf_path"]).chmod(0o600)
    for args in (["migrations", "up"], ["start"]):
        res = subprocess.run([y1["kong_executable"], *args, "-c", y1["kong_conf_path"]],
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    STARTED_OUTSIDE["y1"] = int((Path(y1["kong_prefix"]) / "pids" / "nginx.pid").read_text())
    api = _api(lab)
    poll(lambda: api.server_stat("y1")["status"] == "UP", 15, "HAProxy to see y1 UP")
    assert api.servers_state()["y1"]["srv_uweight"] == "0"
    for _i in range(20):
        status, headers, _body = http_get(lab.frontend + "/")
        assert status == 200
        assert kong_version(headers.get("via"), headers.get("server")) == X_VERSION
    status, headers, _body = http_get(y1["kong_proxy_url"] + "/")  # y1 itself serves
    assert status == 200 and kong_version(headers.get("via"), headers.get("server")) == Y_VERSION
    res = lab_cli("status", "--json", check=False)
    comps = {c["name"]: c for c in json.loads(res.stdout)["components"]}
    assert comps["y1"]["alive"] and "started outside the lab" in comps["y1"]["note"]


def test_smoke_shift_drain_and_graceful_quit_under_load_gives_zero_failures(lab: LabHandle) -> None:
    api = _api(lab)
    x1 = lab.host("x1")
    pid_x1 = int((Path(x1["kong_prefix"]) / "pids" / "nginx.pid").read_text())
    gen = LoadGenerator(lab.frontend, lab.load_targets, duration=60, rate=150, concurrency=6)
    gen.start()
    try:
        poll(lambda: sum(s.ok for s in gen.samples) >= 100, 15, "load flowing through HAProxy")
        stot_x2_before = int(api.server_stat("x2")["stot"])
        api.set_weight("x1", 0)
        api.set_weight("x2", 100)
        api.set_state("x1", "drain")
        state = api.servers_state()
        assert state["x1"]["srv_uweight"] == "0"
        assert int(state["x1"]["srv_admin_state"]) & DRAIN_BIT
        poll(lambda: int(api.server_stat("x1")["scur"]) == 0, 15, "x1 current sessions to reach 0")
        stot_x1_drained = int(api.server_stat("x1")["stot"])
        n = len(gen.samples)
        poll(lambda: len(gen.samples) >= n + 150, 15, "more requests after the drain")
        assert int(api.server_stat("x1")["stot"]) == stot_x1_drained  # nothing new went to x1
        res = subprocess.run([x1["kong_executable"], "quit", "-p", x1["kong_prefix"]],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        # `kong quit` returns once the PID file is gone; nginx deletes it before it exits.
        assert not (Path(x1["kong_prefix"]) / "pids" / "nginx.pid").exists()
        poll(lambda: not is_alive(pid_x1), 10, "x1's nginx master to exit after kong quit")
        n = len(gen.samples)
        poll(lambda: len(gen.samples) >= n + 150, 15, "more requests after x1 quit")
    finally:
        gen.stop()
    summary = gen.summary()
    assert summary["failed"] == 0, summary["failed_by_reason"]
    # HAProxy keeps client connections open through weight changes, drains and node exits
    assert summary["stale_keepalive_retries"] == 0
    assert summary["requests"] >= 400
    assert summary["by_version"] == {X_VERSION: summary["requests"]}
    assert int(api.server_stat("x2")["stot"]) > stot_x2_before  # traffic reached x2


def test_status_exits_3_when_a_node_is_down(lab: LabHandle) -> None:
    res = lab_cli("status", check=False)
    assert res.returncode == 3
    assert "DEAD" in res.stdout


def test_down_stops_every_pid_and_removes_run_dir(lab: LabHandle) -> None:
    pids = sorted(set(lab.pids) | set(lab.collect_pids()) | set(STARTED_OUTSIDE.values()))
    assert len(pids) >= 5  # postgres (+ its children), echo, haproxy, x2, y1
    assert all(is_alive(p) for p in STARTED_OUTSIDE.values())
    started = time.monotonic()
    lab_cli("down")
    assert time.monotonic() - started < 60
    assert [p for p in pids if is_alive(p)] == []
    assert not lab.run_dir.exists()
    for host, port in (("127.0.0.1", PG_PORT), ("127.0.0.1", FRONTEND_PORT), ("127.0.0.1", ECHO_PORT),
                       (node_host("x", 2), 8000), (node_host("x", 2), 8001), HAPROXY_ADMIN_TCP):
        assert not port_in_use(host, port), f"{host}:{port} still accepts connections"


def test_down_is_idempotent_and_status_says_down() -> None:
    assert lab_cli("down", check=False).returncode == 0
    assert lab_cli("status", check=False).returncode == 3
