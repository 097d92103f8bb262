"""Benchmark: does a rolling upgrade cost what its batches cost, whatever the number of nodes? The
same DB-less rolling upgrade (playbooks/upgrade_rolling.yml, batches of 25 %: 3 batches for 3 nodes,
4 for 12 and 48) on labs of 3+3, 12+12 and 48+48 nodes, under the same steady load; prints each
run's seconds, the ratios between sizes, the time per extra node pair and the tasks whose time grew
most with the nodes. Never asserted.

    .venv/bin/python bench/rolling_scale.py [--sizes 3,12,48] [--kong emulated] [--rounds 1]

Each case gets a fresh lab (tests/lab/lab up --mode dbless, 3.9.0 -> 3.9.1 by default; honours KONG_LAB_NET and KONG_LAB_RUN_DIR),
taken down afterwards; the sizes alternate round by round. Emulated nodes by default: 96 real Kong
nodes do not fit the two cores of the project machine next to Ansible; --kong real works for small
sizes. Task times come from bench/callback_plugins/task_times.py.
"""

from __future__ import annotations

import argparse
import json
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


def one_run(size: int, kong: str, x: str, y: str, batch: str) -> dict[str, Any]:
    lab_args = ("--x-version", x, "--y-version", y, "--x-nodes", str(size), "--y-nodes", str(size), "--mode", "dbless")
    with running_lab(*lab_args, kong=kong) as lab, tempfile.TemporaryDirectory() as tmp:
        times_file = Path(tmp) / "task-times.json"
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="dbless", kong_upgrade_rolling_batch_size=batch,
                     kong_upgrade_gate_min_requests=20)
        env = {"ANSIBLE_CALLBACK_PLUGINS": str(REPO / "bench" / "callback_plugins"),
               "ANSIBLE_CALLBACKS_ENABLED": "task_times", "KONGOPS_BENCH_TASK_TIMES": str(times_file)}
        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=3600, rate=RATE).start()
        try:
            start = time.perf_counter()
            run = run_playbook("upgrade_rolling", lab.inventory_path, extra, Path(tmp), timeout=3600, env=env)
            seconds = time.perf_counter() - start
        finally:
            load.stop()
        if run.rc != 0:
            raise SystemExit(f"the rolling upgrade of {size}+{size} nodes failed:\n{run.explain()}")
        tasks = json.loads(times_file.read_text()) if times_file.is_file() else {}
    return {"seconds": seconds, "failed": load.summary()["failed"], "tasks": tasks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,12,48", help="node pairs per lab, comma-separated (default 3,12,48)")
    parser.add_argument("--kong", default="emulated", choices=["emulated", "real"], help="Kong nodes (default emulated)")
    parser.add_argument("--batch", default="25%", help="kong_upgrade_rolling_batch_size (default 25%%)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each size (default 1)")
    parser.add_argument("--x", default="3.9.0", help="X's version (default 3.9.0)")
    parser.add_argument("--y", default="3.9.1", help="Y's version (default 3.9.1)")
    parser.add_argument("--top", type=int, default=12, help="tasks to list, by growth (default 12)")
    args = parser.parse_args()
    sizes = [int(part) for part in args.sizes.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    for _round in range(args.rounds):
        for size in sizes:
            runs[size].append(one_run(size, args.kong, args.x, args.y, args.batch))
            print(f"  {size}+{size}: {runs[size][-1]['seconds']:.1f} s", flush=True)
    median = {size: statistics.median(r["seconds"] for r in runs[size]) for size in sizes}
    print(f"Rolling DB-less {args.x} -> {args.y}, {args.kong} Kong, batches of {args.batch}, {RATE} requests/s; "
          f"median of {args.rounds} round(s):")
    for size in sizes:
        print(f"  {size:3}+{size:<3} {median[size]:8.1f} s   failed requests {sum(r['failed'] for r in runs[size])}")
    for small, large in zip(sizes, sizes[1:], strict=False):
        print(f"time({large}+{large}) / time({small}+{small}) = {median[large] / median[small]:.2f}; "
              f"{(median[large] - median[small]) / (large - small):.2f} s per extra node pair")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        first = {name: t["seconds"] for name, t in runs[small][0]["tasks"].items()}
        last = runs[large][0]["tasks"]
        growth = sorted(((t["seconds"] - first.get(where, 0.0), where, t) for where, t in last.items()),
                        key=lambda row: row[0], reverse=True)
        print(f"Tasks whose time grew most from {small}+{small} to {large}+{large} (seconds at {large}+{large}, runs):")
        for grew, where, t in growth[:args.top]:
            print(f"  +{grew:7.1f} s  {t['seconds']:7.1f} s  x{t['runs']:<3} {t.get('name', '')[:90]}  ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
