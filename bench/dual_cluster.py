"""Benchmark: a dual-cluster upgrade by the collection (playbooks/upgrade_dual_cluster.yml) against
a shell runbook of the same commands (bench/dual_cluster_runbook.sh: pg_dump, createdb + pg_restore,
migrations up and finish, kong start, HAProxy weights, kong quit), with the same traffic steps and
the same dwell at each step, on real Kong under the same steady load; and a no-op re-run of the
playbook against its first run. Prints seconds and ratios, never a pass/fail on wall-clock time.

    .venv/bin/python bench/dual_cluster.py [--rounds 1] [--dwell 10] [--x 3.4.2 --y 3.9.1]

Each case gets a fresh lab (tests/lab/lab up --kong real, 2 X + 2 Y nodes behind HAProxy; honours
KONG_LAB_NET and KONG_LAB_RUN_DIR), taken down afterwards; the cases alternate round by round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab_paths import REPO  # first: puts the tests' helpers on sys.path

# isort: split
from e2e_helpers import fast_gate, run_playbook  # tests/e2e
from labfixtures import running_lab  # tests/lab/tests

from labctl.load import LoadGenerator  # tests/lab

RATE = 50  # requests per second through the load balancer, in every case


def lab_args(x: str, y: str) -> list[str]:
    return ["--x-version", x, "--y-version", y, "--x-nodes", "2", "--y-nodes", "2", "--lb", "haproxy"]


def playbook_vars(lab: Any, steps: list[int], dwell: float, x: str, y: str) -> dict[str, Any]:
    # The gate judges each step for `dwell` seconds at least (enough requests arrive well within it).
    return dict(fast_gate(lab.run_dir), kong_upgrade_traffic_steps=steps, kong_upgrade_gate_min_duration=dwell,
                kong_upgrade_gate_min_requests=20, kong_upgrade_allow_unsupported_path=(x, y) == ("3.4.2", "3.9.1"))


def under_load(lab: Any, fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any, dict[str, Any]]:
    load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=1800, rate=RATE).start()
    try:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
    finally:
        load.stop()
    return seconds, result, load.summary()


def runbook_env(lab: Any, work: Path, steps: list[int], dwell: float) -> dict[str, str]:
    group = lab.group_vars
    passfile = work / "pgpass"
    passfile.write_text(f"*:*:*:{group['kong_pg_user']}:{group['kong_pg_password']}\n", encoding="utf-8")
    passfile.chmod(0o600)
    xs, ys = lab.hosts("kong_x"), lab.hosts("kong_y")
    lb = next(iter(lab.hosts("kong_lb").values()))
    y_nodes = []
    for name, host in sorted(ys.items()):
        y_nodes.append(":".join([name, host["kong_prefix"], host["kong_conf_path"], host["kong_proxy_listen"],
                                 host["kong_admin_listen"], host["kong_status_listen"]]))
    env = dict(os.environ)
    env.update(PGHOST=str(group["kong_pg_host"]), PGPORT=str(group["kong_pg_port"]), PGUSER=str(group["kong_pg_user"]),
               PGPASSFILE=str(passfile), X_DB=str(group["kong_pg_database"]), Y_DB=f"{group['kong_pg_database']}_y",
               X_CONF=next(iter(xs.values()))["kong_conf_path"], Y_KONG=next(iter(ys.values()))["kong_executable"],
               X_NODES=" ".join(f"{n}:{h['kong_executable']}:{h['kong_prefix']}" for n, h in sorted(xs.items())),
               Y_NODES=" ".join(y_nodes), HAPROXY_ADMIN=lb["kong_lb_haproxy_admin_tcp"], BACKEND=lb["kong_lb_backend"],
               STEPS=" ".join(str(s) for s in steps), DWELL=str(dwell), WORK_DIR=str(work))
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each case (default 1)")
    parser.add_argument("--dwell", type=float, default=10, help="seconds at each traffic step (default 10)")
    parser.add_argument("--x", default="3.4.2", help="X's version (default 3.4.2)")
    parser.add_argument("--y", default="3.9.1", help="Y's version (default 3.9.1)")
    args = parser.parse_args()
    steps = [25, 50, 75, 100]
    samples: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    changed_again: list[int | None] = []
    for _round in range(args.rounds):
        with running_lab(*lab_args(args.x, args.y), kong="real") as lab, tempfile.TemporaryDirectory() as tmp:
            extra = playbook_vars(lab, steps, args.dwell, args.x, args.y)
            seconds, first, summary = under_load(lab, run_playbook, "upgrade_dual_cluster", lab.inventory_path, extra,
                                                 Path(tmp), timeout=1800)
            if first.rc != 0:
                raise SystemExit(f"the playbook failed:\n{first.explain()}")
            samples.setdefault("playbook, first run", []).append(seconds)
            failed["playbook"] = failed.get("playbook", 0) + summary["failed"]
            start = time.perf_counter()
            again = run_playbook("upgrade_dual_cluster", lab.inventory_path, extra, Path(tmp), timeout=1800)
            samples.setdefault("playbook, no-op re-run", []).append(time.perf_counter() - start)
            if again.rc != 0:
                raise SystemExit(f"the re-run failed:\n{again.explain()}")
            changed_again.append(again.changed)
        with running_lab(*lab_args(args.x, args.y), kong="real") as lab, tempfile.TemporaryDirectory() as tmp:
            env = runbook_env(lab, Path(tmp), steps, args.dwell)
            seconds, proc, summary = under_load(lab, subprocess.run, ["bash", str(REPO / "bench" / "dual_cluster_runbook.sh")],
                                                env=env, capture_output=True, text=True, check=False, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"the runbook failed:\n{proc.stdout}\n{proc.stderr}")
            samples.setdefault("runbook", []).append(seconds)
            failed["runbook"] = failed.get("runbook", 0) + summary["failed"]
    median = {case: statistics.median(values) for case, values in samples.items()}
    dwell = len(steps) * args.dwell
    play, book = median["playbook, first run"], median["runbook"]
    print(f"Dual-cluster {args.x} -> {args.y}, 2 X + 2 Y real Kong nodes behind HAProxy, {RATE} requests/s, "
          f"steps {steps} with {args.dwell:g} s each; median of {args.rounds} round(s), seconds:")
    for case, seconds in median.items():
        print(f"  {case:28}{seconds:8.1f}")
    print(f"playbook / runbook = {play / book:.2f} (target <= 1.5); without the {dwell:g} s of dwell: "
          f"{(play - dwell) / (book - dwell):.2f} ({play - dwell:.1f} s against {book - dwell:.1f} s)")
    print(f"no-op re-run / first run = {median['playbook, no-op re-run'] / play:.2f}, changed={changed_again}")
    print(f"failed requests through the load balancer: playbook {failed['playbook']}, runbook {failed['runbook']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
