"""Benchmark: does a rolling upgrade cost what its batches cost, whatever the number of nodes? The
same DB-less rolling upgrade (playbooks/upgrade_rolling.yml, batches of 25 %: 3 batches for 3 nodes,
4 for 12 and 48) on labs of 3+3, 12+12 and 48+48 nodes, under the same steady load; prints each
run's seconds, the ratios between sizes, the time per extra node pair and the tasks whose time grew
most with the nodes. Never asserted.

Two shapes of play, side by side: our playbook, whose play holds the nodes (each node step runs on
every node at once through Ansible's forks, set to the number of hosts), and a team's play over the
control node alone that includes the role (the control node runs each node step by delegation, one
node after the other: how every run worked before issue 12).

    .venv/bin/python bench/rolling_scale.py [--sizes 3,12,48] [--shapes nodes,localhost] [--kong emulated] [--rounds 1]

Each case gets a fresh lab (tests/lab/lab up --mode dbless, 3.9.0 -> 3.9.1 by default; honours KONG_LAB_NET and KONG_LAB_RUN_DIR),
taken down afterwards; the sizes alternate round by round. Emulated nodes by default: 96 real Kong
nodes do not fit the two cores of the project machine next to Ansible; --kong real works for small
sizes. Task times come from bench/callback_plugins/task_times.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
TEAM_PLAY = """\
- name: A team's play over the control node alone
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Upgrade with the rolling strategy
      ansible.builtin.include_role:
        name: kongops.upgrade.rolling
"""


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux), or (0, 0)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def one_run(size: int, shape: str, kong: str, x: str, y: str, batch: str) -> dict[str, Any]:
    lab_args = ("--x-version", x, "--y-version", y, "--x-nodes", str(size), "--y-nodes", str(size), "--mode", "dbless")
    with running_lab(*lab_args, kong=kong) as lab, tempfile.TemporaryDirectory() as tmp:
        times_file = Path(tmp) / "task-times.json"
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="dbless", kong_upgrade_rolling_batch_size=batch,
                     kong_upgrade_gate_min_requests=20)
        env = {"ANSIBLE_CALLBACK_PLUGINS": str(REPO / "bench" / "callback_plugins"),
               "ANSIBLE_CALLBACKS_ENABLED": "task_times", "KONGOPS_BENCH_TASK_TIMES": str(times_file),
               "ANSIBLE_FORKS": str(2 * size + 1)}
        playbook = "upgrade_rolling"
        if shape == "localhost":
            playbook = str(Path(tmp) / "team_rolling.yml")
            Path(playbook).write_text(TEAM_PLAY, encoding="utf-8")
        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3600, rate=RATE).start()
        try:
            start, (busy0, total0) = time.perf_counter(), _cpu_ticks()
            run = run_playbook(playbook, lab.inventory_path, extra, Path(tmp), timeout=3600, env=env)
            seconds, (busy1, total1) = time.perf_counter() - start, _cpu_ticks()
        finally:
            load.stop()
        if run.rc != 0:
            raise SystemExit(f"the rolling upgrade of {size}+{size} nodes ({shape}) failed:\n{run.explain()}")
        tasks = json.loads(times_file.read_text()) if times_file.is_file() else {}
    # How busy the machine's cores were during the run: the control node, the load balancer, the load
    # generator and every (emulated) node share them on the lab, so a run near 100 % is bound by CPU.
    busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
    return {"seconds": seconds, "failed": load.summary()["failed"], "tasks": tasks, "cpu_busy": busy}


def _report(shape: str, sizes: list[int], runs: dict[int, list[dict[str, Any]]], top: int) -> dict[int, float]:
    median = {size: statistics.median(r["seconds"] for r in runs[size]) for size in sizes}
    print(f"{SHAPES[shape]}:")
    for size in sizes:
        busy = statistics.median(r["cpu_busy"] for r in runs[size])
        print(f"  {size:3}+{size:<3} {median[size]:8.1f} s   failed requests {sum(r['failed'] for r in runs[size])}"
              f"   CPU busy {busy:.0%} of {os.cpu_count()} cores")
    for small, large in zip(sizes, sizes[1:], strict=False):
        print(f"  time({large}+{large}) / time({small}+{small}) = {median[large] / median[small]:.2f}; "
              f"{(median[large] - median[small]) / (large - small):.2f} s per extra node pair")
    if len(sizes) > 1 and top:
        small, large = sizes[0], sizes[-1]
        first = {name: t["seconds"] for name, t in runs[small][0]["tasks"].items()}
        last = runs[large][0]["tasks"]
        growth = sorted(((t["seconds"] - first.get(where, 0.0), where, t) for where, t in last.items()),
                        key=lambda row: row[0], reverse=True)
        print(f"  Tasks whose time grew most from {small}+{small} to {large}+{large} (seconds at {large}+{large}, runs):")
        for grew, where, t in growth[:top]:
            print(f"  +{grew:7.1f} s  {t['seconds']:7.1f} s  x{t['runs']:<3} {t.get('name', '')[:80]}  ({where})")
    return median


SHAPES = {"nodes": "our playbook, a play over the control node and the nodes (node steps at once)",
          "localhost": "a team's play over the control node alone (node steps one node after the other)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,12,48", help="node pairs per lab, comma-separated (default 3,12,48)")
    parser.add_argument("--shapes", default="nodes,localhost",
                        help="shapes of play, comma-separated: nodes, localhost (default both)")
    parser.add_argument("--kong", default="emulated", choices=["emulated", "real"], help="Kong nodes (default emulated)")
    parser.add_argument("--batch", default="25%", help="kong_upgrade_rolling_batch_size (default 25%%)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each size (default 1)")
    parser.add_argument("--x", default="3.9.0", help="X's version (default 3.9.0)")
    parser.add_argument("--y", default="3.9.1", help="Y's version (default 3.9.1)")
    parser.add_argument("--top", type=int, default=12, help="tasks to list, by growth (default 12)")
    args = parser.parse_args()
    sizes = [int(part) for part in args.sizes.split(",")]
    shapes = [part.strip() for part in args.shapes.split(",") if part.strip()]
    unknown = [shape for shape in shapes if shape not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}: choose from {', '.join(SHAPES)}")
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {shape: {size: [] for size in sizes} for shape in shapes}
    for _round in range(args.rounds):
        for size in sizes:
            for shape in shapes:
                runs[shape][size].append(one_run(size, shape, args.kong, args.x, args.y, args.batch))
                print(f"  {size}+{size} ({shape}): {runs[shape][size][-1]['seconds']:.1f} s", flush=True)
    print(f"Rolling DB-less {args.x} -> {args.y}, {args.kong} Kong, batches of {args.batch}, {RATE} requests/s; "
          f"median of {args.rounds} round(s).")
    medians = {shape: _report(shape, sizes, runs[shape], args.top) for shape in shapes}
    if len(shapes) == 2:
        nodes, alone = medians["nodes"], medians["localhost"]
        print("Play over the nodes against a play over the control node alone: " + ", ".join(
            f"{size}+{size} {nodes[size] / alone[size]:.2f}x" for size in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
