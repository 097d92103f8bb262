"""The units of work pytest-xdist hands out under -n (tests/conftest.py); no side effects, so the
unit tests can import it."""

from __future__ import annotations

# E2E files whose tests share a module-scoped fixture (a lab, a playbook's output): kept on one worker.
E2E_FILES_KEPT_WHOLE = frozenset({"tests/e2e/test_bad_inputs.py", "tests/e2e/test_awx_runner.py"})


def work_unit(nodeid: str) -> str:
    """The unit of work a test goes out in under -n: its own for an e2e test, else its file."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/e2e/") and path not in E2E_FILES_KEPT_WHOLE:
        return nodeid
    return path
