"""The lab's cache of compiled module code (tests/lab/zipcache.py), in fresh Python processes.

Each case imports a module from a zip, as Ansible's module payloads are imported, with the hook
enabled the way the venv's .pth enables it, and counts the compilations that zipimport made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ZIPCACHE = Path(__file__).resolve().parents[1] / "zipcache.py"

# Imports the zip's module with the hook on and prints how many sources were compiled.
PROBE = """
import importlib.util, json, sys, zipimport
spec = importlib.util.spec_from_file_location("kongops_lab_zipcache", sys.argv[1])
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)
compiled = []
real = zipimport._compile_source
zipimport._compile_source = lambda path, source: compiled.append(path) or real(path, source)
hook.enable()
sys.path.insert(0, sys.argv[2])
import payload_mod
print(json.dumps({"compiled": len(compiled), "answer": payload_mod.ANSWER}))
"""


def _payload(tmp_path: Path, answer: int) -> Path:
    path = tmp_path / f"payload-{answer}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("payload_mod.py", f"ANSWER = {answer}\n")
    return path


def _import(payload: Path, cache: Path | str) -> dict:
    env = dict(os.environ, KONGOPS_LAB_ZIPCACHE=str(cache))
    # -S: without site-packages, where `make setup` installed the hook that this loads from the checkout.
    out = subprocess.run([sys.executable, "-S", "-c", PROBE, str(ZIPCACHE), str(payload)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_second_import_of_the_same_source_reads_the_cache(tmp_path):
    cache = tmp_path / "cache"
    # zipimport compiles the source once (Python 3.11 compiles it twice: for the spec's file name
    # and for the code); after that it is read from the cache.
    assert _import(_payload(tmp_path, 1), cache) == {"compiled": 1, "answer": 1}
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert len(list(cache.iterdir())) == 1
    assert _import(_payload(tmp_path, 1), cache) == {"compiled": 0, "answer": 1}
    # Other source bytes are compiled, never answered with the cached code.
    assert _import(_payload(tmp_path, 2), cache) == {"compiled": 1, "answer": 2}


def test_a_directory_others_can_write_is_not_used(tmp_path):
    uncached = _import(_payload(tmp_path, 3), "")
    assert uncached["compiled"] >= 1
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    for run in ("first", "second"):
        assert _import(_payload(tmp_path, 3), cache) == uncached, run
    assert not list(cache.iterdir())
