"""lab up in DB-less and hybrid modes on real Kong, and teardown when lab up fails half-way."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from labfixtures import lab_cli, running_lab

from labctl.lab import http_get
from labctl.load import kong_version
from labctl.paths import ECHO_PORT, FRONTEND_PORT, PG_PORT, default_run_dir, node_host
from labctl.proc import port_in_use

FAILING_INSTALLER = '''
import os
from pathlib import Path

def install_version(version, root):
    exe = Path(root) / "versions" / version / "bin" / "kong"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(
        "#!/bin/sh\\n"
        "case \\"$1\\" in\\n"
        "  start) echo 'Error: boom: emulated start failure' >&2; exit 1;;\\n"
        "  *) exit 0;;\\n"
        "esac\\n"
    )
    exe.chmod(0o755)
    return exe
'''


# An "installed Kong" (Kong's package layout: <dir>/bin/kong) that says it is 3.4.2 and fails to start.
FAILING_INSTALLED_KONG = """#!/bin/sh
case "$1" in
  version) echo 3.4.2;;
  start) echo 'Error: boom: installed Kong cannot start' >&2; exit 1;;
  *) exit 0;;
esac
"""


def _assert_torn_down(res: subprocess.CompletedProcess[str], boom: str) -> None:
    assert res.returncode == 1
    assert "kong start" in res.stderr and boom in res.stderr
    assert "tearing down" in res.stderr
    assert not default_run_dir().exists()
    for host, port in (("127.0.0.1", PG_PORT), ("127.0.0.1", ECHO_PORT), ("127.0.0.1", FRONTEND_PORT)):
        assert not port_in_use(host, port), f"{host}:{port} left running after a failed up"


def test_failed_up_tears_down_what_it_started(tmp_path: Path) -> None:
    """The emulator's installer hook (KONG_LAB_INSTALLER) with a kong that cannot start."""
    installer = tmp_path / "failing_installer.py"
    installer.write_text(FAILING_INSTALLER)
    res = lab_cli("up", "--kong", "emulated", "--x-nodes", "1", "--y-nodes", "0", check=False,
                  env={"KONG_LAB_INSTALLER": f"{installer}:install_version"})
    _assert_torn_down(res, "boom: emulated start failure")


def test_an_installed_kong_is_used_for_its_version_and_a_failed_start_tears_down(tmp_path: Path) -> None:
    """--kong-install DIR takes precedence over the kit for the version DIR/bin/kong reports."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kong").write_text(FAILING_INSTALLED_KONG)
    (tmp_path / "bin" / "kong").chmod(0o755)
    res = lab_cli("up", "--kong", "real", "--kong-install", str(tmp_path), "--x-version", "3.4.2",
                  "--y-version", "3.4.2", "--x-nodes", "1", "--y-nodes", "0", check=False)
    assert f"Kong 3.4.2: installed Kong 3.4.2 at {tmp_path}" in res.stderr
    _assert_torn_down(res, "boom: installed Kong cannot start")


def test_real_kong_that_cannot_be_had_fails_up_with_the_reason_and_starts_nothing(tmp_path: Path) -> None:
    res = lab_cli("up", "--kong", "real", "--x-version", "3.10.0", "--y-version", "3.10.0", "--x-nodes", "1",
                  "--y-nodes", "0", check=False, env={"KONG_LAB_REALKONG_KIT": str(tmp_path / "no-kit")})
    assert res.returncode == 1
    assert "no real Kong 3.10.0" in res.stderr and "--kong-install DIR" in res.stderr
    assert "--kong emulated" in res.stderr
    assert not default_run_dir().exists()
    assert not port_in_use("127.0.0.1", PG_PORT)


def test_dbless_mode_serves_the_seed_file() -> None:
    with running_lab("--mode", "dbless", "--x-version", "3.9.0", "--y-version", "3.9.1", "--x-nodes", "1",
                     "--y-nodes", "1", kong="real") as lab:
        x1 = lab.host("x1")
        assert x1["kong_database"] == "off"
        conf = Path(x1["kong_conf_path"]).read_text()
        assert "database = off" in conf and f"declarative_config = {lab.run_dir}/kong.yml" in conf
        assert "pg_password" not in conf
        assert lab.host("y1")["kong_declarative_config"] == str(lab.run_dir / "kong.yml")
        status, headers, _body = http_get(lab.frontend + "/svc2/a")
        assert status == 200
        assert kong_version(headers.get("via"), headers.get("server")) == "3.9.0"
        status, _headers, body = http_get(lab.frontend + "/regex2/42")  # the seed's regex route
        assert status == 200 and json.loads(body)["headers"].get("x-lab-route") == "svc2-regex"


def test_hybrid_mode_control_plane_and_data_planes() -> None:
    with running_lab("--mode", "hybrid", "--x-version", "3.9.0", "--y-version", "3.9.1",
                     "--x-nodes", "2", "--y-nodes", "1", kong="real") as lab:
        cp = lab.hosts("kong_cp")["cp1"]
        assert cp["kong_role"] == "control_plane" and cp["kong_version"] == "3.9.1"
        cluster = f"{node_host('cp', 1)}:8005"  # 127.0.3.1:8005 on the default lab net
        assert cp["kong_cluster_listen"] == cluster
        for name in ("x1", "x2", "y1"):
            node = lab.host(name)
            assert node["kong_role"] == "data_plane" and node["kong_database"] == "off"
            assert node["kong_cluster_control_plane"] == cluster
        status, _headers, body = http_get(cp["kong_admin_url"] + "/clustering/data-planes")
        assert status == 200
        planes = json.loads(body)["data"]
        assert sorted(p["version"] for p in planes) == ["3.9.0", "3.9.0"]
        assert {p["sync_status"] for p in planes} == {"normal"}
        status, headers, _body = http_get(lab.frontend + "/")
        assert status == 200
        assert kong_version(headers.get("via"), headers.get("server")) == "3.9.0"
        assert not port_in_use(node_host("cp", 1), 8000)  # a control plane does not proxy
    assert not os.path.exists(lab.run_dir)


def test_up_refuses_when_an_address_is_taken_and_starts_nothing() -> None:
    import socket

    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", FRONTEND_PORT))
        blocker.listen(1)
        res = lab_cli("up", "--x-nodes", "1", "--y-nodes", "0", check=False)
    assert res.returncode == 1
    assert f"127.0.0.1:{FRONTEND_PORT}" in res.stderr and "already in use" in res.stderr
    assert not default_run_dir().exists()
    assert not port_in_use("127.0.0.1", PG_PORT)
