"""lb_weight on HAProxy and on NGINX, under load: shares of 0, 10, 50 and 100 % between three X and two
Y servers, measured by the Kong version in each answer's Via header, a drain that waits for the
requests in flight, and no failed request while the weights move.

Real Kong: X is 3.9.0 and Y 3.9.1 (no migration between them), so the Y nodes start on the same
database, the way the collection deploys Y, and every answer says which of the two served it
(`Via: 1.1 kong/3.9.x`).

The drain does not race the clock: the requests in flight are held by the echo service
(`echo_hold`) until the test releases them. Held past a 2 s `drain_timeout`, the module must
fail and name the busy servers (so it waited for them); held again under a long timeout, it must
still be running once the load balancer shows the drain applied (HAProxy: X in drain; NGINX: its
old worker, which holds them, shutting down), and succeed after their release. The only clocks
left are the load balancer's own limits for a request in flight (30 s; NGINX's old worker 10 s
after its reload), far longer than those steps.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time
from pathlib import Path

import pytest
from ansible_runner import four_ways, run_module, run_sequence
from itlab import http_request, in_background, lab_session, poll, share_of, window_after

X, Y = "3.9.0", "3.9.1"
X_SERVERS = ["x1", "x2", "x3"]
Y_SERVERS = ["y1", "y2"]
SHARES = (0, 10, 50, 100)
PER_SHARE = 2000
TOLERANCE = 3.0
HELD = 12
HAPROXY_DRAIN = 0x08  # srv_admin_state bit of a server drained from the runtime API (SRV_ADMF_FDRAIN)


@pytest.fixture(scope="module", params=["haproxy", "nginx"])
def lab(request):
    with lab_session("--x-version", X, "--y-version", Y, "--x-nodes", "3", "--y-nodes", "2",
                     "--lb", request.param) as lab:
        for name in Y_SERVERS:
            lab.start_node(name)
        if request.param == "haproxy":
            poll(lambda: lab.haproxy_servers_up(Y_SERVERS), 15, "HAProxy health checks to see Y up")
        yield lab


def lb_state(lab):
    """What the load balancer holds now, read without the module (runtime state or the include file)."""
    if lab.lb["kong_lb_driver"] == "haproxy":
        header: list[str] = []
        state = {}
        for line in lab.haproxy(f"show servers state {lab.lb['kong_lb_backend']}").splitlines():
            if line.startswith("#"):
                header = line.lstrip("# ").split()
            elif header and line.strip():
                row = dict(zip(header, line.split()))
                state[row["srv_name"]] = (row["srv_uweight"], row["srv_admin_state"])
        return state
    return Path(lab.lb["kong_lb_nginx_upstream_file"]).read_text(encoding="utf-8")


def haproxy_worker_pid(lab):
    try:
        info = lab.haproxy("show info")
    except OSError:
        return None
    for line in info.splitlines():
        if line.startswith("Pid:"):
            return int(line.split(":", 1)[1])
    return None


def weights(lab, **extra):
    return {**lab.lb_args(), **extra}


def test_an_unknown_server_fails_and_changes_nothing(lab):
    before = lb_state(lab)
    result, drained = run_sequence("lb_weight", [(weights(lab, weights={"x1": 50, "x9": 10}), False),
                                                 (weights(lab, drain=["y7"]), False)])
    assert result.failed and "no server named x9" in result["msg"] and "nothing was changed" in result["msg"]
    for name in X_SERVERS + Y_SERVERS:
        assert name in result["msg"]
    assert drained.failed and "y7" in drained["msg"]
    assert lb_state(lab) == before


def test_an_unknown_backend_or_upstream_file_fails(lab):
    if lab.lb["kong_lb_driver"] == "haproxy":
        result = run_module("lb_weight", weights(lab, backend="kong_nope", weights={"x1": 50}))
        assert result.failed and "kong_nope" in result["msg"]
    else:
        missing = str(Path(lab.lb["kong_lb_nginx_upstream_file"]).with_name("nope.conf"))
        result = run_module("lb_weight", weights(lab, nginx_upstream_file=missing, weights={"x1": 50}))
        assert result.failed and "nope.conf" in result["msg"]


def test_a_weight_change_four_ways(lab):
    results = four_ways("lb_weight", weights(lab, weights={"x1": 40}))
    check, real = results[0], results[1]
    assert check["changes"] == real["changes"] == {"x1": {"weight": 40}}
    assert check["servers"]["x1"]["weight"] == real["servers"]["x1"]["weight"] == 40
    assert "x1 weight=40" in real["diff"]["after"] and "x1 weight=100" in real["diff"]["before"]
    if lab.lb["kong_lb_driver"] == "haproxy":
        # The weight survives a reload: the module saved the runtime state to the server-state file.
        worker = haproxy_worker_pid(lab)
        master = int(Path(lab.lb["kong_lb_haproxy_pidfile"]).read_text().split()[0])
        os.kill(master, signal.SIGUSR2)  # master-worker reload
        poll(lambda: haproxy_worker_pid(lab) not in (None, worker), 15, "a new HAProxy worker after the reload")
        assert lb_state(lab)["x1"][0] == "40"
    restored = run_module("lb_weight", weights(lab, weights={"x1": 100}))
    assert not restored.failed and restored.changed


def test_nginx_upstream_file_keeps_its_owner_and_mode(lab):
    """The module rewrites NGINX's upstream file with one atomic rename that keeps the file's
    attributes (a hand-made swap lost its owner and SELinux context and briefly left no file)."""
    if lab.lb["kong_lb_driver"] != "nginx":
        pytest.skip("NGINX's upstream file only")
    upstream = Path(lab.lb["kong_lb_nginx_upstream_file"])
    before = upstream.stat()
    os.chown(upstream, 65534, 65534)  # nobody: what a team's deploy user might own it as
    os.chmod(upstream, 0o640)
    try:
        result = run_module("lb_weight", weights(lab, weights={"x2": 30}))
        assert not result.failed and result.changed
        after = upstream.stat()
        assert (after.st_uid, after.st_gid, after.st_mode & 0o7777) == (65534, 65534, 0o640)
        line = next(line for line in upstream.read_text(encoding="utf-8").splitlines() if line.rstrip().endswith("# x2"))
        assert after.st_ino != before.st_ino and re.search(r"\bweight=30\b", line), line
        assert not [p.name for p in upstream.parent.iterdir() if p.name.startswith(".upstream-")]
    finally:
        restored = run_module("lb_weight", weights(lab, weights={"x2": 100}))
        os.chown(upstream, before.st_uid, before.st_gid)
        os.chmod(upstream, before.st_mode & 0o7777)
    assert not restored.failed


def held_requests(lab, key, count):
    """``count`` requests through the frontend that the echo service holds until ``key`` is released;
    returns once all of them are held there (in flight through the load balancer and Kong)."""
    url = lab.frontend + f"/?echo_hold={key}"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=count)
    futures = [pool.submit(http_request, url, "GET", None, 90.0) for _index in range(count)]
    poll(lambda: lab.echo(echo_held=key)["held"] == count, 30, f"{count} requests held by the echo service")
    return pool, futures


def nginx_workers(lab):
    """(serving, shutting down) worker pids of the frontend NGINX, by their process titles."""
    master = Path(lab.lb["kong_lb_nginx_pidfile"]).read_text(encoding="utf-8").strip()
    serving, shutting_down = [], []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "stat").read_text().rsplit(")", 1)[-1].split()[1] != master:
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if "worker process" in title:
            (shutting_down if "shutting down" in title else serving).append(int(entry.name))
    return serving, shutting_down


def drain_applied(lab, serving_before):
    """Whether the load balancer shows X drained and Y weighted, with X's requests in flight kept
    (NGINX: the workers that served before the module's reload, ``serving_before``, shutting down,
    new ones serving): from then on, only those requests can keep lb_weight from returning."""
    if lab.lb["kong_lb_driver"] == "haproxy":
        state = lb_state(lab)
        return (all(int(state[n][1]) & HAPROXY_DRAIN for n in X_SERVERS)
                and all(int(state[n][0]) > 0 for n in Y_SERVERS))
    text = lb_state(lab)
    lines = {line.rsplit("#", 1)[1].strip(): line for line in text.splitlines() if "#" in line}
    serving, shutting_down = nginx_workers(lab)
    return (all(" down;" in lines[n] for n in X_SERVERS) and bool(serving) and not set(serving) & set(serving_before)
            and bool(set(shutting_down) & set(serving_before)))


def haproxy_sessions(lab, names):
    """Current sessions of HAProxy's servers ``names``, summed (`show stat` scur)."""
    header, total = [], 0
    for line in lab.haproxy("show stat").splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
        elif header and line.strip():
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == lab.lb["kong_lb_backend"] and row.get("svname") in names:
                total += int(row.get("scur") or 0)
    return total


