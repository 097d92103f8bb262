"""Process and network helpers: spawn daemons, identify them by pid, wait with deadlines."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import LabError

T = TypeVar("T")


# --------------------------------------------------------------------------- pids


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def proc_starttime(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (identifies a pid against reuse)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def proc_ppid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int | None, starttime: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, started at ``starttime``."""
    if not pid or pid <= 0:
        return False
    reap(pid)
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return starttime is None or int(fields[19]) == starttime


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (by scanning /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and proc_ppid(int(entry.name)) == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """All living descendants of ``pid``."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = proc_ppid(int(entry.name))
            if ppid is not None:
                parent_of[int(entry.name)] = ppid
    found: list[int] = []
    frontier = [pid]
    while frontier:
        cur = frontier.pop()
        kids = [p for p, pp in parent_of.items() if pp == cur]
        found.extend(kids)
        frontier.extend(kids)
    return [p for p in found if is_alive(p)]


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, PermissionError):
        return None
    first = text.splitlines()[0].strip() if text else ""
    return int(first) if first.isdigit() else None


@dataclass
class ProcRef:
    """A process the lab started: pid plus start time so a reused pid is never signalled."""

    pid: int
    starttime: int | None

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        return cls(pid, proc_starttime(pid))

    def alive(self) -> bool:
        return is_alive(self.pid, self.starttime)

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def to_json(self) -> dict[str, int | None]:
        return {"pid": self.pid, "starttime": self.starttime}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcRef:
        pid = data.get("pid")
        st = data.get("starttime")
        return cls(int(pid) if isinstance(pid, int) else 0, st if isinstance(st, int) else None)


def wait_exit(procs: Iterable[ProcRef], timeout: float) -> list[ProcRef]:
    """Wait until all ``procs`` exited or ``timeout`` passed; return those still alive."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [p for p in pending if p.alive()]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return pending


def stop_process(ref: ProcRef, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal ``ref``, wait for it; SIGKILL it after ``timeout``. True if it had to be killed."""
    if not ref.signal(sig):
        return False
    if not wait_exit([ref], timeout):
        return False
    ref.signal(signal.SIGKILL)
    wait_exit([ref], 5.0)
    return True


# --------------------------------------------------------------------------- waiting


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    hint: str = "",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; raise LabError at the deadline.

    Exceptions raised by ``predicate`` count as "not yet" and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, LabError) as exc:  # not ready yet
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            extra = f"; {hint}" if hint else ""
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_in_use(host: str, port: int) -> bool:
    """True if something accepts connections on host:port."""
    return tcp_accepts(host, port, timeout=0.3)


# --------------------------------------------------------------------------- running commands


def is_root() -> bool:
    return os.geteuid() == 0


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without KONG_* / PG* variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KONG_") and not k.startswith("PG") and k != "PYTHONPATH"
    }
    if extra:
        env.update(extra)
    return env


def as_user_argv(argv: Sequence[str], user: str | None) -> list[str]:
    """Prefix ``argv`` with ``runuser -u user --`` when running as root and ``user`` is set."""
    if user and is_root():
        return ["runuser", "-u", user, "--", *argv]
    return list(argv)


def user_ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and raise LabError with its stderr on failure."""
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by the lab
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # our own process group: killed whole if we give up
        )
    except FileNotFoundError as exc:
        raise LabError(f"{what}: executable not found: {argv[0]}") from exc
    try:
        stdout, stderr = proc.communicate(input_text, timeout=timeout)
    except BaseException as exc:  # timeout, KeyboardInterrupt, SIGTERM turned into one
        _kill_group(proc)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise LabError(f"{what}: timed out after {timeout:.0f}s: {' '.join(argv[:3])} ...") from exc
        raise
    res = subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
    if check and res.returncode != 0:
        tail = (res.stderr.strip() or res.stdout.strip())[-2000:]
        raise LabError(f"{what} failed (exit {res.returncode}): {tail}")
    return res


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc``'s whole process group (children included) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


def spawn_daemon(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcRef:
    """Start a long-running process in its own session with output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by the lab
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
        )
    return ProcRef.of(proc.pid)
