"""Upstream echo service: threaded HTTP/1.1 with keep-alive, answers JSON.

Every request gets a 200 with ``{"method", "path", "query", "headers", "body_length",
"echo": "lab-echo"}``. Query parameters let tests shape answers:
``echo_status=<code>`` (answer with that status) and ``echo_delay_ms=<n>`` (sleep
before answering, capped at 30 s). No ``Server`` header is sent, so Kong adds its own
(kong-facts 6.6: Kong sets ``Server`` only when the upstream sent none).

Held requests, for tests that must know a request is in flight without a race against
the clock: ``echo_hold=<key>`` holds the answer until ``<key>`` is released (at most
60 s; the answer then says ``"hold": "timed out"``, else ``"hold": "released"``).
``echo_held=<key>`` answers at once with ``{"held": <requests waiting on key now>,
"released": <bool>}``; ``echo_release=<key>`` releases every request held on ``key``,
now and later, and answers ``{"released": <how many were waiting>}``. Keys live in
the running service only.

Run as ``python -m labctl.echo --host 127.0.0.1 --port 18080``.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 8 * 1024 * 1024
MAX_HOLD = 60.0


class Holds:
    """Requests held on a key until a test releases it (``echo_hold`` / ``echo_release``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._waiting: dict[str, int] = {}

    def _event(self, key: str) -> threading.Event:
        return self._events.setdefault(key, threading.Event())

    def hold(self, key: str) -> bool:
        """Wait until ``key`` is released (True) or MAX_HOLD passes (False)."""
        with self._lock:
            event = self._event(key)
            self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            return event.wait(MAX_HOLD)
        finally:
            with self._lock:
                self._waiting[key] -= 1

    def held(self, key: str) -> dict[str, object]:
        with self._lock:
            return {"held": self._waiting.get(key, 0), "released": self._event(key).is_set()}

    def release(self, key: str) -> dict[str, object]:
        with self._lock:
            self._event(key).set()
            return {"released": self._waiting.get(key, 0)}


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lab-echo"
    timeout = 75  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stalls on keep-alive
    wbufsize = 65536  # headers and body leave in one write (flushed per request)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        status = 200
        holds: Holds = self.server.holds  # type: ignore[attr-defined]
        extra: dict[str, object] = {}
        try:
            if "echo_held" in query:
                extra = holds.held(query["echo_held"][0])
            if "echo_release" in query:
                extra = holds.release(query["echo_release"][0])
            if "echo_status" in query:
                status = int(query["echo_status"][0])
                if not 200 <= status <= 599:
                    status = 400
            if "echo_delay_ms" in query:
                time.sleep(min(int(query["echo_delay_ms"][0]), 30000) / 1000.0)
            if "echo_hold" in query:
                extra["hold"] = "released" if holds.hold(query["echo_hold"][0]) else "timed out"
        except ValueError:
            status = 400
        payload = json.dumps(
            {
                "echo": "lab-echo",
                "method": self.command,
                "path": parts.path,
                "query": {k: v if len(v) > 1 else v[0] for k, v in query.items()},
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_length": len(body),
                **extra,
            }
        ).encode()
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        return  # quiet: the lab's load generator would flood the log


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holds = Holds()

    def handle_error(self, request: object, client_address: object) -> None:
        # Client resets under load are normal; never print tracebacks for them.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve(host: str, port: int) -> EchoServer:
    """Bind and return a server (not yet serving); used by tests in-process."""
    return EchoServer((host, port), EchoHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labctl.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args(argv)
    if not args.host.startswith("127."):
        parser.error("the echo service binds to loopback only")
    server = serve(args.host, args.port)

    def _stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"lab-echo listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
