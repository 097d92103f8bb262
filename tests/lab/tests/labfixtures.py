"""Fixtures and helpers for the lab tests (test_lab_*.py). Owned by the lab (labctl).

Import with ``from labfixtures import ...``; pytest puts this directory on sys.path
(rootdir import mode), and this module puts ``tests/lab`` on it for ``labctl``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LAB_DIR = Path(__file__).resolve().parent.parent
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

LAB = LAB_DIR / "lab"
REPO = LAB_DIR.parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def lab_cli(*args: str, timeout: float = 300, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tests/lab/lab <args>`` and return the completed process."""
    res = subprocess.run(
        [str(LAB), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"lab {' '.join(args)} exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
        )
    return res


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


class RawHTTPServer:
    """A tiny HTTP/1.1 server on loopback whose per-request behaviour a test scripts.

    ``behaviour(conn_request_index, fresh_conn_index) -> str`` returns one of
    ``"ok"`` (200 keep-alive, ``Via: 1.1 kong/3.10.0``), ``"close"`` (read the
    request, close without a byte), ``"partial"`` (send ``HTTP/1.1 2`` then close).
    """

    def __init__(self, behaviour: Callable[[int, int], str]) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                idx = self.connections
            threading.Thread(target=self._serve, args=(conn, idx), daemon=True).start()

    def _serve(self, conn: socket.socket, conn_index: int) -> None:
        body = b'{"ok":true}'
        with conn:
            conn.settimeout(10)
            buf = b""
            n = 0
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                buf = buf.split(b"\r\n\r\n", 1)[1]
                action = self.behaviour(n, conn_index)
                n += 1
                if action == "close":
                    return
                if action == "partial":
                    conn.sendall(b"HTTP/1.1 2")
                    return
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Via: 1.1 kong/3.10.0\r\nServer: echo\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                )


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """The lab's echo service in-process on a free port; yields the port."""
    from labctl import echo

    server = echo.serve("127.0.0.1", 0)
    port = int(server.server_address[1])
    th = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- a running lab


class LabHandle:
    """What a test needs from a lab brought up with ``tests/lab/lab up``."""

    def __init__(self, inventory_path: Path, up_stdout: str, up_stderr: str) -> None:
        import json

        import yaml

        self.inventory_path = inventory_path
        self.up_stdout = up_stdout
        self.up_stderr = up_stderr
        self.inventory = yaml.safe_load(inventory_path.read_text(encoding="utf-8"))
        self.run_dir = inventory_path.parent
        self.state = json.loads((self.run_dir / "lab.json").read_text(encoding="utf-8"))
        self.pids = self.collect_pids()

    @property
    def kong_provider(self) -> str:
        """``real`` or ``emulated``: what the lab's Kong nodes run."""
        return str(self.state.get("kong", {}).get("provider", "emulated"))

    @property
    def group_vars(self) -> dict[str, Any]:
        return dict(self.inventory["all"]["vars"])

    def hosts(self, group: str) -> dict[str, dict[str, Any]]:
        return dict(self.inventory["all"]["children"][group]["hosts"] or {})

    def host(self, name: str) -> dict[str, Any]:
        for group in self.inventory["all"]["children"].values():
            if name in (group.get("hosts") or {}):
                return dict(group["hosts"][name])
        raise KeyError(name)

    @property
    def lb(self) -> dict[str, Any]:
        return self.hosts("kong_lb")["lb1"]

    @property
    def frontend(self) -> str:
        return str(self.group_vars["lab_frontend_url"])

    @property
    def load_targets(self) -> list[dict[str, Any]]:
        return list(self.state["seed"]["load_targets"])

    def collect_pids(self) -> list[int]:
        from labctl.lab import lab_pids

        return lab_pids(self.run_dir)


def _kill_leftovers(pids: list[int]) -> list[int]:
    """SIGKILL any of ``pids`` still alive (by pid only); return those that were alive."""
    import signal

    from labctl.proc import is_alive

    alive = [p for p in pids if is_alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def _up_versions(up_args: tuple[str, ...]) -> list[str]:
    """The Kong versions ``lab up <up_args>`` would run (the lab's defaults where not given)."""
    from labctl.lab import UpOptions

    opts = UpOptions()
    given = {flag: value for flag, value in zip(up_args, up_args[1:], strict=False) if flag.startswith("--")}
    x = given.get("--x-version", opts.x_version)
    y = given.get("--y-version", opts.y_version)
    versions = {x, y}
    if given.get("--mode") == "hybrid":
        versions.add(given.get("--cp-version", y))
    return sorted(versions)


def require_real_kong(*versions: str) -> None:
    """Skip the calling test, with the reason, when real Kong of ``versions`` cannot be had here
    (not installed, no kit to build it, or the kit's packages missing). Under CI (``CI=true``)
    a missing real Kong fails the test instead: CI must prove the upgrades on Kong's own code."""
    import pytest

    from labctl import realkong

    missing = []
    for version in versions:
        ok, why = realkong.available(version)
        if not ok:
            missing.append(f"Kong {version}: {why}")
    if not missing:
        return
    reason = "real Kong missing: " + "; ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: real Kong is required)", pytrace=False)
    pytest.skip(reason)


def require_kong_package() -> None:
    """Skip (fail under CI) a test whose lab serves Y as a .deb (``--y-install package``) when it
    cannot be made here: the lab packages Kong from the realkong kit, as root."""
    import pytest

    from labctl import realkong

    why = ("no realkong kit to package Kong from (KONG_LAB_REALKONG_KIT)" if realkong.kit_dir() is None
           else "packaging Kong and installing it with apt needs root" if os.geteuid() != 0 else None)
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the lab's Kong package cannot be made: {why} (CI=true)", pytrace=False)
    pytest.skip(f"the lab's Kong package cannot be made: {why}")


@contextlib.contextmanager
def running_lab(*up_args: str, kong: str = "emulated") -> Iterator[LabHandle]:
    """``lab up --kong <kong> <args>``; yields a LabHandle; ``lab down`` afterwards, then kills by
    pid whatever the lab recorded that is somehow still alive (never by name).

    ``kong="real"`` runs Kong's own code (skipped, or failed under CI, when it cannot be had:
    see :func:`require_real_kong`); ``"emulated"`` runs the emulator, for what real Kong cannot
    do here (versions without an OSS release, the emulator's fault file)."""
    if kong == "real":
        require_real_kong(*_up_versions(up_args))
    if "--y-install" in up_args and up_args[up_args.index("--y-install") + 1] == "package":
        require_kong_package()
    res = lab_cli("up", "--kong", kong, *up_args, check=False)
    if res.returncode != 0:
        raise AssertionError(f"lab up {' '.join(up_args)} failed ({res.returncode}):\n{res.stderr}")
    handle = LabHandle(Path(res.stdout.strip().splitlines()[-1]), res.stdout, res.stderr)
    try:
        yield handle
    finally:
        pids = sorted(set(handle.pids) | set(handle.collect_pids()))
        down = lab_cli("down", check=False)
        _kill_leftovers(pids)
        # A lab down that fails leaves processes and state behind for the next lab: a test that
        # passed fails on it (a failing test keeps its own failure).
        if down.returncode != 0 and sys.exc_info()[0] is None:
            raise AssertionError(f"lab down failed ({down.returncode}):\n{down.stderr[-3000:]}")
