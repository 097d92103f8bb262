"""Upstream echo service: threaded HTTP/1.1 with keep-alive, answers JSON.

Every request gets a 200 with ``{"method", "path", "query", "headers", "body_length",
"echo": "lab-echo"}``. Two query parameters let tests shape answers:
``echo_status=<code>`` (answer with that status) and ``echo_delay_ms=<n>`` (sleep
before answering, capped at 30 s). No ``Server`` header is sent, so Kong adds its own
(kong-facts 6.6: Kong sets ``Server`` only when the upstream sent none).

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
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 8 * 1024 * 1024


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
        try:
            if "echo_status" in query:
                status = int(query["echo_status"][0])
                if not 200 <= status <= 599:
                    status = 400
            if "echo_delay_ms" in query:
                time.sleep(min(int(query["echo_delay_ms"][0]), 30000) / 1000.0)
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
