# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load-balancer drivers behind one interface: HAProxy runtime API and NGINX upstream files.

Private to the collection. A driver reads the current servers (weight, admin state,
operational state, current sessions) and applies a desired set of weights/states.
See progressive-delivery.md 5.1 and 5.2 for the mechanics relied on here.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time

HAPROXY_MAX_WEIGHT = 256
NGINX_MAX_WEIGHT = 1000
ADMIN_STATES = ("ready", "drain", "maint")

# srv_admin_state bits (HAProxy management guide, "show servers state").
_ADMIN_FMAINT = 0x01
_ADMIN_IMAINT = 0x02
_ADMIN_CMAINT = 0x04
_ADMIN_FDRAIN = 0x08
_ADMIN_IDRAIN = 0x10
_ADMIN_RMAINT = 0x20
_ADMIN_HMAINT = 0x40


class LbError(Exception):
    """A load balancer we cannot read or change, with what to do about it."""


def compute_pool_weights(n_x, n_y, y_percent, max_weight=100):
    """Per-server integer weights (wx, wy) so Y's share of the total is ``y_percent``.

    The share is ny*wy / (nx*wx + ny*wy). Weights stay within 1..max_weight except at 0 %
    and 100 %, where the drained side gets 0. Returns (wx, wy, effective_percent).
    """
    if n_x < 0 or n_y < 0:
        raise LbError("pool sizes cannot be negative")
    if not 0 <= y_percent <= 100:
        raise LbError("y_percent must be between 0 and 100, got %s" % y_percent)
    if n_y == 0 and y_percent > 0:
        raise LbError("cannot send %s%% of traffic to Y: the Y pool is empty" % y_percent)
    if n_x == 0 and y_percent < 100:
        raise LbError("cannot keep %s%% of traffic on X: the X pool is empty" % (100 - y_percent))
    if y_percent == 0:
        return max_weight, 0, 0.0
    if y_percent == 100:
        return 0, max_weight, 100.0
    best = None
    for wx in range(1, max_weight + 1):
        wy = int(round(y_percent * n_x * wx / ((100.0 - y_percent) * n_y)))
        if not 1 <= wy <= max_weight:
            continue
        share = 100.0 * n_y * wy / (n_x * wx + n_y * wy)
        error = abs(share - y_percent)
        key = (round(error, 6), -(wx + wy))
        if best is None or key < best[0]:
            best = (key, wx, wy, share)
    if best is None:
        raise LbError("no weights in 1..%d give Y %s%% with %d X and %d Y servers" % (max_weight, y_percent, n_x, n_y))
    return best[1], best[2], round(best[3], 2)


def effective_share(servers, y_names):
    """Y's share (percent) of the weight of servers that can take new traffic now."""
    total = 0
    y_total = 0
    for name, srv in servers.items():
        if srv["admin_state"] != "ready" or not srv.get("up", True):
            continue
        total += srv["weight"]
        if name in y_names:
            y_total += srv["weight"]
    return round(100.0 * y_total / total, 2) if total else 0.0


