"""Run the collection's modules through Ansible itself, as a user would, and read the JSON result.

Modules are called with `ansible localhost -m kongops.upgrade.<name>`, the collection found
through a temporary `ansible_collections/kongops/upgrade` link to this checkout, and the
result registered and written to a private file by a second task (ansible-core has no json
stdout callback of its own). Arguments go in a file (`-a @file` is not
supported by ad-hoc, so a one-task playbook is used), never on a command line, because they
may hold secrets.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
_COLLECTIONS: Path | None = None


def collections_path() -> Path:
    global _COLLECTIONS  # noqa: PLW0603  pylint: disable=global-statement
    if _COLLECTIONS is None:
        root = Path(tempfile.mkdtemp(prefix="kongops-collections-"))
        atexit.register(shutil.rmtree, str(root), True)
        (root / "ansible_collections" / "kongops").mkdir(parents=True)
        (root / "ansible_collections" / "kongops" / "upgrade").symlink_to(REPO)
        _COLLECTIONS = root
    return _COLLECTIONS


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update({
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
    })
    env.update(extra or {})
    return env


class ModuleResult(dict):
    """A module's result; `.failed` and `.changed` for readability."""

    @property
    def failed(self) -> bool:
        return bool(self.get("failed"))

    @property
    def changed(self) -> bool:
        return bool(self.get("changed"))


def run_module(name: str, args: dict[str, Any], check: bool = False, diff: bool = False,
               timeout: float = 600, env: dict[str, str] | None = None) -> ModuleResult:
    """Run `kongops.upgrade.<name>` once on localhost and return its result."""
    with tempfile.TemporaryDirectory(prefix="kongops-task-") as tmp:
        playbook = Path(tmp) / "task.yml"
        out = Path(tmp) / "result.json"
        play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
                 "tasks": [{"name": name, f"kongops.upgrade.{name}": args, "ignore_errors": True,
                            "register": "kongops_result"},
                           {"name": "Write the result", "ansible.builtin.copy": {
                               "content": "{{ kongops_result | to_json }}", "dest": str(out), "mode": "0600"},
                            "check_mode": False, "diff": False}]}]
        playbook.write_text(yaml.safe_dump(play), encoding="utf-8")
        os.chmod(playbook, 0o600)
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ansible_env(env), check=False)
        try:
            result = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AssertionError(f"ansible-playbook gave no result for {name} (rc={proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from exc
    return ModuleResult(result)


def four_ways(name: str, args: dict[str, Any], expect_change: bool = True) -> list[ModuleResult]:
    """Check mode, real, check mode again, real again (community.crypto's pattern).

    Asserts the check-mode prediction equals the real outcome and both second runs report
    no change; returns the four results for further assertions.
    """
    check1 = run_module(name, args, check=True, diff=True)
    real1 = run_module(name, args, diff=True)
    check2 = run_module(name, args, check=True, diff=True)
    real2 = run_module(name, args, diff=True)
    for label, result in (("check", check1), ("real", real1), ("check again", check2), ("real again", real2)):
        assert not result.failed, f"{name} {label} failed: {result.get('msg')}"
    assert check1.changed == expect_change, f"{name} check mode predicted changed={check1.changed}"
    assert real1.changed == expect_change, f"{name} real run changed={real1.changed}"
    assert not check2.changed, f"{name} check mode after the change still predicts a change: {check2}"
    assert not real2.changed, f"{name} second real run changed something: {real2}"
    return [check1, real1, check2, real2]
