"""End-to-end tests import the integration harness and the lab's fixtures and load generator."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO / "tests" / "integration", REPO / "tests" / "lab" / "tests", REPO / "tests" / "lab"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
