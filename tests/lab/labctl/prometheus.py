"""A Prometheus server scraping the lab's Kong nodes, for the traffic gate's `source: prometheus`.

Layout under ``run/prometheus/``: ``prometheus.yml`` (one job ``kong`` scraping each node's status
listener ``/metrics`` every second, each target labelled ``kong_cluster: <group>``), ``data/`` (the
TSDB), ``prometheus.log`` and ``prometheus.pid``. It listens on ``127.0.0.1:PROMETHEUS_PORT``
(19090 + 100 * KONG_LAB_NET) only.

Debian's ``prometheus`` package (tests/lab/setup-system.sh) installs the binary and a system service;
the lab never uses the service: it starts its own process and stops it by pid. `lab up` does not
start it: a test does, and stops it before `lab down` (which would find its process in the run
directory):

    prom = Prometheus(run_dir, {"x": ["127.0.1.1:8007"], "y": ["127.0.2.1:8007"]})
    prom.start()
    try:
        prom.query('up{kong_cluster="y"}')
    finally:
        prom.stop()
"""

from __future__ import annotations

import json
import shutil
import signal
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import LabError
from .paths import PROMETHEUS_PORT
from .proc import ProcRef, clean_env, spawn_daemon, stop_process, wait_until

HOST = "127.0.0.1"
JOB = "kong"
GROUP_LABEL = "kong_cluster"


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if not found:
        raise LabError("prometheus not found; install Debian's prometheus package (apt-get install prometheus; "
                       "tests/lab/setup-system.sh does)")
    return found


class Prometheus:
    """One Prometheus process of the lab: config, start, queries, stop (by pid)."""

    def __init__(self, run_dir: Path, targets: Mapping[str, Sequence[str]], port: int = PROMETHEUS_PORT,
                 scrape_interval: str = "1s") -> None:
        self.base = Path(run_dir) / "prometheus"
        self.targets = {group: list(addresses) for group, addresses in targets.items()}
        self.port = port
        self.scrape_interval = scrape_interval
        self.ref: ProcRef | None = None

    @property
    def config(self) -> Path:
        return self.base / "prometheus.yml"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "prometheus.log"

    @property
    def pidfile(self) -> Path:
        return self.base / "prometheus.pid"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def render(self) -> str:
        """prometheus.yml (JSON is YAML): every group's status listeners, labelled with the group."""
        doc = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": addresses, "labels": {GROUP_LABEL: group}}
                                   for group, addresses in self.targets.items() if addresses],
            }],
        }
        return json.dumps(doc, indent=2) + "\n"

    def write(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(exist_ok=True)
        self.config.write_text(self.render(), encoding="utf-8")

    def start(self, timeout: float = 30.0) -> ProcRef:
        """Write the config, start Prometheus, and wait until it is ready and has scraped every target once."""
        if self.ref is not None and self.ref.alive():
            raise LabError(f"Prometheus already runs (pid {self.ref.pid})")
        self.write()
        argv = [prometheus_binary(), f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                f"--web.listen-address={HOST}:{self.port}", "--storage.tsdb.retention.time=1d",
                "--log.level=warn"]
        self.ref = spawn_daemon(argv, log_path=self.log, env=clean_env(), cwd=self.base)
        self.pidfile.write_text(f"{self.ref.pid}\n", encoding="utf-8")
        try:
            wait_until(self._ready, timeout, f"Prometheus on {self.url}", interval=0.2,
                       hint=f"see {self.log}")
            expected = sum(len(addresses) for addresses in self.targets.values())
            wait_until(lambda: len(self.query(f'up{{job="{JOB}"}} == 1')) == expected, timeout,
                       f"Prometheus to scrape the {expected} Kong status listeners", interval=0.2,
                       hint=f"see {self.url}/targets")
        except BaseException:
            self.stop()
            raise
        return self.ref

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310 - loopback URL
                return resp.status == 200
        except OSError:
            return False

    def alive(self) -> bool:
        return self.ref is not None and self.ref.alive()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by pid (SIGKILL after ``timeout``); a no-op when it does not run."""
        if self.ref is not None:
            stop_process(self.ref, signal.SIGTERM, timeout)
            self.ref = None
        self.pidfile.unlink(missing_ok=True)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        form = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=urllib.parse.urlencode(form).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback URL
            doc = json.loads(resp.read())
        if doc.get("status") != "success":
            raise LabError(f"Prometheus refused {promql}: {doc.get('error')}")
        return list(doc["data"]["result"])

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of a query answering one sample (None for an empty answer)."""
        result = self.query(promql, at)
        return float(result[0]["value"][1]) if result else None
