"""The lab with NGINX (real Kong 3.9.1 nodes): upstream include file, frontend, reload under load, and `lab load`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from labfixtures import LAB, LabHandle, lab_cli, poll, running_lab

from labctl.lab import http_get
from labctl.load import LoadGenerator, kong_version
from labctl.paths import node_host
from labctl.proc import children, is_alive

X_VERSION = "3.9.1"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHandle]:
    with running_lab("--x-version", X_VERSION, "--y-version", X_VERSION, "--x-nodes", "2", "--y-nodes", "2",
                     "--lb", "nginx", kong="real") as h:
        yield h


def _server_lines(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*server\s+(.*);\s*#\s*(\S+)", line)
        if m:
            out[m.group(2)] = m.group(1)
    return out


def test_upstream_file_lists_x_at_100_and_y_down(lab: LabHandle) -> None:
    lb = lab.lb
    assert lb["kong_lb_driver"] == "nginx" and lb["kong_lb_backend"] == "kong_proxy"
    lines = _server_lines(Path(lb["kong_lb_nginx_upstream_file"]))
    # x1 is 127.0.1.1 and y1 127.0.2.1 on the default lab net
    assert lines["x1"].startswith(f"{node_host('x', 1)}:8000 weight=100")
    assert lines["x2"].startswith(f"{node_host('x', 2)}:8000 weight=100")
    assert lines["y1"] == f"{node_host('y', 1)}:8000 weight=1 down"
    assert lines["y2"] == f"{node_host('y', 2)}:8000 weight=1 down"
    res = subprocess.run([lb["kong_lb_nginx_binary"], "-t", "-p", lb["kong_lb_nginx_prefix"],
                          "-c", lb["kong_lb_nginx_conf"], "-e", lb["kong_lb_nginx_error_log"]],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_frontend_proxies_through_kong_x(lab: LabHandle) -> None:
    status, headers, body = http_get(lab.frontend + "/svc1/x")
    assert status == 200
    assert kong_version(headers.get("via"), headers.get("server")) == X_VERSION
    assert json.loads(body)["path"] == "/x"  # strip_path on the seeded route


def test_reload_taking_x1_out_under_load_fails_nothing(lab: LabHandle) -> None:
    lb = lab.lb
    upstream = Path(lb["kong_lb_nginx_upstream_file"])
    access_log = Path(lb["kong_lb_nginx_prefix"]) / "access.log"
    master = int(Path(lb["kong_lb_nginx_pidfile"]).read_text())
    old_workers = set(children(master))
    assert old_workers
    gen = LoadGenerator(lab.frontend, lab.load_targets, duration=60, rate=150, concurrency=6)
    gen.start()
    try:
        poll(lambda: sum(s.ok for s in gen.samples) >= 100, 15, "load flowing through NGINX")
        text = upstream.read_text()
        x1 = f"{node_host('x', 1)}:8000"
        text = re.sub(rf"server {re.escape(x1)} [^;]*;", f"server {x1} weight=1 down;", text)
        upstream.write_text(text)
        res = subprocess.run([lb["kong_lb_nginx_binary"], "-p", lb["kong_lb_nginx_prefix"], "-c",
                              lb["kong_lb_nginx_conf"], "-e", lb["kong_lb_nginx_error_log"], "-s", "reload"],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        poll(lambda: not (old_workers & set(children(master))) and children(master), 20,
             "old NGINX workers to exit after the reload")
        offset = access_log.stat().st_size
        n = len(gen.samples)
        poll(lambda: len(gen.samples) >= n + 150, 15, "more requests after the reload")
    finally:
        gen.stop()
    summary = gen.summary()
    # idle keep-alive connections closed by the reload may be retried (RFC 9112 9.3.1),
    # and are reported; nothing else may fail
    assert summary["failed"] == 0, summary["failed_by_reason"]
    assert summary["by_version"] == {X_VERSION: summary["requests"]}
    with open(access_log, encoding="utf-8") as fh:
        fh.seek(offset)
        upstreams = re.findall(r"upstream=(\S+)", fh.read())
    assert len(upstreams) >= 100
    assert set(upstreams) == {f"{node_host('x', 2)}:8000"}, set(upstreams)


def test_lab_load_cli_ends_cleanly_on_sigterm_and_writes_summary(lab: LabHandle, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc = subprocess.Popen([str(LAB), "load", "--duration", "60", "--rate", "100", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: "load on" in (proc.stderr.readline() if proc.stderr else ""), 20, "lab load to start")
        # let it send for a moment: wait until NGINX logged some of its requests
        access_log = Path(lab.lb["kong_lb_nginx_prefix"]) / "access.log"
        size = access_log.stat().st_size
        poll(lambda: access_log.stat().st_size > size + 5000, 20, "lab load traffic in the access log")
        proc.send_signal(signal.SIGTERM)
        stdout = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert stdout.strip().splitlines()[-1] == str(out)
    summary = json.loads(out.read_text())
    assert summary["interrupted"] is True
    assert summary["requests"] > 0 and summary["failed"] == 0
    assert summary["duration_seconds"] < 60
    assert set(summary["by_version"]) == {X_VERSION}
    assert summary["timeseries"] and "longest_failure_window_seconds" in summary


def test_down_leaves_no_nginx_process(lab: LabHandle) -> None:
    pids = sorted(set(lab.pids) | set(lab.collect_pids()))
    lab_cli("down")
    assert [p for p in pids if is_alive(p)] == []
    assert not lab.run_dir.exists()
