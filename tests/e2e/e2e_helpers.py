"""Helpers for end-to-end tests: a lab under load and the upgrade playbooks run as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from ansible_runner import ansible_env  # tests/integration, put on sys.path by conftest.py

REPO = Path(__file__).resolve().parents[2]

CONTROLLER_TOKEN = "controller-admin-token-7f3e9a"

RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        match = RECAP.search(proc.stdout)
        self.changed = int(match.group(2)) if match else None
        self.failed = int(match.group(4)) if match else None

    def explain(self) -> str:
        # What the run said (its debug messages: the plan, the batches, each step) from its start,
        # then the end of its output, where it failed.
        said = [line.strip() for line in self.stdout.splitlines() if line.lstrip().startswith('"msg":')]
        return (f"rc={self.rc}\nmessages of the run:\n" + "\n".join(said)[:4000]
                + f"\nend of the output:\n{self.stdout[-6000:]}\n{self.stderr[-3000:]}")


def _playbook_command(name: str, inventory: Path, extra_vars: dict[str, Any], tmp_path: Path, check: bool,
                      env: dict[str, str] | None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `ansible-playbook -i <inventory> playbooks/<name>.yml -e @vars.yml`
    (``name``: one of our playbooks, or the path of a team's own playbook)."""
    playbook = Path(name) if Path(name).is_absolute() else REPO / "playbooks" / f"{name}.yml"
    vars_file = tmp_path / f"vars-{playbook.stem}.yml"
    vars_file.write_text(yaml.safe_dump(extra_vars), encoding="utf-8")
    vars_file.chmod(0o600)
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
            str(playbook), "-e", f"@{vars_file}"] + (["--check"] if check else [])
    # A controller with secrets in its environment, as an operator's shell may have: they must reach
    # no node. Kong writes every setting it takes from KONG_* variables into <prefix>/.kong_env
    # (pg_ro_password is one; KONG_ADMIN_TOKEN is no Kong setting and real Kong ignores it).
    return argv, ansible_env({"KONG_ADMIN_TOKEN": CONTROLLER_TOKEN, "KONG_PG_RO_PASSWORD": CONTROLLER_TOKEN,
                              **(env or {})})


def run_playbook(name: str, inventory: Path, extra_vars: dict[str, Any], tmp_path: Path,
                 timeout: float = 900, check: bool = False, env: dict[str, str] | None = None) -> PlaybookRun:
    """`ansible-playbook -i <inventory> playbooks/<name>.yml -e @vars.yml [--check]` from the checkout
    (``env``: more variables for the control node's environment)."""
    argv, environ = _playbook_command(name, inventory, extra_vars, tmp_path, check, env)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=environ, check=False)
    return PlaybookRun(proc)


