"""A compiled-code cache for the lab's Ansible module runs (a test-machine speed-up, never shipped).

Every module run unpacks Ansible's AnsiballZ payload, a zip of the module and the module_utils it
needs, and imports it with Python's zipimport. zipimport cannot keep bytecode, so each run compiles
ansible-core's module_utils (and ours) from source again: measured on the lab machine, a `stat`
module run took 0.45 s of CPU, of which 0.18 s was compiling the same sources as the run before.
The test suite makes thousands of module runs on two cores: with this cache, the blue-green e2e
test's Python processes used 59 s of CPU instead of 72 s (its run took 169 s instead of 185 s).

Installed into the venv by `make setup` (``python tests/lab/zipcache.py install``), it does nothing
unless ``KONGOPS_LAB_ZIPCACHE`` names a directory (the Makefile and tests/conftest.py set it).
Then zipimport's compile step first looks for the code object of the same source bytes there.
What a module does is unchanged: the code is what compiling the same bytes gives, and a cache that
cannot be read or written (another user's run, a full disk) falls back to compiling. Only the
file name in a traceback may name the payload of the run that filled the cache.

The directory must belong to the user that runs the module and be writable by nobody else (code
found there is run), so a module run as another user compiles as before.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import stat
import sys
import sysconfig
import zipimport
from pathlib import Path

ENV = "KONGOPS_LAB_ZIPCACHE"
# Python loads every *.pth file in site-packages at start-up and runs its lines that start with
# "import": this one imports the hook only when the variable is set.
PTH_NAME = "zz_kongops_lab_zipcache.pth"
PTH_LINE = f"import os; os.environ.get({ENV!r}) and __import__('kongops_lab_zipcache').enable()\n"


def _trusted(directory: str) -> bool:
    try:
        info = os.stat(directory)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def enable() -> None:
    directory = os.environ.get(ENV, "")
    if not directory or getattr(zipimport, "_kongops_lab_cached", False):
        return
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return
    if not _trusted(directory):
        return
    compile_source = zipimport._compile_source  # pylint: disable=protected-access
    # Bytecode of another Python version or optimization level must not be read back.
    tag = f"{sys.implementation.cache_tag}.opt{sys.flags.optimize}"

    def cached_compile(pathname: str, source: bytes) -> object:
        key = hashlib.sha256(source).hexdigest()
        path = os.path.join(directory, f"{key}.{tag}")
        try:
            with open(path, "rb") as code_file:
                return marshal.load(code_file)
        except (OSError, EOFError, ValueError, TypeError):
            pass
        code = compile_source(pathname, source)
        partial = f"{path}.{os.getpid()}"
        try:
            with open(partial, "wb") as code_file:
                marshal.dump(code, code_file)
            os.replace(partial, path)  # whole or not at all, for the runs that read it at once
        except OSError:
            pass
        return code

    zipimport._compile_source = cached_compile  # pylint: disable=protected-access
    zipimport._kongops_lab_cached = True  # pylint: disable=protected-access


def install() -> Path:
    """Copy this file into the running Python's site-packages with its .pth (idempotent)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    target = purelib / "kongops_lab_zipcache.py"
    text = Path(__file__).read_text(encoding="utf-8")
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    pth = purelib / PTH_NAME
    if not pth.is_file() or pth.read_text(encoding="utf-8") != PTH_LINE:
        pth.write_text(PTH_LINE, encoding="utf-8")
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit(f"usage: {sys.argv[0]} install")
    install()
