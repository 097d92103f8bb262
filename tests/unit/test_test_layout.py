"""The suite's own layout: pytest imports test files by basename (no packages), so two files with one
basename make it refuse to collect the second ('import file mismatch') and fail the whole run."""

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_basename():
    seen = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if "output" not in path.relative_to(TESTS).parts:
            seen[path.name].append(str(path.relative_to(TESTS)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not shared, f"rename one of each: {shared}"
