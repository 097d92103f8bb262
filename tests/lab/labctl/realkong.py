"""Real Kong for the lab: where a ``kong`` of a given version comes from.

Sources, in this order (the first that has the version wins):

1. an installed Kong the user points at: ``--kong-install DIR`` (``lab up``, repeatable)
   or ``$KONG_LAB_KONG_INSTALL`` (directories separated by ``:``), or one variable per
   version, ``$KONG_LAB_KONG_<X>_<Y>_<Z>`` (``KONG_LAB_KONG_3_9_1=/usr/local``). A
   directory is in the layout of Kong's official packages: ``DIR/bin/kong`` runs Kong,
   with OpenResty and Kong's Lua tree wherever that package put them. Its version is
   what ``DIR/bin/kong version`` prints;
2. a build from the realkong kit (``$KONG_LAB_REALKONG_KIT``, default
   ``<repo>/../shared/realkong``) into a cache outside the checkout
   (``$KONG_LAB_REAL_KONG_CACHE``; default ``${XDG_CACHE_HOME:-~/.cache}/kongops/real-kong``,
   or ``/var/cache/kongops/real-kong`` for root, whose home nginx's unprivileged workers
   cannot enter). Each build lives in ``<cache>/<version>-<kit hash>`` (the kit's builds
   are not relocatable, so they are built where they run), is made once under a lock
   (two pytest workers asking at once build it once) and is complete only once its
   ``.kongops-build.json`` marker exists. The kit directory is only read;
3. none: :func:`resolve` raises :class:`RealKongMissing` with the reason and what to
   install.

The lab never writes into an installed Kong or into the kit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import LabError
from .paths import REPO_ROOT

PROVIDERS = ("real", "emulated")
MARKER = ".kongops-build.json"
BUILD_TIMEOUT = 3600.0  # one build takes 1 to 4 minutes on 2 cores; a waiting worker gives up after this
_VERSION_RE = re.compile(r"\b(\d+)\.(\d+)\.(\d+)\b")


class RealKongMissing(LabError):
    """Real Kong of a version cannot be had here; the message says why and what to do."""


@dataclass(frozen=True)
class RealKong:
    """A usable real Kong: its ``bin/kong`` and where it came from."""

    version: str
    executable: Path
    source: str  # "installed" or "build"
    root: Path

    def describe(self) -> str:
        what = "installed Kong" if self.source == "installed" else "real Kong built from the kit"
        return f"{what} {self.version} at {self.root}"


# --------------------------------------------------------------------------- installed Kong


def version_env_var(version: str) -> str:
    return "KONG_LAB_KONG_" + version.replace(".", "_")


def installed_version(root: Path, timeout: float = 60.0) -> str:
    """The X.Y.Z that ``<root>/bin/kong version`` prints (an installed Kong's own word)."""
    exe = root / "bin" / "kong"
    if not os.access(exe, os.X_OK):
        raise LabError(f"{root} is not a Kong installation: {exe} is missing or not executable")
    try:
        res = subprocess.run([str(exe), "version"], capture_output=True, text=True, timeout=timeout,
                             check=False, stdin=subprocess.DEVNULL, env=_plain_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"`{exe} version` did not run: {exc}") from exc
    match = _VERSION_RE.search(res.stdout)
    if res.returncode != 0 or match is None:
        raise LabError(f"`{exe} version` exited {res.returncode} without a version "
                       f"(stdout {res.stdout.strip()!r}, stderr {res.stderr.strip()[-300:]!r})")
    return ".".join(match.groups())


def _install_dirs(extra: Sequence[str | Path], env: Mapping[str, str]) -> list[Path]:
    dirs = [Path(d) for d in extra]
    dirs += [Path(d) for d in env.get("KONG_LAB_KONG_INSTALL", "").split(":") if d]
    return dirs


def find_installed(version: str, install_dirs: Sequence[str | Path] = (),
                   env: Mapping[str, str] | None = None) -> RealKong | None:
    env = os.environ if env is None else env
    pinned = env.get(version_env_var(version))
    if pinned:
        root = Path(pinned).resolve()
        got = installed_version(root)
        if got != version:
            raise LabError(f"{version_env_var(version)}={pinned} is Kong {got}, not {version}")
        return RealKong(version, root / "bin" / "kong", "installed", root)
    for d in _install_dirs(install_dirs, env):
        root = d.resolve()
        if installed_version(root) == version:
            return RealKong(version, root / "bin" / "kong", "installed", root)
    return None


def installed_versions(install_dirs: Sequence[str | Path] = (),
                       env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Every installed Kong named by ``--kong-install``/the environment: version -> root."""
    env = os.environ if env is None else env
    found: dict[str, Path] = {}
    for d in _install_dirs(install_dirs, env):
        found.setdefault(installed_version(d.resolve()), d.resolve())
    for key, value in env.items():
        if key.startswith("KONG_LAB_KONG_") and key[14:].replace("_", "").isdigit() and value:
            found.setdefault(key[14:].replace("_", "."), Path(value).resolve())
    return found


# --------------------------------------------------------------------------- the kit


def kit_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The realkong kit, or None when there is none here."""
    env = os.environ if env is None else env
    configured = env.get("KONG_LAB_REALKONG_KIT")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "realkong"
    return path.resolve() if (path / "build.sh").is_file() else None


def kit_versions(kit: Path) -> list[str]:
    """Kong versions whose release tarball the kit holds (``sources/Kong+kong@X.Y.Z.tar.gz``)."""
    found = []
    for entry in (kit / "sources").glob("Kong+kong@*.tar.gz"):
        version = entry.name[len("Kong+kong@"):-len(".tar.gz")]
        if _VERSION_RE.fullmatch(version):
            found.append(version)
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def kit_hash(kit: Path) -> str:
    """12 hex digits naming the kit's contents (build.sh, the package list, every source)."""
    digest = hashlib.sha256()
    files = ["build.sh", "apt-packages.txt"] + [f"sources/{n}" for n in sorted(os.listdir(kit / "sources"))]
    for rel in files:
        path = kit / rel
        if not path.is_file():
            continue
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()[:12]


def kit_packages(kit: Path) -> list[str]:
    """The Debian packages the kit's build and its results need (apt-packages.txt)."""
    try:
        text = (kit / "apt-packages.txt").read_text(encoding="utf-8")
    except OSError:
        return []
    return [word for line in text.splitlines() for word in line.split("#", 1)[0].split()]


def _real_package(name: str) -> str:
    """The package that provides ``name``: Debian's Rust crates name features as virtual
    packages (``librust-pest+default-dev`` is provided by ``librust-pest-dev``)."""
    return re.sub(r"\+[^-]*-dev$", "-dev", name.split(":")[0])


def missing_packages(packages: Sequence[str]) -> list[str]:
    """Packages of ``packages`` that dpkg does not report as installed."""
    if not packages or shutil.which("dpkg-query") is None:
        return []
    real = {p: _real_package(p) for p in packages}
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *sorted(set(real.values()))],
                         capture_output=True, text=True, check=False)
    installed = {line.split()[0].split(":")[0] for line in res.stdout.splitlines()
                 if line.endswith(" installed")}
    return [p for p in packages if real[p] not in installed]


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    configured = env.get("KONG_LAB_REAL_KONG_CACHE")
    if configured:
        return Path(configured).resolve()
    if os.geteuid() == 0:
        return Path("/var/cache/kongops/real-kong")
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).resolve() / "kongops" / "real-kong"


