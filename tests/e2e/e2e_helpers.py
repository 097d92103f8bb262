"""Helpers for end-to-end tests: a lab under load and the upgrade playbooks run as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from ansible_runner import ansible_env  # tests/integration, put on sys.path by conftest.py

REPO = Path(__file__).resolve().parents[2]

RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        match = RECAP.search(proc.stdout)
        self.changed = int(match.group(2)) if match else None
        self.failed = int(match.group(4)) if match else None

    def explain(self) -> str:
        return f"rc={self.rc}\n{self.stdout[-6000:]}\n{self.stderr[-3000:]}"


def run_playbook(name: str, inventory: Path, extra_vars: dict[str, Any], tmp_path: Path,
                 timeout: float = 900) -> PlaybookRun:
    """`ansible-playbook -i <inventory> playbooks/<name>.yml -e @vars.yml` from the checkout."""
    vars_file = tmp_path / f"vars-{name}.yml"
    vars_file.write_text(yaml.safe_dump(extra_vars), encoding="utf-8")
    vars_file.chmod(0o600)
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
            str(REPO / "playbooks" / f"{name}.yml"), "-e", f"@{vars_file}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=ansible_env(), check=False)
    return PlaybookRun(proc)


def admin_version(admin_url: str) -> str | None:
    """The version a node's Admin API reports, or None when it does not answer."""
    try:
        with urllib.request.urlopen(admin_url + "/", timeout=3) as response:  # noqa: S310 (loopback lab URL)
            return str(json.loads(response.read())["version"])
    except OSError:
        return None


def fast_gate(lab_run_dir: Path) -> dict[str, Any]:
    """Variables that keep an e2e upgrade short on the lab: small gate samples, lab paths."""
    return {
        "kong_upgrade_backup_dir": str(lab_run_dir / "backups"),
        "kong_upgrade_report_dir": str(lab_run_dir / "reports"),
        "kong_upgrade_gate_min_requests": 100,
        "kong_upgrade_gate_min_duration": 3,
        "kong_upgrade_gate_max_duration": 60,
        "kong_upgrade_drain_timeout": 30,
    }
