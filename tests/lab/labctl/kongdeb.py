"""Kong as a Debian package, served from a local apt repository (``lab up --y-install package``).

The collection's ``kong_upgrade_install_method: package`` installs Y with apt, pinned to Y's
version, and checks the binary says Y. To run it for real, the lab packages real Kong the way
Kong's own ``.deb`` lays it out and serves it from a ``file:`` apt source on this machine:

- ``/usr/local/bin/kong`` (the command), OpenResty in ``/usr/local/openresty``, Kong's Lua tree
  and ``kong.conf.default`` under ``/usr/local/kong``, ``/etc/kong/kong.conf.default``, and a
  systemd unit ``/lib/systemd/system/kong.service`` (systemd does not run on the lab machine:
  the unit is shipped, never started here);
- package ``kong``, version exactly Kong's (``3.9.1``), so ``apt-get install kong=3.9.1`` pins it;
- a postinst that creates the ``kong`` system user when it is missing, as Kong's packages do.

The realkong kit's builds are not relocatable (nginx's prefix and LuaJIT's default paths are
compiled in), so the package is built by the kit for ``/usr/local`` itself, inside a private
mount namespace where a staging directory is bind-mounted on ``/usr/local``: this machine's
``/usr/local`` is not touched until apt installs the package. That needs root. Each package is
made once per version and kit (keyed by the kit hash, like the builds) into the real-Kong cache.

Differences from Kong's package: Kong's Lua tree is in ``/usr/local/kong/kong`` (the kit's
layout) rather than ``/usr/local/share/lua/5.1``, the runtime libraries come from Debian
packages the kit installs (``make setup``) and are not declared as dependencies, and the
realkong kit's own deviations apply (its README, "Deviations").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import LabError
from .proc import run
from .realkong import BUILD_TIMEOUT, RealKongMissing, _locked, _plain_env, _say, cache_dir, kit_hash, kit_versions

PACKAGE = "kong"
PACKAGE_ROOT = Path("/usr/local")
PACKAGE_KONG = PACKAGE_ROOT / "bin" / "kong"
SOURCES_DIR = Path("/etc/apt/sources.list.d")
LISTS_DIR = Path("/var/lib/apt/lists")

UNIT = """\
# systemd unit of the kongops lab's Kong package (what Kong's packages ship; never started on
# the lab machine, which runs no systemd). Kong's default prefix, its CLI, a graceful quit.
[Unit]
Description=Kong Gateway
After=network-online.target remote-fs.target nss-lookup.target
Wants=network-online.target

[Service]
Type=forking
PIDFile=/usr/local/kong/pids/nginx.pid
ExecStart=/usr/local/bin/kong start -p /usr/local/kong
ExecReload=/usr/local/bin/kong reload -p /usr/local/kong
ExecStop=/usr/local/bin/kong quit -p /usr/local/kong
LimitNOFILE=16384
PrivateTmp=true

[Install]
WantedBy=multi-user.target
"""

POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  getent group kong > /dev/null || groupadd --system kong
  getent passwd kong > /dev/null || useradd --system --gid kong --home-dir /usr/local/kong --no-create-home --shell /bin/sh kong
  mkdir -p /usr/local/kong
fi
exit 0
"""


def deb_path(version: str, kit: Path, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "debs" / kit_hash(kit) / f"{PACKAGE}_{version}_amd64.deb"


def installed_package() -> str | None:
    """The version of the ``kong`` package dpkg has installed, or None."""
    res = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", PACKAGE],
                         capture_output=True, text=True, check=False)
    status, _sep, version = res.stdout.strip().partition(" ")
    return version if res.returncode == 0 and status == "installed" else None


