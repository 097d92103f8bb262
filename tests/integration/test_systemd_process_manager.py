"""kong_upgrade_process_manager: systemd, as far as this machine can run it.

No systemd runs on the lab machine, so the systemd manager is checked by what it calls: the role's
node step (``nodes.yml``, which every start and stop of the strategies goes through) runs against
two nodes whose PATH holds a ``systemctl`` stand-in. The stand-in answers ``systemctl show`` with
each node's own unit state, as systemd does, and records every call, so the test sees which command
each node got, that a node already in the wanted state gets none, and that a node whose unit fails
to start is named in the failure. What systemd itself would do with the unit is not tested here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

SYSTEMCTL = """\
#!/bin/sh
# systemctl stand-in: one unit state per node (FAKE_SYSTEMD_HOST), every call recorded.
echo "$FAKE_SYSTEMD_HOST $*" >> "$FAKE_SYSTEMD_DIR/calls"
active="$FAKE_SYSTEMD_DIR/$FAKE_SYSTEMD_HOST.active"
case "$1" in
  show)
    if [ -f "$active" ]; then state=active; sub=running; else state=inactive; sub=dead; fi
    printf 'Id=%s.service\\nNames=%s.service\\nLoadState=loaded\\nActiveState=%s\\nSubState=%s\\nUnitFileState=enabled\\n' \\
      "$2" "$2" "$state" "$sub"
    ;;
  start)
    if [ -f "$FAKE_SYSTEMD_DIR/$FAKE_SYSTEMD_HOST.broken" ]; then
      echo "Job for $2.service failed because the control process exited with error code." >&2
      exit 1
    fi
    touch "$active"
    ;;
  stop) rm -f "$active" ;;
  is-active) if [ -f "$active" ]; then echo active; else echo inactive; exit 3; fi ;;
esac
exit 0
"""

PLAY = """\
- name: Start or stop the nodes through the role's node step
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The node step
      ansible.builtin.include_role:
        name: kongops.upgrade.kong_upgrade
        tasks_from: nodes.yml
      vars:
        kong_upgrade_nodes: [n1, n2]
        kong_upgrade_nodes_state: "{{ wanted }}"
        kong_upgrade_process_manager: systemd
        kong_upgrade_systemd_unit: kong
        # Ansible runs as root here, with no sudo in the way of the stand-in's PATH.
        kong_upgrade_become_root: false

    - name: Show what the step recorded
      ansible.builtin.debug:
        var: kong_upgrade_nodes_done
"""


def _setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    state = tmp_path / "systemd"
    state.mkdir()
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "systemctl").write_text(SYSTEMCTL)
    (fakebin / "systemctl").chmod(0o755)
    hosts = {}
    for node in ("n1", "n2"):
        # Each node's interpreter is a wrapper that gives its modules the node's name and the stand-in.
        wrapper = tmp_path / f"python-{node}"
        wrapper.write_text(f"#!/bin/sh\nexport FAKE_SYSTEMD_HOST={node} FAKE_SYSTEMD_DIR={state} "
                           f"PATH={fakebin}:$PATH\nexec {sys.executable} \"$@\"\n")
        wrapper.chmod(0o755)
        hosts[node] = {"ansible_connection": "local", "ansible_python_interpreter": str(wrapper)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
        "children": {"kong_x": {"hosts": hosts}}}}))
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    return state, inventory, env


def _run(tmp_path: Path, inventory: Path, env: dict[str, str], wanted: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                           str(tmp_path / "play.yml"), "-e", f"wanted={wanted}"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False)


def _calls(state: Path) -> list[str]:
    path = state / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [line for line in lines if line.split()[1] in ("start", "stop", "restart", "reload")]


def test_systemd_manager_starts_and_stops_each_node_unit_once_and_only_when_needed(tmp_path):
    state, inventory, env = _setup(tmp_path)

    run = _run(tmp_path, inventory, env, "started")
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(_calls(state)) == ["n1 start kong", "n2 start kong"], run.stdout
    assert (state / "n1.active").exists() and (state / "n2.active").exists()

    again = _run(tmp_path, inventory, env, "started")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _calls(state) == [], "a node whose unit is active was started again"

    stop = _run(tmp_path, inventory, env, "stopped")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert sorted(_calls(state)) == ["n1 stop kong", "n2 stop kong"]
    assert not (state / "n1.active").exists() and not (state / "n2.active").exists()


def test_systemd_manager_names_the_node_whose_unit_fails_to_start(tmp_path):
    state, inventory, env = _setup(tmp_path)
    (state / "n2.broken").touch()

    run = _run(tmp_path, inventory, env, "started")
    assert run.returncode != 0
    assert "Fail when a node is not started" in run.stdout, run.stdout
    failure = run.stdout[run.stdout.index("Fail when a node is not started"):]
    assert "n2: " in failure and "n1: " not in failure, failure
    assert sorted(_calls(state)) == ["n1 start kong", "n2 start kong"]