class HaproxyDriver:
    """HAProxy runtime API on an admin-level UNIX or TCP socket."""

    kind = "haproxy"
    max_weight = HAPROXY_MAX_WEIGHT

    def __init__(self, socket_path, backend, state_file=None, timeout=5.0):
        self.socket_path = socket_path
        self.backend = backend
        self.state_file = state_file
        self.timeout = timeout

    def _connect(self):
        target = self.socket_path
        try:
            if target.startswith("tcp:") or re.match(r"^[\w.\-]+:\d+$", target):
                host, port = target[4:].rsplit(":", 1) if target.startswith("tcp:") else target.rsplit(":", 1)
                return socket.create_connection((host, int(port)), timeout=self.timeout)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(target)
            return sock
        except OSError as exc:
            raise LbError("cannot reach the HAProxy runtime API at %s: %s. Check the `stats socket ... level admin` "
                          "line of haproxy.cfg and that HAProxy runs" % (target, exc)) from exc

    def command(self, line):
        sock = self._connect()
        try:
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except OSError as exc:
            raise LbError("HAProxy runtime API at %s failed on `%s`: %s" % (self.socket_path, line, exc)) from exc
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def _checked(self, line):
        out = self.command(line).strip()
        lowered = out.lower()
        if "static lb algorithm" in lowered:
            raise LbError("backend %s uses a static balance algorithm, which cannot change weights on the fly "
                          "(HAProxy: %s). Use `balance roundrobin` or `leastconn` in that backend" % (self.backend, out))
        if "permission denied" in lowered:
            raise LbError("the HAProxy socket %s is not admin-level (%s); add `level admin` to its `stats socket` line"
                          % (self.socket_path, out))
        if out and ("no such" in lowered or "unknown" in lowered or "require" in lowered or "invalid" in lowered):
            raise LbError("HAProxy refused `%s`: %s" % (line, out))
        return out

    def read(self):
        out = self.command("show servers state %s" % self.backend)
        lines = [line for line in out.splitlines() if line.strip()]
        if not lines or "Can't find backend" in out or "No such backend" in out:
            raise LbError("HAProxy has no backend named '%s' (%s)" % (self.backend, out.strip() or "empty answer"))
        header = None
        servers = {}
        for line in lines:
            if line.startswith("#"):
                header = line.lstrip("# ").split()
                continue
            if header is None:
                continue
            row = dict(zip(header, line.split()))
            if row.get("be_name") != self.backend:
                continue
            admin = int(row.get("srv_admin_state", "0"))
            if admin & (_ADMIN_FMAINT | _ADMIN_IMAINT | _ADMIN_CMAINT | _ADMIN_RMAINT | _ADMIN_HMAINT):
                admin_state = "maint"
            elif admin & (_ADMIN_FDRAIN | _ADMIN_IDRAIN):
                admin_state = "drain"
            else:
                admin_state = "ready"
            servers[row["srv_name"]] = {
                "address": "%s:%s" % (row.get("srv_addr"), row.get("srv_port")),
                "weight": int(row.get("srv_uweight", "0")),
                "initial_weight": int(row.get("srv_iweight", "0")),
                "admin_state": admin_state,
                "up": row.get("srv_op_state") == "2",
                "sessions": 0,
            }
        for name, sessions in self._sessions().items():
            if name in servers:
                servers[name]["sessions"] = sessions
        return servers

    def _sessions(self):
        out = self.command("show stat")
        result = {}
        header = None
        for line in out.splitlines():
            if line.startswith("# "):
                header = line[2:].split(",")
                continue
            if not header or not line.strip():
                continue
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == self.backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                try:
                    result[row["svname"]] = int(row.get("scur") or 0)
                except ValueError:
                    result[row["svname"]] = 0
        return result

    def busy(self, names):
        """{server: current sessions} of the named servers that are up and still serve sessions."""
        servers = self.read()
        return {n: servers[n]["sessions"] for n in names if n in servers and servers[n]["sessions"] > 0
                and servers[n].get("up", True)}

    def apply(self, changes):
        """Apply {server: {"weight": w, "admin_state": s}}; each key optional.

        HAProxy takes one server at a time, so servers that will serve (a weight above 0, not drained
        or in maintenance) are set first and those that stop serving last: moving everything from X to
        Y in one run (X drained, Y from weight 0) never leaves the backend a moment with no weight,
        when HAProxy would answer 503."""
        def stops_serving(item):
            change = item[1]
            return change.get("weight", 1) == 0 or change.get("admin_state") in ("drain", "maint")

        for name, change in sorted(changes.items(), key=stops_serving):
            if "admin_state" in change and change["admin_state"] == "ready":
                self._checked("set server %s/%s state ready" % (self.backend, name))
            if "weight" in change:
                self._checked("set server %s/%s weight %d" % (self.backend, name, change["weight"]))
            if "admin_state" in change and change["admin_state"] != "ready":
                self._checked("set server %s/%s state %s" % (self.backend, name, change["admin_state"]))
        self.save_state()

    def save_state(self):
        """Dump `show servers state` to the server-state file so a reload keeps the weights."""
        if not self.state_file:
            return
        out = self.command("show servers state")
        directory = os.path.dirname(os.path.abspath(self.state_file))
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(out if out.endswith("\n") else out + "\n")
            os.chmod(tmp, 0o600)
            os.rename(tmp, self.state_file)
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise LbError("could not write the HAProxy server-state file %s: %s" % (self.state_file, exc)) from exc


