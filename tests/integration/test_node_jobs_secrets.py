"""What the async node jobs of ``nodes.yml`` leave on a node: no Admin API token where the node has a
Status API.

Ansible does not pipeline async tasks: the module, its arguments included, is a file in the login
user's ``~/.ansible/tmp`` on the node while the job runs. With ``ANSIBLE_KEEP_REMOTE_FILES`` those
files stay, and the test reads them. Two nodes are started from the control node (so each gets an
async job): n1 has ``kong_status_url`` and is judged ready there, so its job must not hold the token;
n2 has only ``kong_admin_url``, which needs the token, and its file shows that the check can see a
token where one is. The ``kong`` executable is a stand-in (what is tested is what the role hands the
module, not Kong), and one local HTTP server answers both nodes' readiness URLs.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOKEN = "node-job-admin-token-7e41a9"

KONG = """\
#!/bin/sh
# kong stand-in: start, health and quit by a marker file in the prefix.
cmd=$1; shift
prefix=
while [ $# -gt 0 ]; do
  if [ "$1" = "-p" ]; then prefix=$2; shift; fi
  shift
done
case "$cmd" in
  health)
    if [ -f "$prefix/running" ]; then echo "Kong is healthy at $prefix"; exit 0; fi
    echo "Error: Kong is not running at $prefix" >&2; exit 1 ;;
  start) mkdir -p "$prefix/logs"; touch "$prefix/running"; echo "Kong started" ;;
  quit) rm -f "$prefix/running"; echo "Kong stopped (gracefully)" ;;
  *) echo "Error: unknown command $cmd" >&2; exit 1 ;;
esac
"""

PLAY = """\
- name: Start the nodes through the role's node step, from the control node
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The node step
      ansible.builtin.include_role:
        name: kongops.upgrade.kong_upgrade
        tasks_from: nodes.yml
      vars:
        kong_upgrade_nodes: [n1, n2]
        kong_upgrade_nodes_state: started
        kong_upgrade_process_manager: cli
"""


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"message": "ready"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def ready_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_node_with_a_status_api_gets_no_admin_token_in_its_async_job(tmp_path: Path, ready_url: str) -> None:
    kong = tmp_path / "kong"
    kong.write_text(KONG)
    kong.chmod(0o755)
    hosts = {}
    for node in ("n1", "n2"):
        conf = tmp_path / f"{node}.conf"
        conf.write_text("prefix = %s\n" % (tmp_path / f"{node}-prefix"))
        hosts[node] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                       "kong_executable": str(kong), "kong_conf_path": str(conf),
                       "kong_prefix": str(tmp_path / f"{node}-prefix"), "kong_admin_url": ready_url + "/admin"}
    hosts["n1"]["kong_status_url"] = ready_url
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
        "children": {"kong_y": {"hosts": hosts}}}}))
    (tmp_path / "play.yml").write_text(PLAY)
    remote_tmp = tmp_path / "remote-tmp"
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local-tmp"), ANSIBLE_REMOTE_TEMP=str(remote_tmp),
               ANSIBLE_ASYNC_DIR=str(tmp_path / "async"), ANSIBLE_KEEP_REMOTE_FILES="1")
    run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                          str(tmp_path / "play.yml"), "-e", f"kong_upgrade_admin_token={TOKEN}"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert len(list((tmp_path / "async").iterdir())) == 2, "the nodes were not started as two async jobs"
    for node in ("n1", "n2"):
        assert (tmp_path / f"{node}-prefix" / "running").exists(), f"{node} was not started"

    kept = [path for path in remote_tmp.rglob("*") if path.is_file()]
    by_node = {node: [path for path in kept if hosts[node]["kong_prefix"].encode() in path.read_bytes()]
               for node in ("n1", "n2")}
    assert by_node["n1"] and by_node["n2"], f"no kept module file names a node's prefix: {kept}"
    assert not [path for path in by_node["n1"] if TOKEN.encode() in path.read_bytes()], \
        "n1 is judged on its Status API, yet its async job's module file holds the Admin API token"
    # n2 has no Status API: its readiness needs the Admin API and the token (docs/hosts.md says so).
    assert [path for path in by_node["n2"] if TOKEN.encode() in path.read_bytes()], \
        "the check reads the kept module files, yet finds the token in none of n2's either"
