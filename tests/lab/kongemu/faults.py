"""Fault injection for tests: make a running emulated node answer proxied requests with 5xx.

Emulator-only (real Kong has nothing like it, and the collection never touches it): a
test writes ``<prefix>/emulator_faults.json`` next to a running node, for example

    {"proxy_5xx_rate": 0.5, "status": 503}

and from then on that fraction of the requests the node's proxy routes to a service
is answered by Kong itself (``Server: kong/<v>``, JSON ``{"message": ...}``, counted in
``/metrics`` with ``source="kong"``) instead of being forwarded. The fraction is exact,
not random: a running sum lets one request in ``1/rate`` through to the fault. Removing
the file (or a rate of 0) turns it off. The file is re-read when its modification time
changes, checked at most every ``CHECK_INTERVAL`` seconds, so a change applies within
about that time, without a reload.

Keys: ``proxy_5xx_rate`` (0..1, default 0), ``status`` (500-599, default 503),
``message`` (default Kong's ``An unexpected error occurred``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

FAULTS_FILE = "emulator_faults.json"
CHECK_INTERVAL = 0.2
DEFAULT_MESSAGE = "An unexpected error occurred"


@dataclass(frozen=True)
class FaultSpec:
    rate: float = 0.0
    status: int = 503
    message: str = DEFAULT_MESSAGE


def parse(text: str) -> FaultSpec:
    """A FaultSpec from the file's JSON; anything unusable turns faults off."""
    try:
        doc = json.loads(text)
        rate = float(doc.get("proxy_5xx_rate", 0.0))
        status = int(doc.get("status", 503))
        message = str(doc.get("message", DEFAULT_MESSAGE))
    except (ValueError, TypeError, AttributeError):
        return FaultSpec()
    if not 0.0 <= rate <= 1.0 or not 500 <= status <= 599:
        return FaultSpec()
    return FaultSpec(rate, status, message)


class Faults:
    """The faults file of one prefix, read lazily; ``next_fault()`` per proxied request."""

    def __init__(self, prefix: str, clock: object = time.monotonic) -> None:
        self.path = os.path.join(prefix, FAULTS_FILE)
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._mtime: float | None = None
        self._spec = FaultSpec()
        self._acc = 0.0

    def _refresh(self) -> None:
        now = self._clock()  # type: ignore[operator]
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            self._mtime, self._spec, self._acc = None, FaultSpec(), 0.0
            return
        if mtime == self._mtime:
            return
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            return
        self._mtime, self._spec, self._acc = mtime, parse(text), 0.0

    def next_fault(self) -> FaultSpec | None:
        """The fault to answer this request with, or None to serve it normally."""
        with self._lock:
            self._refresh()
            if self._spec.rate <= 0.0:
                return None
            self._acc += self._spec.rate
            if self._acc >= 1.0 - 1e-9:
                self._acc -= 1.0
                return self._spec
            return None
