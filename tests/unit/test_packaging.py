"""The collection's tarball, as `ansible-galaxy collection build` makes it from this checkout: it holds
what users run and read, and nothing of the lab, the venv, run dirs or dev tooling (a lab inventory
holds a database password)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"MANIFEST.json", "FILES.json", "README.md", "CHANGELOG.rst", "COPYING", "meta", "plugins", "roles", "playbooks",
           "docs", "extensions", "changelogs"}
NEVER = ("tests", "molecule", "bench", "build", "reports", ".venv", ".ansible", ".ci", ".git", ".ruff_cache",
         ".pytest_cache", "__pycache__")
DEV_FILES = {"Makefile", "ansible.cfg", "pytest.ini", "ruff.toml", "requirements-dev.in", "requirements-dev.txt"}


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    run = subprocess.run([str(galaxy), "collection", "build", "--output-path", str(out), str(REPO)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    (tarball,) = out.glob("kongops-upgrade-*.tar.gz")
    with tarfile.open(tarball) as tar:
        return [member.name.removeprefix("./") for member in tar.getmembers()]


def test_the_tarball_holds_what_users_need(members):
    tops = {name.split("/", 1)[0] for name in members}
    assert tops <= SHIPPED, f"unexpected top-level entries: {sorted(tops - SHIPPED)}"
    for needed in ("README.md", "COPYING", "meta/runtime.yml", "plugins/modules/pg_backup.py",
                   "roles/rolling/tasks/main.yml", "playbooks/upgrade_dual_cluster.yml", "changelogs/changelog.yaml", "CHANGELOG.rst"):
        assert needed in members, needed


def test_the_tarball_holds_no_lab_run_dir_secret_or_dev_file(members):
    wrong = [name for name in members
             if any(part in NEVER for part in name.split("/")) or name in DEV_FILES
             or name.endswith((".pyc", ".lock", ".tar.gz")) or "/run-" in name or name.startswith("tests/lab/run")]
    assert not wrong, wrong