def build_dir(version: str, kit: Path, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / f"{version}-{kit_hash(kit)}"


def unreadable_for_workers(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others cannot enter, or None.

    nginx started as root runs its workers as an unprivileged user (``nobody``), and a
    worker that cannot read Kong's Lua tree or the node's prefix exits at once while
    ``kong start`` still says ``Kong started``; the lab refuses such places up front.
    """
    if os.geteuid() != 0:
        return None
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & stat.S_IXOTH:
            return part
    return None


@contextlib.contextmanager
def _locked(lock_file: Path, what: str, timeout: float) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    _say(f"waiting for another process building {what} (lock {lock_file})")
                    told = True
                if time.monotonic() >= deadline:
                    raise LabError(f"gave up after {timeout:.0f}s waiting for the build of {what} "
                                   f"(lock {lock_file} is held)") from None
                time.sleep(1.0)
        yield
    finally:
        os.close(fd)


def _say(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _plain_env() -> dict[str, str]:
    """The environment without KONG_* settings (they would change what Kong does)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KONG_")}


def read_marker(prefix: Path) -> dict[str, object] | None:
    try:
        return json.loads((prefix / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build(version: str, kit: Path, cache: Path | None = None, jobs: int | None = None) -> RealKong:
    """Real Kong ``version`` from the kit, built into the cache unless it is there already."""
    if version not in kit_versions(kit):
        raise RealKongMissing(f"the realkong kit at {kit} cannot build Kong {version} "
                              f"(it builds {', '.join(kit_versions(kit))})")
    cache = cache or cache_dir()
    prefix = build_dir(version, kit, cache)
    bad = unreadable_for_workers(cache)
    if bad is not None:
        raise RealKongMissing(f"the real Kong cache {cache} is under {bad}, which nginx's unprivileged "
                              "workers cannot enter; set KONG_LAB_REAL_KONG_CACHE to a directory others "
                              "can traverse (o+x)")
    if read_marker(prefix) is not None:
        return RealKong(version, prefix / "bin" / "kong", "build", prefix)
    missing = missing_packages(kit_packages(kit))
    if missing:
        raise RealKongMissing(f"building real Kong {version} needs Debian packages that are not installed: "
                              f"{' '.join(missing)}; run `sudo {kit / 'install-deps.sh'}` "
                              "(or `make setup`, which installs them)")
    with _locked(cache / f".{prefix.name}.lock", f"Kong {version}", BUILD_TIMEOUT):
        if read_marker(prefix) is not None:  # another process built it while we waited
            return RealKong(version, prefix / "bin" / "kong", "build", prefix)
        if prefix.exists():
            _say(f"removing an incomplete build of Kong {version} at {prefix}")
            shutil.rmtree(prefix)
        log = cache / f"{prefix.name}.build.log"
        _say(f"building real Kong {version} from {kit} into {prefix} (1 to 4 minutes; log {log})")
        env = _plain_env()
        env["REALKONG_JOBS"] = str(jobs or os.cpu_count() or 2)
        started = time.monotonic()
        with open(log, "w", encoding="utf-8") as out:
            res = subprocess.run(["bash", str(kit / "build.sh"), version, str(prefix)], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 check=False, timeout=BUILD_TIMEOUT)
        seconds = time.monotonic() - started
        if res.returncode != 0 or not os.access(prefix / "bin" / "kong", os.X_OK):
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
            raise LabError(f"building real Kong {version} failed (exit {res.returncode}) after {seconds:.0f}s; "
                           f"last lines of {log}:\n{tail}")
        marker = {"version": version, "kit": str(kit), "kit_hash": kit_hash(kit),
                  "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "seconds": round(seconds, 1)}
        tmp = prefix / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        tmp.replace(prefix / MARKER)
        _say(f"built real Kong {version} in {seconds:.0f}s")
        return RealKong(version, prefix / "bin" / "kong", "build", prefix)


# --------------------------------------------------------------------------- resolve


def resolve(version: str, install_dirs: Sequence[str | Path] = (), build_missing: bool = True,
            env: Mapping[str, str] | None = None) -> RealKong:
    """Real Kong ``version``: installed, else built (or found built) from the kit."""
    found = find_installed(version, install_dirs, env)
    if found is not None:
        return found
    ok, why = available(version, install_dirs, env)
    if not ok:
        raise RealKongMissing(why)
    kit = kit_dir(env)
    assert kit is not None  # available() said it is built or buildable from the kit
    if not build_missing and why != "built":
        raise RealKongMissing(f"real Kong {version} is not built yet ({build_dir(version, kit)}); "
                              "`tests/lab/lab kong build` builds it")
    return build(version, kit)


def available(version: str, install_dirs: Sequence[str | Path] = (),
              env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether real Kong ``version`` can be had (installed, built, or buildable): (True, how) or
    (False, why not and what to do)."""
    try:
        if find_installed(version, install_dirs, env) is not None:
            return True, "installed"
    except LabError as exc:
        return False, str(exc)
    kit = kit_dir(env)
    if kit is None:
        return False, (
            f"no real Kong {version}: none is installed where the lab looks (--kong-install DIR, "
            f"${version_env_var(version)} or $KONG_LAB_KONG_INSTALL naming a directory with bin/kong "
            "from Kong's packages) and there is no realkong kit to build it from "
            "($KONG_LAB_REALKONG_KIT, default ../shared/realkong beside the checkout); install Kong "
            f"{version} and point the lab at it, or run with --kong emulated")
    if version not in kit_versions(kit):
        return False, (f"no real Kong {version}: it is not installed, and the realkong kit at {kit} "
                       f"builds only {', '.join(kit_versions(kit))}")
    if read_marker(build_dir(version, kit)) is not None:
        return True, "built"
    missing = missing_packages(kit_packages(kit))
    if missing:
        return False, (f"no real Kong {version}: building it needs Debian packages that are not installed: "
                       f"{' '.join(missing)}; run `sudo {kit / 'install-deps.sh'}` (or `make setup`)")
    return True, "buildable"


__all__ = ["PROVIDERS", "RealKong", "RealKongMissing", "available", "build", "cache_dir", "find_installed",
           "installed_versions", "kit_dir", "kit_hash", "kit_versions", "resolve", "unreadable_for_workers"]