def build_deb(version: str, kit: Path, cache: Path | None = None) -> Path:
    """The lab's ``kong`` package of ``version``, made once from the kit (about as long as a build)."""
    if version not in kit_versions(kit):
        raise RealKongMissing(f"the realkong kit at {kit} cannot build Kong {version}, so it cannot be packaged")
    out = deb_path(version, kit, cache)
    if out.is_file():
        return out
    if os.geteuid() != 0:
        raise LabError("making the lab's Kong package needs root: the kit builds it for /usr/local inside a "
                       "private mount namespace (unshare), so that this machine's /usr/local stays untouched")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent / f".{out.name}.lock", f"the Kong {version} package", BUILD_TIMEOUT):
        if out.is_file():
            return out
        work = out.parent / f".{out.name}.work"
        if work.exists():
            shutil.rmtree(work)
        stage, root = work / "usr-local", work / "root"
        stage.mkdir(parents=True)
        log = out.parent / f"{out.name}.build.log"
        _say(f"packaging real Kong {version}: building it for {PACKAGE_ROOT} from {kit} (1 to 4 minutes; log {log})")
        env = _plain_env()
        env["REALKONG_JOBS"] = str(os.cpu_count() or 2)
        started = time.monotonic()
        script = 'mount --bind "$1" /usr/local && exec bash "$2" "$3" /usr/local'
        with open(log, "w", encoding="utf-8") as fh:
            res = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                                  str(stage), str(kit / "build.sh"), version],
                                 stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 check=False, timeout=BUILD_TIMEOUT)
        if res.returncode != 0 or not (stage / "bin" / "kong").is_file():
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
            shutil.rmtree(work, ignore_errors=True)
            raise LabError(f"building Kong {version} for its package failed (exit {res.returncode}); last lines "
                           f"of {log}:\n{tail}")
        (root / "usr").mkdir(parents=True)
        stage.rename(root / "usr" / "local")
        (root / "etc" / "kong").mkdir(parents=True)
        shutil.copyfile(root / "usr/local/kong/kong.conf.default", root / "etc/kong/kong.conf.default")
        (root / "lib/systemd/system").mkdir(parents=True)
        (root / "lib/systemd/system/kong.service").write_text(UNIT, encoding="utf-8")
        debian = root / "DEBIAN"
        debian.mkdir()
        size_kb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink()) // 1024
        (debian / "control").write_text(
            f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: amd64\nSection: net\nPriority: optional\n"
            f"Maintainer: kongops lab <lab@kongops.invalid>\nInstalled-Size: {size_kb}\n"
            f"Description: Kong Gateway OSS {version}, packaged by the kongops lab\n"
            " Real Kong built from the realkong kit for /usr/local, in the layout of Kong's\n"
            " packages, for the lab's package-install tests only. Its runtime libraries come\n"
            " from the Debian packages the kit installs.\n", encoding="utf-8")
        (debian / "postinst").write_text(POSTINST, encoding="utf-8")
        os.chmod(debian / "postinst", 0o755)
        tmp = out.with_suffix(".deb.tmp")
        run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(tmp)],
            what=f"dpkg-deb (Kong {version})", timeout=900)
        tmp.replace(out)
        shutil.rmtree(work, ignore_errors=True)
        _say(f"packaged real Kong {version} in {time.monotonic() - started:.0f}s: {out}")
        return out


@dataclass
class AptRepo:
    """A flat ``file:`` apt repository under the run directory, trusted by its sources entry."""

    base: Path  # run/apt
    name: str  # the sources.list.d entry: kongops-lab-<net>

    @property
    def sources_file(self) -> Path:
        return SOURCES_DIR / f"{self.name}.list"

    @property
    def line(self) -> str:
        return f"deb [trusted=yes] file:{self.base} ./\n"

    def create(self, debs: list[Path]) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        for deb in debs:
            shutil.copyfile(deb, self.base / deb.name)
            os.chmod(self.base / deb.name, 0o644)
        packages = run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], what="dpkg-scanpackages",
                       cwd=self.base, timeout=300).stdout
        (self.base / "Packages").write_text(packages, encoding="utf-8")
        digest = hashlib.sha256(packages.encode()).hexdigest()
        (self.base / "Release").write_text(
            "Origin: kongops-lab\nLabel: kongops-lab\nSuite: lab\nCodename: lab\nArchitectures: amd64\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\n"
            f"SHA256:\n {digest} {len(packages.encode())} Packages\n", encoding="utf-8")
        self.sources_file.write_text(self.line, encoding="utf-8")

    def remove(self) -> None:
        self.sources_file.unlink(missing_ok=True)
        # apt names a source's downloaded lists after its URI: file:/tmp/x/apt -> _tmp_x_apt_...
        mangled = str(self.base).strip("/").replace("/", "_")
        for path in LISTS_DIR.glob(f"*{mangled}*"):
            path.unlink(missing_ok=True)


def other_lab_repos(own: str) -> list[Path]:
    """Sources entries of other labs' repositories (a second lab with the package method)."""
    return [p for p in SOURCES_DIR.glob("kongops-lab-*.list") if p.stem != own]
