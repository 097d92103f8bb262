"""The lab's Kong package (``labctl.kongdeb``): what apt installs for the package-method e2e test.

The package is made from the realkong kit (``make real-kong`` makes 3.9.1), so these tests need the
kit and root, like the e2e test that installs it: skipped without them, failed under CI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from labfixtures import require_kong_package

from labctl import kongdeb, realkong

VERSION = "3.9.1"


@pytest.fixture(scope="module")
def deb() -> Path:
    require_kong_package()
    kit = realkong.kit_dir()
    assert kit is not None
    return kongdeb.build_deb(VERSION, kit)


def test_the_package_is_kong_at_the_exact_version_in_the_layout_of_kongs_packages(deb: Path) -> None:
    fields = dict(line.split(": ", 1) for line in subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"], capture_output=True, text=True,
        check=True).stdout.splitlines())
    assert fields == {"Package": "kong", "Version": VERSION, "Architecture": "amd64"}
    files = {line.split()[-1].lstrip(".") for line in subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout.splitlines()}
    for path in ("/usr/local/bin/kong", "/usr/local/openresty/nginx/sbin/nginx", "/etc/kong/kong.conf.default",
                 "/lib/systemd/system/kong.service", "/usr/local/kong/kong.conf.default"):
        assert path in files, path
    unit = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    assert b"ExecStart=/usr/local/bin/kong start -p /usr/local/kong" in unit
    # Everything is root's in the package, as in Kong's (dpkg-deb --root-owner-group).
    owners = {tuple(line.split()[1].split("/")) for line in subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout.splitlines()}
    assert owners == {("root", "root")}


def test_the_repository_indexes_the_package_and_names_a_trusted_file_source(
        deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kongdeb, "SOURCES_DIR", tmp_path / "sources.list.d")
    (tmp_path / "sources.list.d").mkdir()
    repo = kongdeb.AptRepo(tmp_path / "apt", "kongops-lab-test")
    repo.create([deb])
    packages = (repo.base / "Packages").read_text()
    assert "Package: kong\n" in packages and f"Version: {VERSION}\n" in packages
    assert f"Filename: ./{deb.name}\n" in packages
    release = (repo.base / "Release").read_text()
    assert "SHA256:" in release and release.rstrip().endswith("Packages")
    assert repo.sources_file.read_text() == f"deb [trusted=yes] file:{repo.base} ./\n"
    repo.remove()
    assert not repo.sources_file.exists()
