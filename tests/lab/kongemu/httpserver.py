"""A small, robust, threaded HTTP/1.1 server for the emulated Kong node.

One thread accepts on each listening socket; every accepted connection gets a
thread that serves requests on it with keep-alive until the peer closes, the idle
timeout passes, a request asks for `Connection: close`, or the server shuts down.

Graceful shutdown (what nginx does on SIGQUIT, kong-facts 8):

* the listening sockets are closed at once, after accepting what already sits in
  their backlog (so a connection the kernel accepted is served, not reset);
* a request that is being read or answered is finished and answered with
  `Connection: close`;
* an idle keep-alive connection is closed only *between* requests: when the wake-up
  comes and no byte of a next request has arrived. A connection that has not yet
  carried a request gets a short grace period for its first request;
* `shutdown()` returns when every connection is closed or the deadline passed.

Requests and responses are fully buffered (Content-Length on every response), which
is all the emulator needs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Callable, Protocol
from urllib.parse import parse_qs, unquote

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
FIRST_REQUEST_GRACE = 1.0

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Request Entity Too Large", 414: "Request-URI Too Large",
    415: "Unsupported Media Type", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


class Logger(Protocol):
    def error(self, msg: str) -> None: ...
    def warn(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def debug(self, msg: str) -> None: ...


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    client_addr: tuple[str, int]
    local_addr: tuple[str, int]
    listener: str
    start: float = field(default_factory=time.monotonic)
    _hmap: dict[str, str] | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def raw_query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @property
    def unquoted_path(self) -> str:
        return unquote(self.path)

    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.raw_query, keep_blank_values=True)

    def header_map(self) -> dict[str, str]:
        """Lower-cased names; repeated headers joined with ', '."""
        if self._hmap is None:
            hmap: dict[str, str] = {}
            for name, value in self.headers:
                key = name.lower()
                hmap[key] = f"{hmap[key]}, {value}" if key in hmap else value
            self._hmap = hmap
        return self._hmap

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.header_map().get(name.lower(), default)


@dataclass
class Response:
    """A fully buffered response. Content-Length/Date/Connection are added."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False


Handler = Callable[[Request], Response]
DoneHook = Callable[[Request, Response, float], None]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Closed(Exception):
    """The peer went away, or the server closed an idle connection."""


@dataclass
class _Listen:
    name: str
    sock: socket.socket
    handler: Handler
    addr: str
    thread: threading.Thread | None = None
    removed: bool = False


