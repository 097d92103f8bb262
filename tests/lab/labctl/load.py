"""Steady HTTP load against the lab frontend, measured the way a standard client sees it.

Each worker thread owns one keep-alive connection (``http.client``) and sends GETs
round-robin over a few targets (path + headers), paced to a total ``rate`` (req/s) or,
without a rate, as fast as it can (closed loop). Runs are bounded in time
(``duration``) and in count (``max_requests``: rate x duration when paced, 1,000,000
unpaced), and only loopback URLs are accepted. Unpaced workers pause 10 ms after a
request that got no answer at all, so a refused frontend does not spin a CPU.

What counts as a failure (DESIGN.md, "The lab"):

* A response with status 2xx or 3xx is ``ok``; any other status is a failure
  (``http_<status>``), and any exception is a failure (its class name, or ``timeout``).
* RFC 9112 section 9.3.1: when a *reused* idle keep-alive connection is closed by the
  server before any byte of the response arrived (reset, broken pipe, or EOF before
  the status line), the GET is retried once on a new connection. If the retry
  succeeds the request is ``ok`` and counted in ``stale_keepalive_retries`` (reported
  separately, never hidden); if the retry fails too, it is a failure with reason
  ``<reason> after stale keep-alive retry``. A close after some bytes of the response,
  or on a fresh connection, is never retried.

``longest_failure_window_seconds``: order all requests by completion time; a failure
window is a maximal run of consecutive failures in that order (no request succeeded
in between). Its length runs from the send time of the earliest-sent request in the
run to the completion time of the last one, so a lone failure counts for its own
duration. The longest such length is reported (0.0 when nothing failed).

The Kong version of each answer comes from the last ``kong/<version>`` token of the
``Via`` header (``kong/3.7.1`` or ``1.1 kong/3.10.0``), else of ``Server``
(``kong/3.9.1``), else ``none`` (for example HAProxy's own 503).
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import LabError

KONG_TOKEN = re.compile(r"kong/(\d+\.\d+\.\d+(?:\.\d+)?)", re.IGNORECASE)
STALE_ERRORS: tuple[type[BaseException], ...] = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)
DEFAULT_TARGETS: tuple[dict[str, Any], ...] = ({"name": "root", "path": "/", "headers": {}},)
MAX_DURATION = 6 * 3600.0


def kong_version(via: str | None, server: str | None) -> str | None:
    """Kong version from ``Via`` (preferred) or ``Server``; None when neither names Kong."""
    for header in (via, server):
        if header:
            found = KONG_TOKEN.findall(header)
            if found:
                return str(found[-1])
    return None


def check_loopback_url(url: str) -> tuple[str, int, str]:
    """Split ``url`` into host, port, base path; refuse anything that is not loopback http."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LabError(f"load: only http:// URLs are supported, got {url!r}")
    host = parts.hostname
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise LabError(f"load: {host} is not a loopback address; the lab sends traffic on loopback only")
        except ValueError as exc:
            raise LabError(f"load: {host!r} is not a loopback address") from exc
    return host, parts.port or 80, parts.path.rstrip("/")


# --------------------------------------------------------------------------- connection


class _CountingReader:
    """Wraps a response's file object and counts the bytes received."""

    def __init__(self, fp: Any, owner: _Conn) -> None:
        self._fp = fp
        self._owner = owner

    def _count(self, data: bytes) -> bytes:
        self._owner.response_bytes += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        return self._count(self._fp.readline(*args))

    def read(self, *args: Any) -> bytes:
        return self._count(self._fp.read(*args))

    def read1(self, *args: Any) -> bytes:
        return self._count(self._fp.read1(*args))

    def readinto(self, buf: Any) -> int:
        n = self._fp.readinto(buf)
        self._owner.response_bytes += n or 0
        return int(n or 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fp, name)


class _CountingResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, owner: _Conn, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = _CountingReader(self.fp, owner)  # type: ignore[assignment]