def _descendants(pid: int) -> set[int]:
    """Every living descendant of ``pid``, from the parent links in /proc (never by name)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_process_tree(pid: int) -> set[int]:
    """SIGKILL ``pid`` and all its descendants, as a crash of the control node would end them: the
    tree is stopped first (SIGSTOP, until no new child appears), so that none forks a child that
    outlives the kill. Returns the pids killed. Processes that detached (Ansible's async jobs run
    under init) are not descendants and live on, as they would after a real crash."""
    stopped: set[int] = set()
    while True:
        tree = {pid} | _descendants(pid)
        new = tree - stopped
        if not new:
            break
        for each in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGSTOP)
        stopped |= new
    for each in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)
    return stopped


def run_playbook_killed_when(name: str, inventory: Path, extra_vars: dict[str, Any], tmp_path: Path,
                             predicate: Callable[[], Any], deadline: float = 600, what: str = "",
                             env: dict[str, str] | None = None) -> tuple[PlaybookRun, Any]:
    """Run the playbook as `run_playbook` does, poll ``predicate()`` every 0.2 s from outside, and
    SIGKILL ansible-playbook and every descendant (`kill_process_tree`) as soon as it returns
    something truthy; returns the killed run (rc -9) and what the predicate returned. Fails the test
    when the playbook ends first or ``deadline`` seconds pass (``what`` names the moment awaited)."""
    argv, environ = _playbook_command(name, inventory, extra_vars, tmp_path, False, env)
    out_path, err_path = tmp_path / f"killed-{name}.stdout", tmp_path / f"killed-{name}.stderr"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True, cwd=REPO, env=environ)  # noqa: S603 (our argv)
        seen: Any = None
        try:
            end = time.monotonic() + deadline
            while proc.poll() is None and time.monotonic() < end:
                seen = predicate()
                if seen:
                    kill_process_tree(proc.pid)
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None and not seen:
                kill_process_tree(proc.pid)
            proc.wait(timeout=60)
    run = PlaybookRun(subprocess.CompletedProcess(argv, proc.returncode, out_path.read_text(), err_path.read_text()))
    assert seen, f"the playbook {'ended' if proc.returncode != -signal.SIGKILL else 'ran ' + str(deadline) + ' s'} " \
                 f"before {what or 'the moment to kill it'}:\n{run.explain()}"
    return run, seen


def said(run: PlaybookRun, *needles: str) -> list[str]:
    """The lines of the run's output that hold any of ``needles`` (what a test prints as the run's own words)."""
    return [line.strip() for line in run.stdout.splitlines() if any(needle in line for needle in needles)]


def assert_reached_over_ssh_and_kong_unprivileged(lab: Any, user: str = "kong") -> None:
    """A lab of ``lab up --connection ssh``: every node and the LB host are SSH hosts that log in as
    ``user``, and every running Kong node (X the lab started, Y the collection started over SSH)
    runs as that unprivileged user, its prefix and kong.conf its own."""
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    assert uid != 0
    hosts = {name: host for group in lab.inventory["all"]["children"] for name, host in lab.hosts(group).items()}
    for name, host in hosts.items():
        assert host.get("ansible_connection") == "ssh" and host.get("ansible_user") == user, (name, host)
    running = 0
    for name, host in hosts.items():
        prefix = Path(host.get("kong_prefix", "/nonexistent"))
        pidfile = prefix / "pids" / "nginx.pid"
        pid = int(pidfile.read_text().strip()) if pidfile.is_file() else None
        if pid is None or not Path(f"/proc/{pid}").exists():
            continue
        running += 1
        assert Path(f"/proc/{pid}").stat().st_uid == uid, f"{name}'s Kong (pid {pid}) does not run as {user}"
        conf = Path(host["kong_conf_path"])
        assert conf.stat().st_uid == uid and conf.stat().st_mode & 0o077 == 0, f"{conf} is not {user}'s alone"
    assert running, "no Kong node runs"


def assert_no_controller_secret_on_nodes(lab: Any) -> None:
    """No file in any Kong node's prefix (``.kong_env``, logs, nginx confs) holds the controller's secrets."""
    nodes = {name: host for group in lab.inventory["all"]["children"]
             for name, host in lab.hosts(group).items() if host.get("kong_prefix")}
    assert nodes
    for name, host in nodes.items():
        prefix = Path(host["kong_prefix"])
        if not prefix.is_dir():
            continue
        for path in prefix.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 50_000_000:
                assert CONTROLLER_TOKEN.encode() not in path.read_bytes(), \
                    f"a secret of the controller's environment was written to {path} on {name}"


def admin_version(admin_url: str) -> str | None:
    """The version a node's Admin API reports, or None when it does not answer."""
    try:
        with urllib.request.urlopen(admin_url + "/", timeout=3) as response:  # noqa: S310 (loopback lab URL)
            return str(json.loads(response.read())["version"])
    except OSError:
        return None


def fast_gate(lab_run_dir: Path) -> dict[str, Any]:
    """Variables that keep an e2e upgrade short on the lab: small gate samples, lab paths."""
    return {
        "kong_upgrade_backup_dir": str(lab_run_dir / "backups"),
        "kong_upgrade_report_dir": str(lab_run_dir / "reports"),
        "kong_upgrade_gate_min_requests": 100,
        "kong_upgrade_gate_min_duration": 3,
        "kong_upgrade_gate_max_duration": 60,
        "kong_upgrade_drain_timeout": 30,
    }


def pg_args(lab: Any) -> dict[str, Any]:
    """The lab database's connection settings, as the modules take them."""
    return {k: lab.group_vars[f"kong_{k}"] for k in ("pg_host", "pg_port", "pg_user", "pg_password", "pg_database")}


def wrap_kong(lab: Any, host: str, tmp_path: Path, fails_when: str, message: str) -> str:
    """Put a wrapper in front of ``host``'s kong in the inventory: when the shell test ``fails_when``
    holds for its arguments, it prints ``Error: injected fault: <message>`` and exits 1; otherwise it
    runs the real kong. Returns the inventory as it was, to undo the fault."""
    real = lab.host(host)["kong_executable"]
    wrapper = tmp_path / f"kong-{host}-{re.sub(r'[^a-z0-9]+', '-', message.lower()).strip('-')}"
    wrapper.write_text(f'#!/bin/sh\nif {fails_when}; then\n  echo "Error: injected fault: {message}" >&2; exit 1\nfi\n'
                       f'exec {real} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    original = lab.inventory_path.read_text()
    line = f"kong_executable: {real}"
    lines = original.splitlines(keepends=True)
    start = next(i for i, text in enumerate(lines) if text.strip() == f"{host}:")
    index = next(i for i in range(start, len(lines)) if line in lines[i])
    lines[index] = lines[index].replace(line, f"kong_executable: {wrapper}")
    lab.inventory_path.write_text("".join(lines))
    return original


def inject_proxy_5xx(lab: Any, group: str, rate: float = 0.5, status: int = 503) -> None:
    """The emulator's fault file on every node of ``group``: that share of proxied requests answered
    ``status`` by Kong itself (see tests/lab/kongemu/faults.py)."""
    for host in lab.hosts(group).values():
        prefix = lab.run_dir / "nodes" / host["kong_lb_server_name"]
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "emulator_faults.json").write_text(json.dumps({"proxy_5xx_rate": rate, "status": status}))