_NGINX_SERVER_RE = re.compile(r"^(?P<indent>\s*)server\s+(?P<addr>\S+)(?P<params>[^;#]*);(?P<rest>.*)$")


class NginxDriver:
    """An NGINX upstream include file: rewrite, `nginx -t`, graceful reload.

    Each `server` line may end in a `# <name>` comment naming it (as the lab writes);
    otherwise its address is its name. Open-source NGINX has no weight 0, so a server
    that must get no new traffic is written `down`.
    """

    kind = "nginx"
    max_weight = NGINX_MAX_WEIGHT

    def __init__(self, module, upstream_file, nginx_binary="nginx", conf=None, prefix=None, pidfile=None,
                 error_log=None, reload_timeout=15.0):
        self.module = module
        self.upstream_file = upstream_file
        self.nginx_binary = nginx_binary
        self.conf = conf
        self.prefix = prefix
        self.pidfile = pidfile
        self.error_log = error_log
        self.reload_timeout = reload_timeout

    def _read_text(self):
        try:
            with open(self.upstream_file) as handle:
                return handle.read()
        except OSError as exc:
            raise LbError("cannot read the NGINX upstream file %s: %s" % (self.upstream_file, exc)) from exc

    @staticmethod
    def parse(text):
        servers = {}
        for line in text.splitlines():
            match = _NGINX_SERVER_RE.match(line)
            if not match:
                continue
            params = match.group("params").split()
            comment = match.group("rest").strip()
            name = comment.lstrip("#").strip().split()[0] if comment.startswith("#") and comment.lstrip("#").strip() \
                else match.group("addr")
            weight = 1
            for param in params:
                if param.startswith("weight="):
                    weight = int(param.split("=", 1)[1])
            down = "down" in params
            servers[name] = {"address": match.group("addr"), "weight": 0 if down else weight,
                             "configured_weight": weight, "admin_state": "maint" if down else "ready",
                             "up": True, "sessions": 0}
        return servers

    def read(self):
        servers = self.parse(self._read_text())
        if not servers:
            raise LbError("no `server` lines in the NGINX upstream file %s" % self.upstream_file)
        return servers

    @staticmethod
    def render(text, desired):
        """Rewrite server lines: {name: {"weight": w, "admin_state": s}}."""
        out = []
        for line in text.splitlines():
            match = _NGINX_SERVER_RE.match(line)
            if not match:
                out.append(line)
                continue
            comment = match.group("rest").strip()
            name = comment.lstrip("#").strip().split()[0] if comment.startswith("#") and comment.lstrip("#").strip() \
                else match.group("addr")
            if name not in desired:
                out.append(line)
                continue
            want = desired[name]
            params = [p for p in match.group("params").split() if not p.startswith("weight=") and p != "down"]
            weight = want["weight"]
            state = want["admin_state"]
            if weight <= 0 or state != "ready":
                params = ["weight=%d" % max(1, want.get("keep_weight", 1))] + params + ["down"]
            else:
                params = ["weight=%d" % weight] + params
            out.append("%sserver %s %s;%s" % (match.group("indent"), match.group("addr"), " ".join(params),
                                              ("  " + comment) if comment else ""))
        return "\n".join(out) + ("\n" if text.endswith("\n") else "")

    def _nginx_argv(self, extra):
        argv = [self.nginx_binary]
        if self.prefix:
            argv += ["-p", self.prefix]
        if self.conf:
            argv += ["-c", self.conf]
        if self.error_log:
            argv += ["-e", self.error_log]
        return argv + extra

    # -- the running master and its workers (Linux /proc), when the pid file is known ----------
    def _master(self):
        try:
            with open(self.pidfile) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError) as exc:
            raise LbError("cannot read the NGINX pid file %s: %s; is NGINX running with that `pid`?"
                          % (self.pidfile, exc)) from exc
        if not os.path.exists("/proc/%d" % pid):
            raise LbError("NGINX master %d from %s is not running" % (pid, self.pidfile))
        return pid

    def workers(self):
        """(serving, shutting_down): pids of the master's worker processes, by their title."""
        master = self._master()
        serving, shutting_down = [], []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    stat = handle.read()
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    title = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) < 2 or fields[1] != str(master) or "worker process" not in title:
                continue
            (shutting_down if "shutting down" in title else serving).append(int(entry))
        return sorted(serving), sorted(shutting_down)

    def busy(self, names):
        """Old workers still finishing requests after a reload (NGINX cannot say which server they talk
        to, so every drained server waits for all of them); {} without the pid file."""
        if not self.pidfile:
            return {}
        _serving, shutting_down = self.workers()
        return {"nginx workers shutting down": len(shutting_down)} if shutting_down else {}

    def _wait_reloaded(self, before):
        """Wait until the master serves with new workers only: the reload took effect (a failed reload
        leaves the old workers serving the old weights, though `nginx -s reload` exits 0)."""
        deadline = time.monotonic() + self.reload_timeout
        while True:
            serving, _shutting_down = self.workers()
            if serving and not set(serving) & set(before):
                return
            if time.monotonic() >= deadline:
                raise LbError("NGINX did not start new workers within %s s of `nginx -s reload`, so the old upstream "
                              "weights may still be in use; see NGINX's error log%s"
                              % (self.reload_timeout, " %s" % self.error_log if self.error_log else ""))
            time.sleep(0.05)

    def _replace(self, text):
        """Put ``text`` in the upstream file with one rename (AnsibleModule.atomic_move): the file is
        never missing, and keeps its owner, group, mode and SELinux context."""
        directory = os.path.dirname(os.path.abspath(self.upstream_file))
        fd, tmp = tempfile.mkstemp(prefix=".upstream-", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            self.module.atomic_move(tmp, self.upstream_file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def apply(self, changes):
        text = self._read_text()
        current = self.parse(text)
        desired = {}
        for name, srv in current.items():
            change = changes.get(name, {})
            desired[name] = {"weight": change.get("weight", srv["weight"]),
                             "admin_state": change.get("admin_state", srv["admin_state"])}
        new_text = self.render(text, desired)
        if new_text == text:
            return False
        self._replace(new_text)
        rc, out, err = self.module.run_command(self._nginx_argv(["-t", "-q"]))
        if rc != 0:
            self._replace(text)
            raise LbError("nginx -t rejected the new upstream file, the previous one is back in place: %s"
                          % (err or out).strip())
        before = self.workers()[0] if self.pidfile else None
        rc, out, err = self.module.run_command(self._nginx_argv(["-s", "reload"]))
        if rc != 0:
            raise LbError("nginx -s reload failed (the new upstream file is written and valid): %s" % (err or out).strip())
        if before is not None:
            self._wait_reloaded(before)
        return True


def wait_drained(driver, names, timeout, interval=0.2, clock=time.monotonic, sleep=time.sleep):
    """Poll ``driver.busy(names)`` until nothing is busy (HAProxy: the servers' current sessions;
    NGINX: old workers finishing requests); return the seconds waited."""
    start = clock()
    deadline = start + timeout
    while True:
        busy = driver.busy(names)
        if not busy:
            return clock() - start
        if clock() >= deadline:
            raise LbError("servers still have sessions after %s s of draining: %s. Long-lived connections keep a "
                          "drained server busy; raise drain_timeout or close them"
                          % (timeout, ", ".join("%s=%d" % item for item in sorted(busy.items()))))
        sleep(interval)
