"""Suite time by directory and the slowest tests, from the JUnit XML that pytest writes.

``make test-times`` (or ``.venv/bin/python tests/durations.py [tests/output/pytest-junit.xml]``)
after ``make pytest``: the time of each test directory summed over its tests (under
pytest-xdist that is worker time: the wall clock is about the sum divided by the workers),
and every test of tests/e2e with its time.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET  # noqa: S405 (our own pytest output)
from collections import defaultdict
from pathlib import Path


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "tests/output/pytest-junit.xml")
    if not path.is_file():
        print(f"no {path}: run `make pytest` first", file=sys.stderr)
        return 1
    root = ET.parse(path).getroot()  # noqa: S314 (our own pytest output)
    by_dir: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    e2e: list[tuple[float, str, str]] = []
    for case in root.iter("testcase"):
        module = case.get("classname", "")
        parts = module.split(".")
        directory = "/".join(parts[:3]) if parts[:2] == ["tests", "lab"] else "/".join(parts[:2])
        seconds = float(case.get("time", "0") or 0)
        by_dir[directory] += seconds
        counts[directory] += 1
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        if directory == "tests/e2e":
            e2e.append((seconds, f"{parts[-1]}::{case.get('name')}", outcome))
    suites = list(root.iter("testsuite"))
    wall = sum(float(s.get("time", "0") or 0) for s in suites)
    print(f"pytest wall clock: {wall:.0f} s")
    for directory in sorted(by_dir):
        print(f"{directory:<24} {counts[directory]:>4} tests {by_dir[directory]:>8.0f} s of test time")
    print("\ntests/e2e, each test:")
    for seconds, name, outcome in sorted(e2e, reverse=True):
        print(f"{seconds:>7.0f} s  {outcome:<7} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