class Stats:
    """nginx stub_status counters (the `server` section of /status)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.handled = 0
        self.active = 0
        self.reading = 0
        self.writing = 0
        self.total_requests = 0

    def add(self, **deltas: int) -> None:
        with self.lock:
            for key, delta in deltas.items():
                setattr(self, key, getattr(self, key) + delta)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "connections_accepted": self.accepted,
                "connections_handled": self.handled,
                "connections_active": self.active,
                "connections_reading": self.reading,
                "connections_writing": self.writing,
                "connections_waiting": max(0, self.active - self.reading - self.writing),
                "total_requests": self.total_requests,
            }


class _Conn:
    """Per-connection state shared between its thread and the server."""

    __slots__ = ("sock", "buf", "busy", "served", "idle_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.busy = False
        self.served = 0
        self.idle_since = time.monotonic()


class HTTPServer:
    """Threaded HTTP/1.1 server over several listening sockets."""

    def __init__(
        self,
        log: Logger,
        idle_timeout: float = 60.0,
        server_header: str | None = None,
        on_done: DoneHook | None = None,
    ) -> None:
        self.log = log
        self.idle_timeout = idle_timeout
        self.server_header = server_header
        self.on_done = on_done
        self.stats = Stats()
        self._listeners: list[_Listen] = []
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._all_closed = threading.Condition(self._lock)

    # ------------------------------------------------------------------ listeners
    def add_listener(
        self, name: str, host: str, port: int, handler: Handler, backlog: int = 1024
    ) -> str:
        """Bind and listen. Raises OSError (e.g. EADDRINUSE) on failure."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        addr = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self._listeners.append(_Listen(name, sock, handler, addr))
        return addr

    def listening(self) -> list[tuple[str, str]]:
        return [(lst.name, lst.addr) for lst in self._listeners]

    def start(self) -> None:
        for lst in self._listeners:
            if lst.thread is None:
                lst.thread = threading.Thread(
                    target=self._accept_loop, args=(lst,), name=f"accept-{lst.name}-{lst.addr}",
                    daemon=True,
                )
                lst.thread.start()

    def remove_listener(self, name: str, addr: str) -> None:
        """Stop one listener (reload that dropped it); its connections go on."""
        for lst in list(self._listeners):
            if lst.name == name and lst.addr == addr:
                self._listeners.remove(lst)
                lst.removed = True
                try:
                    lst.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                if lst.thread is not None:
                    lst.thread.join(2.0)
                _close_listen(lst.sock)

    def _accept_loop(self, lst: _Listen) -> None:
        lst.sock.setblocking(False)
        poller = select.poll()
        poller.register(lst.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not lst.removed:
            try:
                poller.poll()
            except InterruptedError:
                continue
            if lst.removed:
                return
            if self._closing.is_set():
                break
            for _i in range(64):
                if not self._accept_one(lst):
                    break
        if lst.removed:
            return
        # Graceful: stop new handshakes (drop filter: new clients' SYNs go unanswered and
        # they are refused once the socket is closed), accept whatever the kernel already
        # queued, then close. Without the filter, a connection completing between the
        # last accept() and close() would be reset instead of refused.
        keep = _drop_new_connections(lst.sock)
        while self._accept_one(lst):
            pass
        time.sleep(0.01)
        while self._accept_one(lst):
            pass
        _close_listen(lst.sock)
        del keep

    def _accept_one(self, lst: _Listen) -> bool:
        try:
            conn_sock, _addr = lst.sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.log.error(f"accept() failed ({exc.errno}: {exc.strerror})")
                time.sleep(0.05)
            return False
        conn_sock.setblocking(True)
        try:
            conn_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn = _Conn(conn_sock)
        with self._lock:
            self._conns.add(conn)
        self.stats.add(accepted=1, handled=1, active=1)
        thread = threading.Thread(
            target=self._serve_conn, args=(lst, conn), name=f"conn-{lst.name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:
            self.log.error(f"could not start a connection thread: {exc}")
            self._drop(conn)
        return True

    # ------------------------------------------------------------------ shutdown
    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def begin_shutdown(self) -> None:
        """Stop accepting and wake idle connections so they close (graceful)."""
        if not self._closing.is_set():
            self._closing.set()
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def shutdown(self, deadline: float) -> bool:
        """Graceful shutdown; True when every connection closed before ``deadline``."""
        self.begin_shutdown()
        for lst in self._listeners:
            if lst.thread is not None:
                lst.thread.join(max(0.0, deadline - time.monotonic()))
        with self._all_closed:
            while self._conns:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._all_closed.wait(min(left, 0.2))
        return True

    def close_now(self) -> None:
        """Fast shutdown: close every socket."""
        self._closing.set()
        for lst in self._listeners:
            _close_listen(lst.sock)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    def _drop(self, conn: _Conn) -> None:
        try:
            conn.sock.close()
        except OSError:
            pass
        with self._all_closed:
            if conn in self._conns:
                self._conns.discard(conn)
                self.stats.add(active=-1)
            self._all_closed.notify_all()

    # ------------------------------------------------------------------ connection
    def _serve_conn(self, lst: _Listen, conn: _Conn) -> None:
        try:
            peer = conn.sock.getpeername()
            local = conn.sock.getsockname()
        except OSError:
            self._drop(conn)
            return
        try:
            while True:
                if not self._wait_for_request(conn):
                    break
                if not self._serve_one(lst, conn, peer, local):
                    break
        except (_Closed, OSError):
            pass
        except Exception as exc:  # pylint: disable=broad-except
            self.log.error(f"connection handler crashed: {exc!r}")
        finally:
            self._drop(conn)

    def _wait_for_request(self, conn: _Conn) -> bool:
        """Idle wait between requests. False: close the connection."""
        if conn.buf.strip(b"\r\n"):
            return True
        conn.idle_since = time.monotonic()
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        sock_fd = conn.sock.fileno()
        while True:
            if self._closing.is_set():
                if conn.served:
                    # Between requests: close unless a request already started.
                    ready = poller.poll(0)
                    if any(fd == sock_fd for fd, _ev in ready):
                        return True
                    return False
                # Never carried a request: give the client its first request.
                left = conn.idle_since + FIRST_REQUEST_GRACE - time.monotonic()
                if left <= 0:
                    return False
                single = select.poll()
                single.register(conn.sock, select.POLLIN)
                return bool(single.poll(int(left * 1000) + 1))
            left = conn.idle_since + self.idle_timeout - time.monotonic()
            if left <= 0:
                return False
            try:
                events = poller.poll(int(left * 1000) + 1)
            except InterruptedError:
                continue
            if any(fd == sock_fd for fd, _ev in events):
                return True

    def _fill(self, conn: _Conn) -> None:
        data = conn.sock.recv(65536)
        if not data:
            raise _Closed()
        conn.buf += data

    def _read_head(self, conn: _Conn) -> bytes:
        while True:
            # Tolerate empty lines before a request line (RFC 9112 2.2).
            while conn.buf[:2] == b"\r\n":
                del conn.buf[:2]
            while conn.buf[:1] == b"\n":
                del conn.buf[:1]
            idx = conn.buf.find(b"\r\n\r\n")
            if idx >= 0:
                head = bytes(conn.buf[:idx])
                del conn.buf[: idx + 4]
                return head
            idx = conn.buf.find(b"\n\n")
            if idx >= 0:
                head = bytes(conn.buf[:idx])
                del conn.buf[: idx + 2]
                return head
            if len(conn.buf) > MAX_HEAD:
                raise _BadRequest(431, "request header too large")
            self._fill(conn)

    def _read_exact(self, conn: _Conn, size: int) -> bytes:
        while len(conn.buf) < size:
            self._fill(conn)
        data = bytes(conn.buf[:size])
        del conn.buf[:size]
        return data

    def _read_line(self, conn: _Conn) -> bytes:
        while True:
            idx = conn.buf.find(b"\n")
            if idx >= 0:
                line = bytes(conn.buf[: idx + 1])
                del conn.buf[: idx + 1]
                return line
            if len(conn.buf) > MAX_HEAD:
                raise _BadRequest(400, "chunk line too long")
            self._fill(conn)

    def _read_chunked(self, conn: _Conn) -> bytes:
        out = bytearray()
        while True:
            line = self._read_line(conn).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError as exc:
                raise _BadRequest(400, "bad chunk size") from exc
            if size == 0:
                while self._read_line(conn).strip():
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY:
                raise _BadRequest(413, "request body too large")
            out += self._read_exact(conn, size)
            self._read_line(conn)

    def _serve_one(
        self, lst: _Listen, conn: _Conn, peer: tuple[str, int], local: tuple[str, int]
    ) -> bool:
        """Read, handle and answer one request. False: close the connection."""
        self.stats.add(reading=1)
        conn.busy = True
        reading = True
        try:
            try:
                head = self._read_head(conn)
                # nginx: `reading` while it reads the request header; the body is `writing`
                self.stats.add(reading=-1, writing=1, total_requests=1)
                reading = False
                request, keep_alive = self._parse(lst, conn, head, peer, local)
            except _BadRequest as exc:
                if reading:
                    self.stats.add(reading=-1, writing=1)
                    reading = False
                self._send(conn, Response(exc.status, [("Content-Type", "text/plain")],
                                          f"{exc}\n".encode(), close=True), "GET", False)
                return False
            try:
                response = lst.handler(request)
            except Exception as exc:  # pylint: disable=broad-except
                self.log.error(f"handler error on {lst.name} {request.method} {request.path}: {exc!r}")
                response = Response(
                    500, [("Content-Type", "application/json; charset=utf-8")],
                    b'{"message":"An unexpected error occurred"}',
                )
            keep_alive = keep_alive and not response.close and not self._closing.is_set()
            self._send(conn, response, request.method, keep_alive)
            conn.served += 1
            if self.on_done is not None:
                try:
                    self.on_done(request, response, time.monotonic() - request.start)
                except Exception as exc:  # pylint: disable=broad-except
                    self.log.error(f"request log hook failed: {exc!r}")
            return keep_alive
        finally:
            conn.busy = False
            if reading:
                self.stats.add(reading=-1)
            else:
                self.stats.add(writing=-1)

    def _parse(
        self, lst: _Listen, conn: _Conn, head: bytes, peer: tuple[str, int],
        local: tuple[str, int],
    ) -> tuple[Request, bool]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
            raise _BadRequest(400, "bad request") from exc
        lines = text.replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "bad request line")
        method, target, version = parts
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            if line[0] in " \t" and headers:
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "bad header line")
            headers.append((name, value.strip()))
        request = Request(method, target, version, headers, b"", peer, local, lst.name)
        hmap = request.header_map()
        connection = hmap.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        if hmap.get("expect", "").lower() == "100-continue":
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in hmap.get("transfer-encoding", "").lower():
            request.body = self._read_chunked(conn)
        elif "content-length" in hmap:
            try:
                length = int(hmap["content-length"])
            except ValueError as exc:
                raise _BadRequest(400, "bad content-length") from exc
            if length < 0:
                raise _BadRequest(400, "bad content-length")
            if length > MAX_BODY:
                raise _BadRequest(413, "request body too large")
            request.body = self._read_exact(conn, length)
        return request, keep_alive

    def _send(self, conn: _Conn, response: Response, method: str, keep_alive: bool) -> None:
        status = response.status
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        names = set()
        for name, value in response.headers:
            lname = name.lower()
            if lname in ("content-length", "connection", "transfer-encoding", "keep-alive"):
                continue
            names.add(lname)
            lines.append(f"{name}: {value}")
        if "date" not in names:
            lines.append(f"Date: {formatdate(usegmt=True)}")
        if self.server_header and "server" not in names:
            lines.append(f"Server: {self.server_header}")
        body = response.body
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            lines.append(f"Content-Length: {len(body)}")
        if keep_alive:
            lines.append("Connection: keep-alive")
        else:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD":
            data += body
        conn.sock.sendall(data)


_SO_ATTACH_FILTER = 26


def _drop_new_connections(sock: socket.socket) -> object:
    """Attach a classic BPF program that drops every packet (Linux); best effort.

    Returns the program buffer, which must stay alive while the filter is attached.
    """
    try:
        # struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } = BPF_RET|BPF_K, 0
        insn = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("=HBBI", 0x06, 0, 0, 0))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        fprog = struct.pack("HP", 1, ctypes.addressof(insn))
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        return insn
    except (OSError, AttributeError, struct.error):
        return None


def _close_listen(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
