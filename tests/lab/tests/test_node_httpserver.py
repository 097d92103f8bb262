"""The emulated node's HTTP/1.1 server: keep-alive, framing, graceful shutdown.

Emulator only: this is the emulator's own server (real Kong is nginx). A graceful quit
under keep-alive load is checked on both providers by test_node_process."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import nodefixtures  # noqa: F401 # pylint: disable=unused-import
import pytest

from kongemu.httpserver import HTTPServer, Request, Response


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def error(self, msg: str) -> None:
        self.lines.append(f"error {msg}")

    warn = info = debug = notice = error


def _handler(request: Request) -> Response:
    if request.path == "/slow":
        time.sleep(0.3)
    if request.path == "/boom":
        raise RuntimeError("boom")
    body = f"{request.method} {request.target} {len(request.body)}".encode()
    return Response(200, [("Content-Type", "text/plain")], body)


@pytest.fixture()
def server():
    srv = HTTPServer(_Log(), idle_timeout=5.0)
    srv.add_listener("proxy", "127.0.0.1", 0, _handler)
    # port 0: read the real port back
    sock = srv._listeners[0].sock  # noqa: SLF001 - test introspection
    port = sock.getsockname()[1]
    srv.start()
    yield srv, port
    srv.close_now()


def test_keepalive_and_framing(server):
    _srv, port = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for i in range(5):
        conn.request("POST", f"/x?i={i}", body=b"a" * i)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Connection") == "keep-alive"
        assert resp.read() == f"POST /x?i={i} {i}".encode()
    # the same socket served every request
    assert server[0].stats.snapshot()["connections_accepted"] == 1
    conn.request("GET", "/boom")
    resp = conn.getresponse()
    assert resp.status == 500
    assert resp.read() == b'{"message":"An unexpected error occurred"}'
    conn.request("GET", "/", headers={"Connection": "close"})
    resp = conn.getresponse()
    assert resp.getheader("Connection") == "close"
    resp.read()
    conn.close()


def test_chunked_request_and_expect_continue(server):
    _srv, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        data = b""
        while not data.endswith(b"POST /c 5"):
            chunk = sock.recv(1000)
            assert chunk
            data += chunk
        assert b"Content-Length: 9" in data


def test_client_reset_does_not_kill_server(server):
    _srv, port = server
    for _i in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200


def test_graceful_shutdown_finishes_inflight_and_refuses_new(server):
    srv, port = server
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.request("GET", "/")
    idle.getresponse().read()
    results: list[int] = []

    def slow() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/slow")
        resp = conn.getresponse()
        resp.read()
        results.append(resp.status)
        assert resp.getheader("Connection") == "close"

    threads = [threading.Thread(target=slow) for _i in range(10)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while srv.stats.snapshot()["connections_writing"] < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.shutdown(time.monotonic() + 5)
    for thread in threads:
        thread.join()
    assert results == [200] * 10
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    # the idle keep-alive connection was closed between requests
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        idle.request("GET", "/")
        idle.getresponse()
