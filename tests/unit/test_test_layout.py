"""The suite's own layout: pytest imports test files by basename (no packages), so two files with one
basename make it refuse to collect the second ('import file mismatch') and fail the whole run."""

import importlib.util
import re
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


def _work_units():
    spec = importlib.util.spec_from_file_location("work_units", TESTS / "work_units.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_e2e_files_with_a_module_fixture_run_whole_on_one_worker():
    # Under -n each e2e test is a unit of work of its own; a file whose tests share a module-scoped
    # fixture would bring it up once per worker, so it must be listed as kept whole.
    units = _work_units()
    sharing = {f"tests/e2e/{path.name}" for path in (TESTS / "e2e").glob("test_*.py")
               if re.search(r"@pytest\.fixture\([^)]*scope=\"(module|package|session)\"", path.read_text())}
    assert sharing, "test_bad_inputs.py shares a module-scoped lab and should be found"
    assert sharing == units.E2E_FILES_KEPT_WHOLE
    assert units.work_unit("tests/e2e/test_in_place.py::test_x[a]") == "tests/e2e/test_in_place.py::test_x[a]"
    assert units.work_unit("tests/e2e/test_bad_inputs.py::test_y[b]") == "tests/e2e/test_bad_inputs.py"
    assert units.work_unit("tests/integration/test_lb_weight.py::test_z[nginx]") == "tests/integration/test_lb_weight.py"
