"""Lab pieces that need no running process: seed, configs, inventory, options, the CLI wrapper."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from labfixtures import LAB, REPO

from labctl import LabError
from labctl.haproxy import HAProxySetup, LbServer, RuntimeAPI
from labctl.inventory import build as build_inventory
from labctl.kong import KongNode, PgSettings, declarative_format
from labctl.lab import UpOptions
from labctl.nginx import NginxSetup, render_upstream
from labctl.paths import node_host
from labctl.seed import generate
from labctl.ssh import SshSetup

SERVERS = [
    LbServer("x1", "127.0.1.1", 8000, 8007, 100),
    LbServer("x2", "127.0.1.2", 8000, 8007, 100),
    LbServer("y1", "127.0.2.1", 8000, 8007, 0),
]


def test_seed_has_root_route_services_routes_consumers_and_keyauth() -> None:
    seed = generate(50, "3.0", "127.0.0.1", 18080)
    cfg = seed.config
    assert cfg["_format_version"] == "3.0"
    assert 40 <= seed.total <= 60
    routes = {r["name"]: r for r in cfg["routes"]}
    assert routes["root"]["paths"] == ["/"] and "hosts" not in routes["root"]
    assert routes["svc3-host"]["hosts"] == ["svc3.lab"]
    assert routes["svc3-path"]["paths"] == ["/svc3"]
    service_ids = {s["id"] for s in cfg["services"]}
    assert all(r["service"] in service_ids for r in cfg["routes"])  # db_export shape: plain ids
    consumer_ids = {c["id"] for c in cfg["consumers"]}
    assert all(c["consumer"] in consumer_ids for c in cfg["keyauth_credentials"])
    keyauth = [p for p in cfg["plugins"] if p["name"] == "key-auth"]
    assert keyauth and all(p["route"] in {r["id"] for r in cfg["routes"]} for p in keyauth)
    assert cfg["upstreams"] and cfg["targets"]
    upstream_names = {u["name"] for u in cfg["upstreams"]}
    assert all(s["host"] in upstream_names | {"127.0.0.1"} and s["port"] == 18080 for s in cfg["services"])
    services = {s["name"]: s for s in cfg["services"]}
    assert services["svc1"]["host"] == "up1.lab" and services["svc2"]["host"] == "127.0.0.1"
    assert routes["svc2-regex"]["paths"] == ["~/regex2/\\d+$"]
    old_routes = {r["name"]: r for r in generate(50, "2.1", "h", 1).config["routes"]}
    assert old_routes["svc2-regex"]["paths"] == ["/regex2/\\d+$"]  # 2.x: a regex by its characters
    by_name = {p["name"]: p for p in cfg["plugins"]}
    assert by_name["rate-limiting"]["service"] == services["svc1"]["id"]
    assert by_name["request-transformer"]["route"] == routes["svc2-regex"]["id"]
    assert by_name["request-transformer"]["config"]["add"]["headers"] == ["x-lab-route:svc2-regex"]
    names = [t["name"] for t in seed.load_targets]
    assert names[0] == "root" and any("keyauth" in n for n in names) and "svc2-regex" in names


def test_seed_is_deterministic_and_scales_to_10000_entities(tmp_path: Path) -> None:
    assert generate(50, "3.0", "h", 1).config == generate(50, "3.0", "h", 1).config
    seed = generate(10_000, "3.0", "127.0.0.1", 18080)
    seed.write(tmp_path / "kong.yml")
    assert 9_500 <= seed.total <= 10_500
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loaded = yaml.load((tmp_path / "kong.yml").read_text(), Loader=loader)  # noqa: S506 - safe loader
    assert len(loaded["routes"]) == seed.counts["routes"]
    ids = [e["id"] for key in ("services", "routes", "consumers", "plugins") for e in loaded[key]]
    assert len(ids) == len(set(ids))


def test_declarative_format_by_kong_version() -> None:
    assert declarative_format("2.8.4") == "2.1"
    assert declarative_format("3.4.3") == "3.0"
    assert generate(10, "2.1", "h", 1).config["_format_version"] == "2.1"


def test_haproxy_config_has_runtime_sockets_state_file_checks_and_weights(tmp_path: Path) -> None:
    cfg = HAProxySetup(tmp_path, "127.0.0.1", 18000, ("127.0.0.1", 18999), SERVERS).render()
    assert f"stats socket {tmp_path}/admin.sock mode 600 level admin" in cfg
    assert "stats socket ipv4@127.0.0.1:18999 level admin" in cfg
    assert f"server-state-file {tmp_path}/server-state" in cfg
    assert "load-server-state-from-file global" in cfg
    assert "balance roundrobin" in cfg and "option httpchk GET /status" in cfg
    assert "retry-on conn-failure empty-response response-timeout" in cfg
    assert "server x1 127.0.1.1:8000 weight 100 check port 8007" in cfg
    assert "server y1 127.0.2.1:8000 weight 0 check port 8007" in cfg
    assert "bind 127.0.0.1:18000" in cfg
    for line in cfg.splitlines():  # loopback only
        if line.strip().startswith("bind "):
            assert line.split()[1].startswith("127.")


def test_haproxy_config_is_valid_for_the_installed_haproxy(tmp_path: Path) -> None:
    setup = HAProxySetup(tmp_path, "127.0.0.1", 18000, ("127.0.0.1", 18999), SERVERS)
    setup.write()
    setup.check_config()  # haproxy -c; raises LabError with haproxy's message


def test_nginx_upstream_marks_weight_zero_servers_down_and_names_every_line(tmp_path: Path) -> None:
    text = render_upstream(SERVERS)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("server ")]
    assert lines[0] == "server 127.0.1.1:8000 weight=100 max_fails=1 fail_timeout=2s;  # x1"
    assert lines[2] == "server 127.0.2.1:8000 weight=1 down;  # y1"
    assert "weight=0" not in text
    setup = NginxSetup(tmp_path, "127.0.0.1", 18000, SERVERS)
    setup.write()
    setup.test_config()  # nginx -t accepts it
    conf = setup.config.read_text()
    assert f"include {setup.upstream_file};" in conf
    assert "proxy_next_upstream error timeout http_502 http_503;" in conf
    assert "listen 127.0.0.1:18000;" in conf


def test_kong_conf_uses_kong_option_names_and_is_private(tmp_path: Path) -> None:
    node = KongNode("x2", "x", 2, "3.9.1", tmp_path / "kong", tmp_path)
    pg = PgSettings("127.0.0.1", 54329, "kong", "s3cret-pw", "kong")
    node.write_conf(pg, 1.0)
    text = node.conf_path.read_text()
    assert (node.conf_path.stat().st_mode & 0o777) == 0o600
    x2 = node_host("x", 2)  # 127.0.1.2 on the default lab net
    for line in ("database = postgres", "pg_host = 127.0.0.1", "pg_port = 54329", "pg_user = kong",
                 "pg_password = s3cret-pw", "pg_database = kong", f"proxy_listen = {x2}:8000",
                 f"admin_listen = {x2}:8001", f"status_listen = {x2}:8007",
                 f"prefix = {tmp_path}/nodes/x2", "db_update_frequency = 1"):
        assert line in text.splitlines()
    dp = KongNode("x1", "x", 1, "3.9.1", tmp_path / "kong", tmp_path, role="data_plane",
                  database="off", cluster_control_plane="127.0.3.1:8005")
    dp_text = dp.render_conf(pg, 1.0)
    assert "role = data_plane" in dp_text and "database = off" in dp_text
    assert "cluster_control_plane = 127.0.3.1:8005" in dp_text and "pg_password" not in dp_text


def test_inventory_has_groups_node_vars_and_lb_settings(tmp_path: Path) -> None:
    exe = tmp_path / "kong"
    x = [KongNode(f"x{i}", "x", i, "3.9.1", exe, tmp_path) for i in (1, 2)]
    y = [KongNode("y1", "y", 1, "3.10.0", exe, tmp_path)]
    inv = build_inventory(
        x_nodes=x, y_nodes=y, cp_nodes=[],
        pg={"host": "127.0.0.1", "port": 54329, "user": "kong", "password": "pw", "database": "kong"},
        lb_vars={"kong_lb_driver": "haproxy", "kong_lb_backend": "kong_proxy"},
        lab_vars={"lab_frontend_url": "http://127.0.0.1:18000"},
    )
    groups = inv["all"]["children"]
    assert set(groups) == {"kong_x", "kong_y", "kong_lb"}
    y1 = groups["kong_y"]["hosts"]["y1"]
    assert y1["kong_version"] == "3.10.0" and y1["kong_lb_server_name"] == "y1"
    assert y1["kong_proxy_url"] == f"http://{node_host('y', 1)}:8000"
    assert y1["kong_status_url"] == f"http://{node_host('y', 1)}:8007"
    for key in ("ansible_connection", "kong_executable", "kong_prefix", "kong_conf_path",
                "kong_proxy_listen", "kong_admin_listen", "kong_status_listen", "kong_admin_url",
                "kong_role", "kong_database"):
        assert key in groups["kong_x"]["hosts"]["x2"]
    assert inv["all"]["vars"]["kong_pg_port"] == 54329
    assert inv["all"]["vars"]["lab_frontend_url"] == "http://127.0.0.1:18000"


def test_ssh_inventory_reaches_nodes_as_kong_and_the_lb_with_become(tmp_path: Path) -> None:
    """`lab up --connection ssh`: every node and the LB host go through the lab sshd as the lab user,
    with the lab's own known_hosts checked strictly; only the LB host becomes root; hosts run the
    system Python (the repo's venv stays the control node's)."""
    ssh = SshSetup(tmp_path / "ssh", ["127.0.0.1", node_host("x", 1), node_host("y", 1)], 18022)
    exe = tmp_path / "kong"
    inv = build_inventory(
        x_nodes=[KongNode("x1", "x", 1, "3.9.0", exe, tmp_path)], y_nodes=[KongNode("y1", "y", 1, "3.9.1", exe, tmp_path)],
        cp_nodes=[], pg={"host": "127.0.0.1", "port": 54329, "user": "kong", "password": "pw", "database": "kong"},
        lb_vars={"kong_lb_driver": "haproxy"}, lab_vars={}, reach=ssh.reach, lb_address="127.0.0.1",
    )
    groups = inv["all"]["children"]
    x1, lb1 = groups["kong_x"]["hosts"]["x1"], groups["kong_lb"]["hosts"]["lb1"]
    assert x1["ansible_connection"] == "ssh" and x1["ansible_host"] == node_host("x", 1) and x1["ansible_port"] == 18022
    assert x1["ansible_user"] == "kong" and "ansible_become" not in x1
    assert x1["ansible_python_interpreter"] == "/usr/bin/python3"
    assert f"UserKnownHostsFile={ssh.known_hosts}" in x1["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in x1["ansible_ssh_common_args"]
    assert lb1["ansible_host"] == "127.0.0.1" and lb1["ansible_become"] is True and lb1["kong_lb_driver"] == "haproxy"
    config = ssh.render()
    for line in ("Port 18022", f"ListenAddress {node_host('y', 1)}", "AllowUsers kong", "PermitRootLogin no",
                 "PasswordAuthentication no", f"AuthorizedKeysFile {ssh.authorized_keys}"):
        assert line in config.splitlines()


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (UpOptions(mode="hybrid", x_version="3.10.0", y_version="3.10.0", cp_version="3.9.1"),
         "would be rejected"),
        (UpOptions(mode="hybrid", x_version="2.8.4", y_version="3.4.3"), "would be rejected"),
        (UpOptions(cp_version="3.10.0"), "only applies to --mode hybrid"),
        (UpOptions(x_nodes=0), "--x-nodes"),
        (UpOptions(lb="envoy"), "--lb"),
        (UpOptions(connection="winrm"), "--connection"),
        (UpOptions(x_version="3.9"), "X.Y.Z"),
    ],
)
def test_up_options_are_checked_before_anything_starts(opts: UpOptions, message: str) -> None:
    with pytest.raises(LabError, match=message):
        opts.validate()


def test_runtime_api_reports_connection_errors(tmp_path: Path) -> None:
    api = RuntimeAPI(unix_path=tmp_path / "missing.sock", timeout=0.5)
    with pytest.raises(OSError):
        api.command("show info")


@pytest.mark.parametrize("launch", [[], ["/usr/bin/python3"]], ids=["as-executable", "with-system-python"])
def test_lab_runs_with_the_repo_venv_whatever_python_is_on_path(launch: list[str]) -> None:
    # the system python has no psycopg2/PyYAML, so this only works through the venv
    env = {**os.environ, "KONG_LAB_RUN_DIR": "/nonexistent/run", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([*launch, str(LAB), "status", "--json"], capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    assert res.returncode == 3, res.stderr
    assert '"up": false' in res.stdout
    assert (REPO / ".venv" / "bin" / "python").exists()


def test_lab_seed_writes_a_file_kong_config_parse_accepts(tmp_path: Path) -> None:
    from labctl.kong import install_version

    for version in ("2.8.4", "3.9.1"):
        out = tmp_path / f"seed-{version}.yml"
        res = subprocess.run([str(LAB), "seed", "--size", "200", "--kong-version", version, "--output", str(out)],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1] == str(out)
        assert yaml.safe_load(out.read_text())["_format_version"] == declarative_format(version)
        kong = install_version(version, tmp_path / "root")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONG_")}
        env["KONG_DATABASE"] = "off"
        parsed = subprocess.run([str(kong), "config", "parse", str(out)], capture_output=True, text=True,
                                timeout=60, env=env, cwd=tmp_path, check=False)
        assert parsed.returncode == 0, parsed.stdout + parsed.stderr
        assert "parse successful" in parsed.stdout


def test_lab_net_0_is_the_documented_layout_and_net_k_moves_it() -> None:
    # Every lab test reads its addresses from labctl.paths, so it passes on any net (one per
    # pytest worker); this pins what net 0 (the README's layout) and a moved net are.
    probe = ("from labctl import paths; print(paths.node_host('x', 2), paths.node_host('y', 1), paths.node_host('cp', 1),"
             " paths.PG_PORT, paths.ECHO_PORT, paths.FRONTEND_PORT, paths.HAPROXY_ADMIN_TCP[1])")

    def layout(net: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KONG_LAB_NET": net, "PYTHONPATH": str(LAB.parent)}
        return subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                              timeout=60, env=env, check=False)

    for net, expected in (("0", ["127.0.1.2", "127.0.2.1", "127.0.3.1", "54329", "18080", "18000", "18999"]),
                          ("3", ["127.0.31.2", "127.0.32.1", "127.0.33.1", "54629", "18380", "18300", "19299"])):
        res = layout(net)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == expected
    refused = layout("10")
    assert refused.returncode != 0 and "KONG_LAB_NET must be a number from 0 to 9" in refused.stderr
