"""One lab per pytest-xdist worker.

`make pytest PYTEST_WORKERS=2` (or `pytest -n 2`) runs the suite on two pytest-xdist
workers. Every lab test brings up a lab, and two labs on one machine need their own
addresses and ports (``KONG_LAB_NET``) and their own run directory (``KONG_LAB_RUN_DIR``). Worker N gets net ``base + N`` and
the run directory ``<base run dir>-gwN``, where the base is what the environment says
(net 0 and ``tests/lab/run`` by default). This is set when pytest imports this file,
before any test module imports ``labctl.paths``, which reads both once.

A plain ``pytest`` run (no ``-n``) is one process and keeps the environment as it is.

Under ``-n`` every test file runs whole on one worker (xdist's ``loadfile`` scheduling, unless
``--dist`` asks for another than the default ``load``): many files bring up one lab in a
module-scoped fixture and walk it through an upgrade test by test, which the default scheduling
would split across workers (two labs per file, the order broken).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")

# The lab's cache of compiled module code, shared by the workers (tests/lab/zipcache.py; `make setup`
# installs its hook into the venv, and without the hook this does nothing).
os.environ.setdefault("KONGOPS_LAB_ZIPCACHE", str(Path(__file__).resolve().parent / "output" / "zipcache"))

if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    _base_net = int(os.environ.get("KONG_LAB_NET", "0") or "0")
    _net = _base_net + int(_WORKER[2:])
    if _net > 9:
        raise RuntimeError(f"pytest worker {_WORKER} would need KONG_LAB_NET={_net}; the lab has nets 0 to 9: "
                           "run fewer workers (-n) or a lower KONG_LAB_NET")
    _base_dir = os.environ.get("KONG_LAB_RUN_DIR") or str(Path(__file__).resolve().parent / "lab" / "run")
    os.environ["KONG_LAB_NET"] = str(_net)
    os.environ["KONG_LAB_RUN_DIR"] = f"{_base_dir}-{_WORKER}"


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    return LoadFileScheduling(config, log)
