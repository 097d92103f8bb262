"""A rollback says only what it checked, on real Kong (blue-green 3.9.0 -> 3.9.1, 2 X + 2 Y).

An X node that dies during the run (x2, quit once the database is frozen) while Y fails its smoke
test: the rollback returns traffic to X, and then says that traffic is NOT fully on X, naming x2,
in the run's message and in the report, instead of "traffic on X True".
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from ansible_runner import run_module
from e2e_helpers import fast_gate, pg_args, read_report, run_under_load
from labfixtures import running_lab

X, Y = "3.9.0", "3.9.1"


# extended (left out of `make test`, second cut): the rollback's own check of X; every fault case of make test asserts X serves after it.
@pytest.mark.extended
def test_the_rollback_names_an_x_node_that_does_not_serve(tmp_path):
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2", kong="real") as lab:
        x2 = lab.host("x2")
        killed = {}

        def quit_x2_once_frozen():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"]:
                    killed["quit"] = subprocess.run([x2["kong_executable"], "quit", "-p", x2["kong_prefix"]],
                                                    capture_output=True, text=True, timeout=60, check=False)
                    return
                time.sleep(0.3)

        watcher = threading.Thread(target=quit_x2_once_frozen)
        watcher.start()
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_smoke_requests=[{"path": "/", "status": [418]}])
        run, _summary = run_under_load(lab, "upgrade_blue_green", extra, tmp_path)
        watcher.join(timeout=120)
        assert killed.get("quit") is not None and killed["quit"].returncode == 0, killed
        assert run.rc != 0, run.explain()
        said = " ".join(run.stdout.split())
        assert "traffic on X False (NOT SERVING: x2 does not answer as Kong 3.9.0" in said, run.explain()
        assert "x1" not in said.split("NOT SERVING:")[1].split(")")[0], "x1 serves and must not be named"
        rollback = read_report(lab, X, Y)["rollback"]
        assert rollback["traffic_on_x"] is False
        assert any(text.startswith("x2 does not answer as Kong 3.9.0") for text in rollback["x_not_serving"]), rollback
        assert not any(text.startswith("x1 ") for text in rollback["x_not_serving"]), rollback