def assert_serving(lab: Any, version: str, stopped_group: str) -> dict[str, Any]:
    """Every request through the LB answered by ``version``, no failure; every node of
    ``stopped_group`` down. Returns the load summary."""
    from labctl.load import LoadGenerator  # tests/lab, on sys.path through labfixtures

    after = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3, rate=100).run()
    assert after["failed"] == 0 and set(after["ok_by_version"]) == {version}, after["by_version"]
    for name, host in lab.hosts(stopped_group).items():
        assert admin_version(host["kong_admin_url"]) is None, f"{name} still answers"
    return after


def sql(lab: Any, statement: str, database: str | None = None,
        params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run one SQL statement on the lab's PostgreSQL (autocommit), with psycopg2's ``%s`` parameters if
    ``params`` is given; the rows it returns, if any."""
    import psycopg2  # the emulator's driver, in the dev requirements

    pg = pg_args(lab)
    conn = psycopg2.connect(host=pg["pg_host"], port=pg["pg_port"], user=pg["pg_user"], password=pg["pg_password"],
                            dbname=database or pg["pg_database"])
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def run_under_load(lab: Any, name: str, extra_vars: dict[str, Any], tmp_path: Path,
                   rate: int = 100, env: dict[str, str] | None = None) -> tuple[PlaybookRun, dict[str, Any]]:
    """`run_playbook` while steady traffic goes through the lab's load balancer; the run and the
    load summary (requests, failures by reason, answers by Kong version)."""
    from labctl.load import LoadGenerator  # tests/lab, on sys.path through labfixtures

    load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=rate).start()
    try:
        run = run_playbook(name, lab.inventory_path, extra_vars, tmp_path, env=env)
    finally:
        load.stop()
    return run, load.summary()


def y_overload_fault(rate: str = "1r/s", burst: int = 20) -> dict[str, str]:
    """``kong_upgrade_y_conf_overrides`` that make Y's proxy answer 503 under load, on real Kong.

    Kong injects ``nginx_http_*`` and ``nginx_proxy_*`` settings into its nginx configuration; these
    give Y's proxy a request limit (``limit_req``) of ``rate`` after a burst of ``burst``, keyed on
    the client address, which is the load balancer's for every request. A few smoke-test requests
    pass; the steady load of a traffic step does not: Kong itself answers 503 ("The upstream server
    is currently unavailable"), the way an undersized or misconfigured Y cluster fails only once it
    takes real traffic. X's configuration is untouched.
    """
    return {
        "nginx_http_limit_req_zone": f"$binary_remote_addr zone=kongops_fault:1m rate={rate}",
        "nginx_proxy_limit_req": f"zone=kongops_fault burst={burst} nodelay",
        "nginx_proxy_limit_req_status": "503",
    }


def echoed_headers(base_url: str, path: str, headers: dict[str, str] | None = None,
                   via: bool = False) -> dict[str, str]:
    """GET ``path`` and return the request headers the lab's echo upstream saw (so what Kong's route
    and its plugins sent upstream, e.g. request-transformer's ``x-lab-route``); with ``via``, also
    Kong's ``Via`` response header as ``via``."""
    request = urllib.request.Request(base_url + path, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback lab URL)
        seen = dict(json.loads(response.read())["headers"])
        if via:
            seen["via"] = response.headers.get("Via", "")
    return seen


def admin_call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One Admin API request with a JSON body: (status, decoded answer)."""
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback lab URL)
        return response.status, json.loads(response.read() or b"{}")


def read_report(lab: Any, x_version: str, y_version: str) -> dict[str, Any]:
    """The JSON report of the run from ``x_version`` to ``y_version`` (its default run id)."""
    return json.loads((lab.run_dir / "reports" / f"kong-{x_version}-to-{y_version}.json").read_text())


def assert_upgraded(lab: Any, summary: dict[str, Any], y_version: str) -> None:
    """The load saw no failed request, more than 1000 requests and answers from Y; every Y node
    runs ``y_version`` and every X node is stopped."""
    assert summary["failed"] == 0, summary["failed_by_reason"]
    assert summary["requests"] > 1000
    assert summary["ok_by_version"].get(y_version, 0) > 0, summary["by_version"]
    for name, host in lab.hosts("kong_y").items():
        assert admin_version(host["kong_admin_url"]) == y_version, name
    for name, host in lab.hosts("kong_x").items():
        assert admin_version(host["kong_admin_url"]) is None, f"{name} still answers after decommission"
    assert_no_controller_secret_on_nodes(lab)


def assert_back_on_x(lab: Any, x_version: str) -> None:
    """After a rollback: all traffic on X with no failure, Y stopped, every X node on ``x_version``,
    X's database as X's binary wants it (up to date: no `finish` ran), the freeze lifted."""
    from ansible_runner import run_module  # tests/integration, put on sys.path by conftest.py

    assert_serving(lab, x_version, "kong_y")
    for name, host in lab.hosts("kong_x").items():
        assert admin_version(host["kong_admin_url"]) == x_version, name
    x1 = lab.host("x1")
    migrations = run_module("kong_migrations", {"kong_executable": x1["kong_executable"],
                                                "conf": x1["kong_conf_path"], "state": "status"})
    assert migrations["state_before"]["state"] == "up_to_date", migrations["state_before"]
    freeze = run_module("kong_config_freeze", dict(pg_args(lab), state="status"))
    assert not freeze.failed and freeze["frozen"] is False


def _haproxy_servers(lab: Any) -> list[tuple[str, str, str]]:
    """(server, operational state, weight) of every server in the Kong backend, from HAProxy's socket."""
    lb = lab.lb
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(lb["kong_lb_haproxy_socket"])
        sock.sendall(f"show servers state {lb.get('kong_lb_backend', 'kong_proxy')}\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = [line.split() for line in data.decode().splitlines()[2:] if line.strip()]
    # columns: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight ...
    return sorted((row[3], row[5] + "/" + row[6], row[7]) for row in rows)


def lb_y_share(lab: Any) -> float:
    """Y's share (percent) of the weight of the HAProxy servers that take new traffic now (up and
    ready: not drained, not in maintenance), as the load balancer itself would split it."""
    y_servers = {host["kong_lb_server_name"] for host in lab.hosts("kong_y").values()}
    # state "2/0": operational state running, administrative state ready
    serving = [(name, int(weight)) for name, state, weight in _haproxy_servers(lab) if state == "2/0"]
    total = sum(weight for _name, weight in serving)
    return round(100.0 * sum(weight for name, weight in serving if name in y_servers) / total, 2) if total else 0.0


def _nginx_pid(host: dict[str, Any]) -> str | None:
    pidfile = Path(host["kong_prefix"]) / "pids" / "nginx.pid"
    return pidfile.read_text().strip() if pidfile.exists() else None


# Kong's configuration entities the lab seeds (services, routes with regex paths, plugins, consumers
# with keys, upstreams and targets): what an upgrade, a rollback or a recovery must never lose.
ENTITY_TABLES = ("services", "routes", "plugins", "consumers", "keyauth_credentials", "upstreams", "targets")


def entity_ids(lab: Any, database: str | None = None) -> dict[str, list[str]]:
    """The ids of every seeded entity, per table, in ``database`` (default: X's)."""
    return {table: [row[0] for row in sql(lab, f"SELECT id::text FROM {table} ORDER BY id", database)]  # noqa: S608
            for table in ENTITY_TABLES}


def lab_snapshot(lab: Any) -> dict[str, Any]:
    """What a refused run must leave as it was: entity rows, schema_meta, databases, freeze, HAProxy
    servers, node versions and nginx master pids, backups and reports."""
    from ansible_runner import run_module  # tests/integration, put on sys.path by conftest.py

    tables = (*ENTITY_TABLES, "locks")
    nodes = {**lab.hosts("kong_x"), **lab.hosts("kong_y")}
    return {
        "rows": {table: sql(lab, f"SELECT count(*) FROM {table}")[0][0] for table in tables},  # noqa: S608 (fixed names)
        "schema_meta": sql(lab, "SELECT key, subsystem, executed, pending FROM schema_meta ORDER BY key, subsystem"),
        "run_lock": sql(lab, "SELECT to_jsonb(l) FROM kongops_run_lock l")
        if sql(lab, "SELECT to_regclass('kongops_run_lock') IS NOT NULL")[0][0] else None,
        "databases": sql(lab, "SELECT datname FROM pg_database ORDER BY datname"),
        "freeze": run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"],
        "lb": _haproxy_servers(lab),
        "versions": {name: admin_version(host["kong_admin_url"]) for name, host in nodes.items()},
        # A node stopped, started or restarted gets another nginx master pid (or none).
        "pids": {name: _nginx_pid(host) for name, host in nodes.items()},
        "files": sorted(str(p) for d in ("backups", "reports") for p in (lab.run_dir / d).rglob("*")
                        if (lab.run_dir / d).exists()),
    }
