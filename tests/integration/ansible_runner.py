"""Run the collection's modules through Ansible itself, as a user would, and read the JSON result.

Modules are called as the tasks of a small playbook on localhost (`kongops.upgrade.<name>`),
the collection found through a temporary `ansible_collections/kongops/upgrade` link to this
checkout, and the results registered and written to a private file by a last task
(ansible-core has no json stdout callback of its own). Arguments go in the playbook file,
never on a command line, because they may hold secrets. Check mode is set per task
(`check_mode: true`), which is what `--check` sets for every task, so the four runs of
`four_ways` share one ansible-playbook start.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RunRecord:
    """One module run as Ansible showed it: the registered result and ansible-playbook's output."""

    name: str
    result_text: str
    stdout: str
    stderr: str


# Every run of this process, in order (the integration tests check them for secrets).
RUN_LOG: list[RunRecord] = []


class ModuleResult(dict):
    """A module's result; `.failed` and `.changed` for readability."""

    @property
    def failed(self) -> bool:
        return bool(self.get("failed"))

    @property
    def changed(self) -> bool:
        return bool(self.get("changed"))


def run_tasks(runs: list[tuple[str, dict[str, Any], bool]], diff: bool = False, timeout: float = 600,
              env: dict[str, str] | None = None, verbosity: int = 0) -> list[ModuleResult]:
    """Run one module per ``(name, args, check_mode)`` in ``runs`` (``kongops.upgrade.<name>``), in order,
    as the tasks of one playbook (each task is its own module run; one ansible-playbook start for all),
    and return their results. A failed task does not stop the ones after it. ``verbosity`` 3 is
    `-vvv`, where Ansible also prints each module's arguments (the `invocation`)."""
    label = ",".join(dict.fromkeys(name for name, _args, _check in runs))
    with tempfile.TemporaryDirectory(prefix="kongops-task-") as tmp:
        playbook = Path(tmp) / "task.yml"
        out = Path(tmp) / "result.json"
        tasks: list[dict[str, Any]] = []
        for index, (name, args, check) in enumerate(runs):
            tasks.append({"name": f"{name} #{index + 1}{' (check mode)' if check else ''}",
                          f"kongops.upgrade.{name}": args, "ignore_errors": True, "check_mode": bool(check),
                          "diff": diff, "register": f"kongops_result_{index}"})
        results = "[" + ", ".join(f"kongops_result_{i}" for i in range(len(runs))) + "]"
        tasks.append({"name": "Write the results", "ansible.builtin.copy": {
            "content": "{{ " + results + " | to_json }}", "dest": str(out), "mode": "0600"},
            "check_mode": False, "diff": False})
        play = [{"hosts": "localhost", "gather_facts": False, "connection": "local", "tasks": tasks}]
        playbook.write_text(yaml.safe_dump(play), encoding="utf-8")
        os.chmod(playbook, 0o600)
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)]
        if verbosity:
            argv.append("-" + "v" * verbosity)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ansible_env(env), check=False)
        try:
            text = out.read_text(encoding="utf-8")
        except OSError:
            text = ""
        RUN_LOG.append(RunRecord(label, text, proc.stdout, proc.stderr))
        try:
            decoded = json.loads(text)
        except ValueError as exc:
            raise AssertionError(f"ansible-playbook gave no result for {label} (rc={proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from exc
    return [ModuleResult(item) for item in decoded]


def run_sequence(name: str, runs: list[tuple[dict[str, Any], bool]], **options: Any) -> list[ModuleResult]:
    """`run_tasks` for one module: one run per ``(args, check_mode)``."""
    return run_tasks([(name, args, check) for args, check in runs], **options)


def run_module(name: str, args: dict[str, Any], check: bool = False, diff: bool = False,
               timeout: float = 600, env: dict[str, str] | None = None) -> ModuleResult:
    """Run `kongops.upgrade.<name>` once on localhost and return its result."""
    return run_sequence(name, [(args, check)], diff=diff, timeout=timeout, env=env)[0]


def four_ways(name: str, args: dict[str, Any], expect_change: bool = True) -> list[ModuleResult]:
    """Check mode, real, check mode again, real again (community.crypto's pattern).

    Asserts the check-mode prediction equals the real outcome and both second runs report
    no change; returns the four results for further assertions.
    """
    check1, real1, check2, real2 = run_sequence(name, [(args, True), (args, False), (args, True), (args, False)],
                                                diff=True)
    for label, result in (("check", check1), ("real", real1), ("check again", check2), ("real again", real2)):
        assert not result.failed, f"{name} {label} failed: {result.get('msg')}"
    assert check1.changed == expect_change, f"{name} check mode predicted changed={check1.changed}"
    assert real1.changed == expect_change, f"{name} real run changed={real1.changed}"
    assert not check2.changed, f"{name} check mode after the change still predicts a change: {check2}"
    assert not real2.changed, f"{name} second real run changed something: {real2}"
    return [check1, real1, check2, real2]
