"""Benchmark: the in-place outage as clients see it, against what the run records. An in-place
upgrade on real Kong under steady load through HAProxy; prints the longest run of failed requests
the load generator saw, the downtime window the report gives, and the phases inside it, with the
part of the outage that was neither stopping X, migrating nor starting Y. Never asserted.

    .venv/bin/python bench/in_place_outage.py [--rounds 1] [--x 3.4.2 --y 3.9.1] [--nodes 2]

Each round gets a fresh lab (tests/lab/lab up --kong real; honours KONG_LAB_NET and KONG_LAB_RUN_DIR).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

# First: puts the tests' helpers on sys.path.
import lab_paths  # noqa: F401  # pylint: disable=unused-import

# isort: split
from e2e_helpers import fast_gate, read_report, run_under_load  # tests/e2e
from labfixtures import running_lab  # tests/lab/tests

# The work an in-place outage cannot avoid: stop X, migrate, start Y (each phase lasts until the next starts;
# stop_x from the moment the last X node stopped answering).
PHYSICAL = ("stop_x", "migrations_up", "migrations_finished", "start_y")


def one_round(x: str, y: str, nodes: int) -> dict[str, float]:
    with running_lab("--x-version", x, "--y-version", y, "--x-nodes", str(nodes), "--y-nodes", str(nodes),
                     kong="real") as lab, tempfile.TemporaryDirectory() as tmp:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_allow_unsupported_path=(x, y) == ("3.4.2", "3.9.1"))
        run, summary = run_under_load(lab, "upgrade_in_place", extra, Path(tmp), rate=100)
        if run.rc != 0:
            raise SystemExit(f"the in-place run failed:\n{run.explain()}")
        report = read_report(lab, x, y)
    phases = report["phases"]
    starts = [float(p["started_epoch"]) for p in phases]
    lasted = {p["phase"]: starts[i + 1] - starts[i] for i, p in enumerate(phases[:-1])}
    first = next(i for i, p in enumerate(phases) if p["phase"] == "stop_x")
    last = next(i for i, p in enumerate(phases) if p["phase"] == "switch_to_y")
    inside = {p["phase"]: lasted[p["phase"]] for p in phases[first:last + 1] if p["phase"] in lasted}
    # Clients lose X when the last X node stops answering (recorded by the run), not when the stop is
    # launched: only the part of stop_x after that moment is inside the outage.
    downtime = report["downtime"]
    opened = float(downtime.get("x_stopped_answering_epoch") or downtime["x_stop_started_epoch"])
    inside["stop_x"] = starts[first + 1] - opened
    physical = sum(seconds for phase, seconds in inside.items() if phase in PHYSICAL)
    window = summary["longest_failure_window_seconds"]
    result = {"clients saw (s)": window, "report says (s)": float(report["downtime"]["seconds"]),
              "stop + migrations + start (s)": physical, "other work in the window (s)": window - physical,
              "failed requests": float(summary["failed"])}
    result.update({f"  phase {phase} (s)": seconds for phase, seconds in inside.items()})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("--x", default="3.4.2", help="X's version (default 3.4.2)")
    parser.add_argument("--y", default="3.9.1", help="Y's version (default 3.9.1)")
    parser.add_argument("--nodes", type=int, default=2, help="nodes (default 2)")
    args = parser.parse_args()
    rounds = [one_round(args.x, args.y, args.nodes) for _round in range(args.rounds)]
    print(f"In-place {args.x} -> {args.y}, {args.nodes} real Kong nodes behind HAProxy, 100 requests/s; "
          f"median of {args.rounds} round(s):")
    for key in rounds[0]:
        print(f"  {key:40}{statistics.median(r.get(key, 0.0) for r in rounds):8.2f}")
    median = {key: statistics.median(r.get(key, 0.0) for r in rounds) for key in rounds[0]}
    print(f"outage / (stop + migrations + start) = "
          f"{median['clients saw (s)'] / median['stop + migrations + start (s)']:.2f}; "
          f"report - clients = {median['report says (s)'] - median['clients saw (s)']:+.2f} s "
          f"(target: outage <= stop + migrations + start + 1 s, report within 1 s of clients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
