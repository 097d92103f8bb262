"""pytest fixtures of the integration tests; the helpers are in itlab.py.

Under pytest-xdist every test file runs whole on one worker (tests/conftest.py): a file brings up
its lab once in a module-scoped fixture, and some files walk one lab through an upgrade test by test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import ansible_runner  # noqa: E402
from itlab import MANAGER, SECRETS  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running() -> Iterator[None]:
    yield
    MANAGER.close()


@pytest.fixture(autouse=True)
def no_secret_in_module_output() -> Iterator[None]:
    """No lab password in any module result or Ansible output of the test."""
    start = len(ansible_runner.RUN_LOG)
    yield
    secrets = [s for s in SECRETS if s]
    for entry in ansible_runner.RUN_LOG[start:]:
        for secret in secrets:
            for label, text in (("result", entry.result_text), ("stdout", entry.stdout), ("stderr", entry.stderr)):
                assert secret not in text, f"a lab password appears in the {label} of {entry.name}"
