"""Unit tests for kong_service's wait for a stopped node's nginx master to exit.

Real `kong quit` returns once `pids/nginx.pid` is gone, and nginx deletes it before it closes its
listening sockets and exits (ngx_master_process_exit); `kong stop` returns once it sent SIGTERM. A
stand-in master here deletes its PID file and then lingers, as nginx does, for longer.
"""

import subprocess
import sys
import time

from ansible_collections.kongops.upgrade.plugins.module_utils._proc import pid_running
from ansible_collections.kongops.upgrade.plugins.modules.kong_service import nginx_master, wait_exit

LINGERING_MASTER = r"""
import os, signal, sys, time
pid_file = sys.argv[1]
def quit(*_):
    os.unlink(pid_file)  # as nginx: the PID file first, the exit later
    time.sleep(float(sys.argv[2]))
    sys.exit(0)
signal.signal(signal.SIGQUIT, quit)
with open(pid_file + ".tmp", "w") as handle:
    handle.write("%d\n" % os.getpid())
os.rename(pid_file + ".tmp", pid_file)
while True:
    time.sleep(1)
"""


def start_master(tmp_path, linger):
    (tmp_path / "pids").mkdir()
    pid_file = tmp_path / "pids" / "nginx.pid"
    proc = subprocess.Popen([sys.executable, "-c", LINGERING_MASTER, str(pid_file), str(linger)])
    deadline = time.monotonic() + 10
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the stand-in master did not write its PID file"
        time.sleep(0.02)
    return proc, pid_file


def test_waits_for_a_master_that_outlives_its_pid_file(tmp_path):
    proc, pid_file = start_master(tmp_path, linger=1.0)
    try:
        master = nginx_master(str(tmp_path))
        assert master is not None and master[0] == proc.pid and master[1] is not None
        proc.send_signal(3)  # SIGQUIT
        deadline = time.monotonic() + 10
        while pid_file.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Here `kong quit` would return: the PID file is gone, the master still runs.
        assert pid_running(*master)
        waited = wait_exit(master, grace=10)
        assert waited is not None and waited >= 0.5, waited
        assert not pid_running(*master)  # a zombie (our unreaped child) counts as exited
    finally:
        proc.kill()
        proc.wait()


def test_a_master_that_does_not_exit_is_reported(tmp_path):
    proc, _pid_file = start_master(tmp_path, linger=0)
    try:
        master = nginx_master(str(tmp_path))
        assert wait_exit(master, grace=0.3) is None
        assert pid_running(*master)
    finally:
        proc.kill()
        proc.wait()
    assert not pid_running(*master)


def test_no_pid_file_or_garbage_names_no_master(tmp_path):
    assert nginx_master(str(tmp_path)) is None
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "nginx.pid").write_text("not a pid\n")
    assert nginx_master(str(tmp_path)) is None
