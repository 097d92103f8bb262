"""Unit tests for weight arithmetic and the NGINX upstream file rewriting."""

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._lb import (
    LbError,
    NginxDriver,
    compute_pool_weights,
    effective_share,
    wait_drained,
)

UPSTREAM = """upstream kong_proxy {
    zone kong_proxy 64k;
    server 127.0.1.1:8000 weight=100 max_fails=1 fail_timeout=2s;  # x1
    server 127.0.2.1:8000 weight=1 down;  # y1
    keepalive 32;
}
"""


@pytest.mark.parametrize("nx, ny, pct", [(3, 3, 10), (3, 1, 25), (1, 3, 50), (5, 2, 1), (2, 7, 90)])
def test_pool_weights_give_the_requested_share_whatever_the_pool_sizes(nx, ny, pct):
    wx, wy, share = compute_pool_weights(nx, ny, pct)
    assert 1 <= wx <= 100 and 1 <= wy <= 100
    assert abs(100.0 * ny * wy / (nx * wx + ny * wy) - pct) < 0.5
    assert abs(share - pct) < 0.5


def test_pool_weights_at_the_ends_take_one_side_out():
    assert compute_pool_weights(3, 3, 0)[:2] == (100, 0)
    assert compute_pool_weights(3, 3, 100)[:2] == (0, 100)


def test_pool_weights_refuse_an_empty_pool_that_must_carry_traffic():
    with pytest.raises(LbError, match="Y pool is empty"):
        compute_pool_weights(3, 0, 10)


def test_effective_share_counts_only_ready_and_up_servers():
    servers = {"x1": {"weight": 90, "admin_state": "ready", "up": True},
               "x2": {"weight": 90, "admin_state": "drain", "up": True},
               "y1": {"weight": 10, "admin_state": "ready", "up": True},
               "y2": {"weight": 10, "admin_state": "ready", "up": False}}
    assert effective_share(servers, {"y1", "y2"}) == 10.0


def test_nginx_parse_names_servers_by_comment_and_down_as_weight_zero():
    servers = NginxDriver.parse(UPSTREAM)
    assert servers["x1"]["weight"] == 100 and servers["x1"]["admin_state"] == "ready"
    assert servers["y1"]["weight"] == 0 and servers["y1"]["admin_state"] == "maint"


def test_nginx_render_changes_only_named_lines_and_keeps_parameters():
    text = NginxDriver.render(UPSTREAM, {"x1": {"weight": 90, "admin_state": "ready"},
                                         "y1": {"weight": 10, "admin_state": "ready"}})
    assert "server 127.0.1.1:8000 weight=90 max_fails=1 fail_timeout=2s;  # x1" in text
    assert "server 127.0.2.1:8000 weight=10;  # y1" in text
    assert "keepalive 32;" in text
    again = NginxDriver.render(text, {"x1": {"weight": 90, "admin_state": "ready"},
                                      "y1": {"weight": 10, "admin_state": "ready"}})
    assert again == text


class BusyFor:
    """A driver whose servers stay busy for ``reads`` polls."""

    def __init__(self, reads):
        self.reads = reads
        self.asked = []

    def busy(self, names):
        self.asked.append(list(names))
        self.reads -= 1
        return {"x1": 2} if self.reads >= 0 else {}


def test_wait_drained_polls_until_nothing_is_busy():
    clock = iter(range(100))
    driver = BusyFor(3)
    waited = wait_drained(driver, ["x1"], 60, clock=lambda: next(clock), sleep=lambda _s: None)
    assert waited > 0 and len(driver.asked) == 4


def test_wait_drained_gives_up_at_the_deadline_naming_the_busy_servers():
    clock = iter(range(0, 1000, 10))
    with pytest.raises(LbError, match="x1=2"):
        wait_drained(BusyFor(1000), ["x1"], 30, clock=lambda: next(clock), sleep=lambda _s: None)


def test_nginx_reload_is_confirmed_by_new_workers():
    driver = NginxDriver(None, "/dev/null", pidfile="/run/nginx.pid", reload_timeout=0.5)
    generations = [([11, 12], []), ([21, 22], [11])]
    driver.workers = lambda: generations.pop(0) if len(generations) > 1 else generations[0]
    driver._wait_reloaded([11, 12])
    stuck = NginxDriver(None, "/dev/null", pidfile="/run/nginx.pid", reload_timeout=0.2)
    stuck.workers = lambda: ([11, 12], [])
    with pytest.raises(LbError, match="did not start new workers"):
        stuck._wait_reloaded([11, 12])


def test_haproxy_sets_the_servers_that_will_serve_before_those_that_stop():
    """All traffic from X (drained) to Y (weight 0 until now) in one run: Y first, so the backend never
    has no weight (HAProxy answered 503 to one request of a lab run under load with X first)."""
    from ansible_collections.kongops.upgrade.plugins.module_utils._lb import HaproxyDriver

    class Recording(HaproxyDriver):
        def __init__(self):
            super().__init__("/nonexistent.sock", "kong_proxy")
            self.sent = []

        def _checked(self, line):
            self.sent.append(line)
            return ""

    driver = Recording()
    driver.apply({"x1": {"weight": 0, "admin_state": "drain"}, "x2": {"weight": 0, "admin_state": "drain"},
                  "y1": {"weight": 100}, "y2": {"weight": 100}})
    assert driver.sent == ["set server kong_proxy/y1 weight 100", "set server kong_proxy/y2 weight 100",
                           "set server kong_proxy/x1 weight 0", "set server kong_proxy/x1 state drain",
                           "set server kong_proxy/x2 weight 0", "set server kong_proxy/x2 state drain"]
