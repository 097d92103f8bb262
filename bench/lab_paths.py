"""Puts the lab's and the tests' helpers on sys.path for the benchmarks that bring up a lab
(``import lab_paths`` before importing e2e_helpers, labfixtures or labctl); REPO is the checkout."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _helpers in ("tests/lab/tests", "tests/lab", "tests/integration", "tests/e2e"):
    if str(REPO / _helpers) not in sys.path:
        sys.path.insert(0, str(REPO / _helpers))
