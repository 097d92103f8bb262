"""Where the lab keeps things, and the fixed loopback addresses it uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent.parent  # tests/lab
REPO_ROOT = LAB_DIR.parent.parent
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


def _lab_net() -> int:
    """``$KONG_LAB_NET`` (0-9): a second lab on one machine uses other addresses and ports.

    Net 0 is the documented layout (X at 127.0.1.N, Y at 127.0.2.N, ...); net K moves the
    third octet of node addresses up by 10*K and the lab's own ports up by 100*K, so two
    labs (each with its own KONG_LAB_RUN_DIR) can run side by side.
    """
    raw = os.environ.get("KONG_LAB_NET", "0") or "0"
    if not raw.isdigit() or not 0 <= int(raw) <= 9:
        raise ValueError(f"KONG_LAB_NET must be a number from 0 to 9, got {raw!r}")
    return int(raw)


LAB_NET = _lab_net()

# Loopback addresses and ports (one lab per net at a time).
PG_HOST = "127.0.0.1"
PG_PORT = 54329 + 100 * LAB_NET
ECHO_HOST = "127.0.0.1"
ECHO_PORT = 18080 + 100 * LAB_NET
FRONTEND_HOST = "127.0.0.1"
FRONTEND_PORT = 18000 + 100 * LAB_NET
HAPROXY_ADMIN_TCP = ("127.0.0.1", 18999 + 100 * LAB_NET)
PROMETHEUS_PORT = 19090 + 100 * LAB_NET
# The lab sshd (`lab up --connection ssh`), on every node address and on the LB host's.
SSH_PORT = 18022 + 100 * LAB_NET

KONG_PROXY_PORT = 8000
KONG_ADMIN_PORT = 8001
KONG_CLUSTER_PORT = 8005
KONG_STATUS_PORT = 8007


def node_host(group: str, index: int) -> str:
    """Loopback address of node ``index`` (1-based) of ``group`` ('x', 'y' or 'cp')."""
    third = {"x": 1, "y": 2, "cp": 3}[group] + 10 * LAB_NET
    if not 1 <= index <= 254:
        raise ValueError(f"node index {index} out of range 1..254")
    return f"127.0.{third}.{index}"


def default_run_dir() -> Path:
    """``tests/lab/run``, or ``$KONG_LAB_RUN_DIR`` when set (tests may use it)."""
    env = os.environ.get("KONG_LAB_RUN_DIR")
    return Path(env).resolve() if env else LAB_DIR / "run"


@dataclass(frozen=True)
class RunPaths:
    """Paths under the run directory."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yml"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def nodes(self) -> Path:
        return self.root / "nodes"

    @property
    def pg(self) -> Path:
        return self.root / "pg"

    @property
    def haproxy(self) -> Path:
        return self.root / "haproxy"

    @property
    def nginx(self) -> Path:
        return self.root / "nginx"

    @property
    def ssh(self) -> Path:
        return self.root / "ssh"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def echo(self) -> Path:
        return self.root / "echo"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def declarative(self) -> Path:
        return self.root / "kong.yml"

    @property
    def load_output(self) -> Path:
        return self.root / "load.json"

    def node_prefix(self, name: str) -> Path:
        return self.nodes / name
