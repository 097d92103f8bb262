"""The real-Kong provider (labctl.realkong) with a fake kit and fake installed Kongs.

No real build runs here: the fake kit's build.sh writes a ``bin/kong`` that prints its
version, which is all the provider looks at. What real Kong does is proven by the tests that
run it (test_lab_haproxy, test_lab_nginx, test_lab_modes, the conformance suite, e2e).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl import LabError, realkong

FAKE_BUILD = """#!/bin/bash
# fake realkong build.sh: <version> <prefix>; counts its runs, fails when told to
set -eu
echo "build $1" >> "$(dirname "$0")/builds.log"
[ -e "$(dirname "$0")/fail" ] && { echo "BUILD FAILED ($1): told to" >&2; exit 1; }
sleep "${FAKE_BUILD_SECONDS:-0}"
mkdir -p "$2/bin"
printf '#!/bin/sh\\necho %s\\n' "$1" > "$2/bin/kong"
chmod 755 "$2/bin/kong"
"""


@pytest.fixture()
def kit(tmp_path: Path) -> Path:
    kit = tmp_path / "kit"
    (kit / "sources").mkdir(parents=True)
    for version in ("3.4.2", "3.9.1"):
        (kit / "sources" / f"Kong+kong@{version}.tar.gz").write_bytes(version.encode())
    (kit / "sources" / "nginx+nginx@release-1.25.3.tar.gz").write_bytes(b"nginx")
    (kit / "build.sh").write_text(FAKE_BUILD)
    (kit / "build.sh").chmod(0o755)
    (kit / "apt-packages.txt").write_text("# nothing the test machine lacks\nbash  # the shell\n")
    return kit


@pytest.fixture()
def env(kit: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    # pytest's base temp is 0700, which the provider refuses for a cache (nginx's workers, as
    # nobody, could not read a build there): the cache goes to a directory of its own others can enter.
    open_dir = Path(tempfile.mkdtemp(prefix="kongops-realkong-test-"))
    open_dir.chmod(0o755)
    values = {"KONG_LAB_REALKONG_KIT": str(kit), "KONG_LAB_REAL_KONG_CACHE": str(open_dir / "cache")}
    for key in list(os.environ):
        if key.startswith("KONG_LAB_KONG_"):
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield values
    shutil.rmtree(open_dir, ignore_errors=True)


def installed(root: Path, version: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "kong").write_text(f"#!/bin/sh\n[ \"$1\" = version ] && echo {version}\n")
    (root / "bin" / "kong").chmod(0o755)
    return root


def test_kit_versions_and_a_hash_that_changes_with_any_source(kit: Path) -> None:
    assert realkong.kit_versions(kit) == ["3.4.2", "3.9.1"]
    before = realkong.kit_hash(kit)
    assert len(before) == 12 and before == realkong.kit_hash(kit)
    (kit / "sources" / "nginx+nginx@release-1.25.3.tar.gz").write_bytes(b"patched nginx")
    assert realkong.kit_hash(kit) != before


def test_build_once_then_reuse_the_marked_build(kit: Path, env: dict[str, str]) -> None:
    ok, how = realkong.available("3.9.1")
    assert ok and how == "buildable"
    first = realkong.resolve("3.9.1")
    assert first.source == "build"
    assert first.root == Path(env["KONG_LAB_REAL_KONG_CACHE"]) / f"3.9.1-{realkong.kit_hash(kit)}"
    assert subprocess.run([str(first.executable)], capture_output=True, text=True, check=True).stdout.strip() == "3.9.1"
    marker = json.loads((first.root / realkong.MARKER).read_text())
    assert marker["version"] == "3.9.1" and marker["kit_hash"] == realkong.kit_hash(kit)
    assert realkong.available("3.9.1") == (True, "built")
    again = realkong.resolve("3.9.1")
    assert again == first
    assert (kit / "builds.log").read_text().splitlines() == ["build 3.9.1"]


def test_an_unmarked_build_is_removed_and_built_again(kit: Path, env: dict[str, str]) -> None:
    prefix = realkong.build_dir("3.4.2", kit)
    (prefix / "half").mkdir(parents=True)  # a build cut off before its marker
    found = realkong.resolve("3.4.2")
    assert not (prefix / "half").exists() and (prefix / realkong.MARKER).is_file()
    assert found.root == prefix


def test_two_processes_asking_at_once_build_once(kit: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_BUILD_SECONDS", "1")
    results: list[realkong.RealKong] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            results.append(realkong.resolve("3.9.1"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _asker in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(results) == 3 and len({r.root for r in results}) == 1
    assert (kit / "builds.log").read_text().splitlines() == ["build 3.9.1"]


def test_a_failed_build_says_why_and_leaves_no_marker(kit: Path, env: dict[str, str]) -> None:
    (kit / "fail").write_text("")
    with pytest.raises(LabError, match=r"(?s)building real Kong 3\.9\.1 failed \(exit 1\).*told to"):
        realkong.resolve("3.9.1")
    assert realkong.read_marker(realkong.build_dir("3.9.1", kit)) is None


def test_an_installed_kong_wins_over_the_kit_for_its_version(tmp_path: Path, kit: Path, env: dict[str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = installed(tmp_path / "usr-local", "3.9.1")
    found = realkong.resolve("3.9.1", install_dirs=[root])
    assert found.source == "installed" and found.executable == root / "bin" / "kong"
    assert realkong.resolve("3.4.2", install_dirs=[root]).source == "build"  # not that version: the kit
    monkeypatch.setenv("KONG_LAB_KONG_3_4_2", str(installed(tmp_path / "opt-342", "3.4.2")))
    assert realkong.resolve("3.4.2").source == "installed"
    assert realkong.installed_versions([root]) == {"3.9.1": root, "3.4.2": tmp_path / "opt-342"}
    assert (kit / "builds.log").read_text().splitlines() == ["build 3.4.2"]  # only before it was installed


def test_a_version_variable_naming_another_version_is_refused(tmp_path: Path, env: dict[str, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONG_LAB_KONG_3_9_1", str(installed(tmp_path / "k", "3.4.2")))
    with pytest.raises(LabError, match=r"KONG_LAB_KONG_3_9_1=.* is Kong 3\.4\.2, not 3\.9\.1"):
        realkong.resolve("3.9.1")


def test_missing_real_kong_names_what_to_install(tmp_path: Path, env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ok, why = realkong.available("3.10.0")
    assert not ok and "builds only 3.4.2, 3.9.1" in why
    monkeypatch.setenv("KONG_LAB_REALKONG_KIT", str(tmp_path / "nowhere"))
    ok, why = realkong.available("3.9.1")
    assert not ok
    assert "--kong-install DIR" in why and "KONG_LAB_KONG_3_9_1" in why and "--kong emulated" in why
    with pytest.raises(realkong.RealKongMissing, match="no real Kong 3.9.1"):
        realkong.resolve("3.9.1")


def test_missing_kit_packages_are_named_before_building(kit: Path, env: dict[str, str]) -> None:
    (kit / "apt-packages.txt").write_text("bash\nno-such-package-kongops  # missing\nlibrust-pest+default-dev\n")
    ok, why = realkong.available("3.9.1")
    assert not ok and "no-such-package-kongops" in why and "install-deps.sh" in why
    with pytest.raises(realkong.RealKongMissing, match="no-such-package-kongops"):
        realkong.resolve("3.9.1")
    assert not (kit / "builds.log").exists()


def test_virtual_rust_feature_packages_are_checked_by_their_provider() -> None:
    assert realkong._real_package("librust-pest+default-dev") == "librust-pest-dev"
    assert realkong._real_package("librust-pest-derive+default-dev") == "librust-pest-derive-dev"
    assert realkong._real_package("libssl-dev") == "libssl-dev"


@pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user nginx's workers run as that user")
def test_a_cache_others_cannot_enter_is_refused_as_root(kit: Path, env: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    closed = Path(env["KONG_LAB_REAL_KONG_CACHE"]).parent / "closed"
    closed.mkdir(mode=0o700)
    monkeypatch.setenv("KONG_LAB_REAL_KONG_CACHE", str(closed / "cache"))
    with pytest.raises(realkong.RealKongMissing, match="nginx's unprivileged workers cannot enter"):
        realkong.resolve("3.9.1")
    assert realkong.unreadable_for_workers(closed / "cache") == closed


def test_the_default_cache_is_outside_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KONG_LAB_REAL_KONG_CACHE", raising=False)
    cache = realkong.cache_dir()
    assert "kongops/real-kong" in str(cache)
    assert not str(cache).startswith(str(Path(__file__).resolve().parents[3]))