def test_shares_drain_and_no_failed_request_while_weights_move(lab, record_property):
    gen = lab.load(rate=500.0, concurrency=8)
    gen.start()
    measured = {}
    try:
        for pct in SHARES:
            result = run_module("lb_weight", weights(lab, x_servers=X_SERVERS, y_servers=Y_SERVERS, y_percent=pct))
            assert not result.failed, result.get("msg")
            assert result["requested_y_percent"] == pct
            assert abs(result["y_share"] - pct) < 0.5, result["servers"]
            # Requests sent after the module returned see the new weights (HAProxy at once; NGINX once the
            # module has seen the new workers start). A short margin covers requests queued in the client.
            window = window_after(gen, time.time() + 0.2, PER_SHARE)
            measured[pct] = share_of(window, Y)
            assert all(s.ok for s in window)

        # Drain X while requests are in flight on it, moving all traffic to Y in the same run, as an
        # upgrade's last step does. First the requests stay held for longer than the module may wait: it
        # must give up and name what is still busy (it waited for them, it did not return at once).
        driver = lab.lb["kong_lb_driver"]
        drain_all = weights(lab, drain=X_SERVERS, x_servers=X_SERVERS, y_servers=Y_SERVERS, y_percent=100)
        zero = run_module("lb_weight", weights(lab, x_servers=X_SERVERS, y_servers=Y_SERVERS, y_percent=0))
        assert not zero.failed and zero["y_share"] == 0.0
        pool, held = held_requests(lab, f"drain-refused-{driver}", HELD)  # Y has no weight: all of them are on X
        if driver == "haproxy":
            assert haproxy_sessions(lab, X_SERVERS) >= HELD
        refused = run_module("lb_weight", {**drain_all, "drain_timeout": 2})
        assert lab.echo(echo_held=f"drain-refused-{driver}")["held"] == HELD
        assert lab.echo(echo_release=f"drain-refused-{driver}")["released"] == HELD
        answers = [f.result() for f in held]
        pool.shutdown()
        assert refused.failed and "still have sessions after 2.0 s of draining" in refused["msg"], refused
        busy = [f"{n}=" for n in X_SERVERS] if driver == "haproxy" else ["nginx workers shutting down="]
        assert any(b in refused["msg"] for b in busy), refused["msg"]
        assert all(status == 200 and body["hold"] == "released" for status, body in answers), answers
        back = run_module("lb_weight", weights(lab, ready=X_SERVERS, x_servers=X_SERVERS, y_servers=Y_SERVERS,
                                               y_percent=0))
        assert not back.failed and back["y_share"] == 0.0

        # Then with time to wait: the module is still running while they are held (the load balancer shows
        # the drain applied, so only the requests keep it), and returns once they are answered.
        key = f"drain-{driver}"
        pool, held = held_requests(lab, key, HELD)
        serving_before = nginx_workers(lab)[0] if driver == "nginx" else []
        draining = in_background(lambda: run_module("lb_weight", {**drain_all, "drain_timeout": 120}))
        poll(lambda: drain_applied(lab, serving_before) or draining.done(), 60, "lb_weight to drain X and weight Y", interval=0.05)
        assert not draining.done(), f"the drain returned while requests were in flight: {draining.result()}"
        assert lab.echo(echo_held=key)["held"] == HELD
        assert lab.echo(echo_release=key)["released"] == HELD
        drained = draining.result(timeout=150)
        answers = [f.result() for f in held]
        pool.shutdown()
        assert not drained.failed, drained.get("msg")
        assert all(status == 200 and body["hold"] == "released" for status, body in answers), answers
        assert drained["y_share"] == 100.0
        for name in X_SERVERS:
            assert drained["servers"][name]["admin_state"] in ("drain", "maint")
            assert drained["servers"][name]["sessions"] == 0
        window = window_after(gen, time.time() + 0.2, 500)
        assert share_of(window, Y) == 100.0, "drained X servers still took new requests"
        again, back = run_sequence("lb_weight", [
            (weights(lab, drain=X_SERVERS, drain_timeout=30), False),
            (weights(lab, ready=X_SERVERS, x_servers=X_SERVERS, y_servers=Y_SERVERS, y_percent=0), False)])
        assert not again.failed and not again.changed and again["drained_after_seconds"] == 0
        assert not back.failed and back["y_share"] == 0.0
        window = window_after(gen, time.time() + 0.2, 500)
        assert share_of(window, Y) == 0.0
    finally:
        gen.stop()
    summary = gen.summary()
    for key in ("requests", "failed", "stale_keepalive_retries", "longest_failure_window_seconds"):
        record_property(key, summary[key])
    record_property("measured_y_share", measured)
    for pct, share in measured.items():
        assert abs(share - pct) <= TOLERANCE, f"Y served {share:.2f}% of requests at a {pct}% share: {measured}"
    assert summary["failed"] == 0, (summary["failed_by_reason"], summary["stale_keepalive_retries"])
    assert summary["by_version"].get(Y, 0) >= PER_SHARE
    if lab.lb["kong_lb_driver"] == "haproxy":
        assert summary["stale_keepalive_retries"] == 0