class _Conn(http.client.HTTPConnection):
    """HTTPConnection that knows how many response bytes the current request received."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.response_bytes = 0
        self.responses = 0  # completed responses on this TCP connection
        self.response_class = functools.partial(_CountingResponse, owner=self)  # type: ignore[assignment]


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Target:
        return cls(str(spec.get("name") or spec["path"]), str(spec["path"]),
                   {str(k): str(v) for k, v in dict(spec.get("headers") or {}).items()})


@dataclass(frozen=True)
class Sample:
    sent: float  # wall clock (epoch seconds)
    done: float
    ok: bool
    status: int | None
    reason: str | None
    version: str | None
    stale_retry: bool
    target: str
    worker: int


class LoadGenerator:
    """Background load: ``start()``, then ``stop()`` (or ``wait()``), then ``summary()``."""

    def __init__(
        self,
        url: str,
        targets: Sequence[Mapping[str, Any] | Target] | None = None,
        duration: float = 20.0,
        rate: float | None = 100.0,
        concurrency: int = 4,
        timeout: float = 10.0,
        max_requests: int | None = None,
    ) -> None:
        if not 0 < duration <= MAX_DURATION:
            raise LabError(f"load: duration must be in (0, {MAX_DURATION:.0f}] seconds")
        if rate is not None and rate <= 0:
            raise LabError("load: rate must be positive")
        if not 1 <= concurrency <= 512:
            raise LabError("load: concurrency must be in 1..512")
        self.url = url
        self.host, self.port, self.base_path = check_loopback_url(url)
        specs = targets or DEFAULT_TARGETS
        self.targets = [t if isinstance(t, Target) else Target.of(t) for t in specs]
        self.duration = float(duration)
        self.rate = float(rate) if rate else None
        self.concurrency = concurrency
        self.timeout = timeout
        if max_requests is None:
            max_requests = math.ceil(self.rate * self.duration) + concurrency if self.rate else 1_000_000
        self.max_requests = max_requests
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._issued = 0
        self.samples: list[Sample] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._t0_mono = 0.0

    # ------------------------------------------------------------------ control

    def start(self) -> LoadGenerator:
        if self._threads:
            raise LabError("load generator already started")
        self.started_at = time.time()
        self._t0_mono = time.monotonic()
        for i in range(self.concurrency):
            th = threading.Thread(target=self._worker, args=(i,), name=f"load-{i}", daemon=True)
            self._threads.append(th)
            th.start()
        return self

    def stop(self) -> None:
        """Ask workers to stop and wait for their in-flight requests."""
        self._stop.set()
        for th in self._threads:
            th.join(self.timeout * 2 + 5)
        if self.stopped_at is None:
            self.stopped_at = time.time()

    def wait(self, stop_event: threading.Event | None = None) -> None:
        """Block until the duration is over (or ``stop_event``/``stop()``), then stop."""
        end = self._t0_mono + self.duration
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0 or (stop_event is not None and stop_event.is_set()):
                break
            if all(not th.is_alive() for th in self._threads):
                break
            self._stop.wait(min(left, 0.2))
        self.stop()

    def run(self) -> dict[str, Any]:
        self.start()
        self.wait()
        return self.summary()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ workers

    def _take_ticket(self) -> int | None:
        with self._lock:
            if self._issued >= self.max_requests:
                return None
            self._issued += 1
            return self._issued - 1

    def _worker(self, index: int) -> None:
        conn: _Conn | None = None
        interval = self.concurrency / self.rate if self.rate else 0.0
        next_at = self._t0_mono + (index / self.rate if self.rate else 0.0)
        end = self._t0_mono + self.duration
        k = index
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= end:
                    break
                if self.rate:
                    if next_at > now:
                        if self._stop.wait(min(next_at - now, end - now)):
                            break
                        if time.monotonic() >= end:
                            break
                    next_at += interval
                    if next_at < time.monotonic() - 1.0:  # far behind: do not burst
                        next_at = time.monotonic()
                if self._take_ticket() is None:
                    break
                target = self.targets[k % len(self.targets)]
                k += 1
                sample, conn = self._one(conn, target, index)
                self.samples.append(sample)  # list.append is atomic
                if not self.rate and sample.status is None and self._stop.wait(0.01):
                    break  # closed loop: no hot spin while the frontend refuses connections
        finally:
            if conn is not None:
                conn.close()

    def _new_conn(self) -> _Conn:
        return _Conn(self.host, self.port, self.timeout)

    def _send(self, conn: _Conn, target: Target) -> tuple[int, str | None]:
        conn.response_bytes = 0
        conn.request("GET", self.base_path + target.path, headers=dict(target.headers))
        resp = conn.getresponse()
        resp.read()
        conn.responses += 1
        version = kong_version(resp.getheader("Via"), resp.getheader("Server"))
        return resp.status, version

    def _one(self, conn: _Conn | None, target: Target, worker: int) -> tuple[Sample, _Conn | None]:
        sent = time.time()
        if conn is None or (conn.sock is None and conn.responses > 0):
            # http.client closed it after a "Connection: close" answer: open a new one
            if conn is not None:
                conn.close()
            conn = self._new_conn()
        reused = conn.responses > 0
        stale_retry = False
        try:
            status, version = self._send(conn, target)
        except Exception as exc:  # noqa: BLE001 - every client-side error is classified
            received = conn.response_bytes
            conn.close()
            conn = None
            if not (reused and received == 0 and isinstance(exc, STALE_ERRORS)):
                return self._failure(sent, None, _reason(exc), None, False, target, worker), None
            # RFC 9112 9.3.1: the server closed an idle reused connection before any
            # byte of the response; a client may retry an idempotent request once.
            stale_retry = True
            conn = self._new_conn()
            try:
                status, version = self._send(conn, target)
            except Exception as exc2:  # noqa: BLE001
                conn.close()
                reason = f"{_reason(exc2)} after stale keep-alive retry"
                return self._failure(sent, None, reason, None, True, target, worker), None
        ok = 200 <= status < 400
        sample = Sample(sent, time.time(), ok, status, None if ok else f"http_{status}",
                        version, stale_retry, target.name, worker)
        return sample, conn

    @staticmethod
    def _failure(sent: float, status: int | None, reason: str, version: str | None,
                 stale: bool, target: Target, worker: int) -> Sample:
        return Sample(sent, time.time(), False, status, reason, version, stale, target.name, worker)

    # ------------------------------------------------------------------ results

    def summary(self) -> dict[str, Any]:
        samples = sorted(self.samples, key=lambda s: s.done)
        start = self.started_at or time.time()
        end = self.stopped_at or time.time()
        ok = [s for s in samples if s.ok]
        failed = [s for s in samples if not s.ok]
        by_version = Counter(s.version or "none" for s in samples)
        ok_by_version = Counter(s.version or "none" for s in ok)
        by_status = Counter(str(s.status) if s.status is not None else "none" for s in samples)
        by_target = Counter(s.target for s in samples)
        latencies = sorted((s.done - s.sent) * 1000.0 for s in samples)
        window = longest_failure_window(samples)
        series: dict[int, dict[str, Any]] = {}
        for s in samples:
            sec = max(0, int(s.done - start))
            row = series.setdefault(
                sec, {"second": sec, "requests": 0, "ok": 0, "failed": 0,
                      "stale_keepalive_retries": 0, "by_version": Counter()}
            )
            row["requests"] += 1
            row["ok" if s.ok else "failed"] += 1
            row["stale_keepalive_retries"] += int(s.stale_retry and s.ok)
            row["by_version"][s.version or "none"] += 1
        timeseries = []
        for sec in sorted(series):
            row = series[sec]
            row["by_version"] = dict(sorted(row["by_version"].items()))
            timeseries.append(row)
        return {
            "url": self.url,
            "targets": [{"name": t.name, "path": t.path, "headers": dict(t.headers)} for t in self.targets],
            "rate": self.rate,
            "concurrency": self.concurrency,
            "duration_requested_seconds": self.duration,
            "start": _iso(start),
            "end": _iso(end),
            "start_ts": round(start, 3),
            "end_ts": round(end, 3),
            "duration_seconds": round(end - start, 3),
            "requests": len(samples),
            "ok": len(ok),
            "failed": len(failed),
            "failed_by_reason": dict(Counter(s.reason or "unknown" for s in failed).most_common()),
            "stale_keepalive_retries": sum(1 for s in samples if s.stale_retry and s.ok),
            "stale_keepalive_retries_failed": sum(1 for s in samples if s.stale_retry and not s.ok),
            "by_version": dict(sorted(by_version.items())),
            "ok_by_version": dict(sorted(ok_by_version.items())),
            "by_status": dict(sorted(by_status.items())),
            "by_target": dict(sorted(by_target.items())),
            "latency_ms": _percentiles(latencies),
            "longest_failure_window_seconds": window["seconds"] if window else 0.0,
            "longest_failure_window": window,
            "failures_first_last": (
                {"first": _iso(failed[0].done), "last": _iso(failed[-1].done)} if failed else None
            ),
            "timeseries": timeseries,
            "definitions": {
                "failed": "status not 2xx/3xx, or a client-side error, after at most one "
                          "RFC 9112 9.3.1 stale keep-alive retry",
                "stale_keepalive_retries": "GETs that succeeded only after a retry on a new "
                                           "connection because a reused idle keep-alive "
                                           "connection was closed before any response byte",
                "longest_failure_window_seconds": "requests ordered by completion; a window is "
                                                  "a maximal run of consecutive failures; length "
                                                  "= last completion - earliest send in the run",
                "timeseries": "per second since start, bucketed by completion time",
            },
        }


def longest_failure_window(samples: Sequence[Sample]) -> dict[str, Any] | None:
    """The longest run of consecutive failures (by completion time); see module doc."""
    best: dict[str, Any] | None = None
    run: list[Sample] = []

    def close_run() -> None:
        nonlocal best
        if not run:
            return
        first_sent = min(s.sent for s in run)
        seconds = run[-1].done - first_sent
        if best is None or seconds > best["seconds"]:
            best = {"seconds": round(seconds, 3), "start": _iso(first_sent),
                    "end": _iso(run[-1].done), "failures": len(run)}

    for s in sorted(samples, key=lambda x: x.done):
        if s.ok:
            close_run()
            run = []
        else:
            run.append(s)
    close_run()
    return best


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    return type(exc).__name__


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None

    def pct(p: float) -> float:
        idx = min(len(values) - 1, max(0, math.ceil(p / 100.0 * len(values)) - 1))
        return round(values[idx], 2)

    return {"p50": pct(50), "p95": pct(95), "p99": pct(99), "max": round(values[-1], 2)}


def write_summary(summary: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
