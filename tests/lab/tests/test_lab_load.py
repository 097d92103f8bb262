"""The load generator (labctl.load) and the echo service, without Kong or a load balancer."""

from __future__ import annotations

import http.client
import json

import pytest
from labfixtures import RawHTTPServer, echo_server

from labctl import LabError
from labctl.load import LoadGenerator, Sample, kong_version, longest_failure_window


def test_kong_version_prefers_via_then_server() -> None:
    assert kong_version("kong/3.7.1", None) == "3.7.1"
    assert kong_version("1.1 kong/3.10.0", "kong/3.9.1") == "3.10.0"
    assert kong_version("1.1 upstream-proxy, 1.1 kong/3.8.0", None) == "3.8.0"
    assert kong_version(None, "kong/2.8.4") == "2.8.4"
    assert kong_version("1.1 varnish", "nginx") is None
    assert kong_version(None, None) is None


def test_echo_answers_json_with_keepalive_and_no_server_header() -> None:
    with echo_server() as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/a/b?x=1", headers={"X-Test": "yes"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200
        assert resp.getheader("Server") is None
        assert body["path"] == "/a/b" and body["query"] == {"x": "1"}
        assert body["headers"]["x-test"] == "yes"
        sock_before = conn.sock
        conn.request("GET", "/?echo_status=503")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 503
        assert conn.sock is sock_before  # same TCP connection: keep-alive
        conn.close()


def test_steady_load_against_echo_counts_everything_ok() -> None:
    with echo_server() as port:
        gen = LoadGenerator(f"http://127.0.0.1:{port}", duration=1.5, rate=200, concurrency=4)
        summary = gen.run()
    assert summary["failed"] == 0, summary["failed_by_reason"]
    # paced at 200/s for 1.5 s: bounded above by the ticket count, and close to it
    assert 200 <= summary["requests"] <= 200 * 1.5 + 4
    assert summary["ok"] == summary["requests"]
    assert summary["by_version"] == {"none": summary["requests"]}
    assert summary["stale_keepalive_retries"] == 0
    assert summary["longest_failure_window_seconds"] == 0.0
    assert sum(row["requests"] for row in summary["timeseries"]) == summary["requests"]


def test_stale_keepalive_close_is_retried_once_and_reported() -> None:
    # every connection: first request answered, second one closed without a byte
    with RawHTTPServer(lambda n, conn: "ok" if n == 0 else "close") as srv:
        gen = LoadGenerator(f"http://127.0.0.1:{srv.port}", duration=1.0, rate=100, concurrency=2)
        summary = gen.run()
    assert summary["failed"] == 0, summary["failed_by_reason"]
    assert summary["stale_keepalive_retries"] > 0
    assert summary["by_version"] == {"3.10.0": summary["requests"]}
    per_second = sum(row["stale_keepalive_retries"] for row in summary["timeseries"])
    assert per_second == summary["stale_keepalive_retries"]


def test_close_after_partial_response_is_a_failure_not_retried() -> None:
    with RawHTTPServer(lambda n, conn: "ok" if n == 0 else "partial") as srv:
        gen = LoadGenerator(f"http://127.0.0.1:{srv.port}", duration=1.0, rate=50, concurrency=1)
        summary = gen.run()
    assert summary["failed"] > 0
    assert summary["stale_keepalive_retries"] == 0
    assert set(summary["failed_by_reason"]) == {"BadStatusLine"}


def test_close_on_fresh_connection_is_a_failure_not_retried() -> None:
    with RawHTTPServer(lambda n, conn: "close") as srv:
        gen = LoadGenerator(f"http://127.0.0.1:{srv.port}", duration=0.5, rate=40, concurrency=1)
        summary = gen.run()
    assert summary["ok"] == 0 and summary["failed"] == summary["requests"] > 0
    assert summary["stale_keepalive_retries"] == 0
    assert set(summary["failed_by_reason"]) == {"RemoteDisconnected"}
    assert summary["longest_failure_window_seconds"] > 0


def test_failed_retry_is_reported_as_failure() -> None:
    # second request on the first connection closes; every later connection closes too
    with RawHTTPServer(lambda n, conn: "ok" if conn == 1 and n == 0 else "close") as srv:
        gen = LoadGenerator(f"http://127.0.0.1:{srv.port}", duration=0.3, rate=20, concurrency=1)
        summary = gen.run()
    assert summary["ok"] == 1
    assert summary["stale_keepalive_retries_failed"] == 1
    assert "RemoteDisconnected after stale keep-alive retry" in summary["failed_by_reason"]


def test_longest_failure_window_is_the_longest_run_of_consecutive_failures() -> None:
    def s(sent: float, done: float, ok: bool) -> Sample:
        return Sample(sent, done, ok, 200 if ok else 502, None if ok else "http_502", None, False, "t", 0)

    samples = [
        s(0.0, 0.1, True),
        s(0.2, 0.3, False),  # run 1: 0.2 .. 0.3
        s(0.35, 0.4, True),
        s(1.0, 1.2, False),  # run 2: 0.9 (earliest send) .. 2.0
        s(0.9, 1.5, False),
        s(1.9, 2.0, False),
        s(2.0, 2.1, True),
    ]
    window = longest_failure_window(samples)
    assert window is not None
    assert window["failures"] == 3
    assert window["seconds"] == pytest.approx(1.1)
    assert longest_failure_window([s(0, 1, True)]) is None


def test_load_refuses_non_loopback_urls() -> None:
    with pytest.raises(LabError, match="loopback"):
        LoadGenerator("http://10.1.2.3:8000")
    with pytest.raises(LabError, match="http://"):
        LoadGenerator("https://127.0.0.1:8443")
