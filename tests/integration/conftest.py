"""pytest fixtures of the integration tests; the helpers are in itlab.py.

Under pytest-xdist (`-n 2`), every test file runs whole on one worker (xdist's `loadfile`
scheduling, unless `--dist` asks for another than the default `load`): a file brings up its lab
once in a module-scoped fixture, and some files walk one lab through an upgrade test by test.
This holds when pytest is started on this directory (this file is then read by the controller);
a run of the whole `tests` tree needs `--dist loadfile`.
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


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    return LoadFileScheduling(config, log)


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
