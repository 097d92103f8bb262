"""The moment a quitting node stops accepting connections (kong_service, the in-place window):
`proxy_endpoints` reads where the proxy listens from the prefix's .kong_env, `ListenWatch` sees the
listening socket close. Real sockets on the loopback, no Kong."""

import socket
import time

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import ListenWatch, proxy_endpoints


def test_proxy_endpoints_are_read_from_the_prefix_with_wildcards_on_the_loopback(tmp_path):
    (tmp_path / ".kong_env").write_text(
        "admin_listen = 127.0.0.1:8001\n"
        "proxy_listen = 0.0.0.0:8000 reuseport backlog=16384, 10.1.2.3:8443 http2 ssl, [::]:8080, off\n")
    assert proxy_endpoints(str(tmp_path)) == [("127.0.0.1", 8000), ("10.1.2.3", 8443), ("::1", 8080)]
    assert proxy_endpoints(str(tmp_path / "missing")) == []
    assert proxy_endpoints(None) == []


def test_the_watch_records_when_the_last_listener_closes_not_before():
    first, second = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    endpoints = [first.getsockname()[:2], second.getsockname()[:2]]
    with ListenWatch(endpoints, interval=0.01) as watch:
        deadline = time.time() + 0.3
        while time.time() < deadline:  # both listen: nothing is recorded
            assert watch.stopped_at is None
            time.sleep(0.02)
        first.close()
        time.sleep(0.1)
        assert watch.stopped_at is None, "one listener still accepts"
        closed = time.time()
        second.close()
        deadline = time.time() + 5
        while watch.stopped_at is None and time.time() < deadline:
            time.sleep(0.01)
    assert watch.stopped_at is not None and closed <= watch.stopped_at <= closed + 1.0


def test_nothing_to_watch_records_nothing():
    with ListenWatch([]) as watch:
        pass
    assert watch.stopped_at is None
