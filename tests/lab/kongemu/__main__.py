"""`python -m kongemu install --root DIR VERSION...`: write `kong` launchers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import versions
from .install import install_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kongemu", description="Kong emulator utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install kong launchers for emulated versions")
    inst.add_argument("--root", required=True, type=Path, help="directory that receives versions/<v>/bin/kong")
    inst.add_argument("versions", nargs="*", help=f"versions (default: {' '.join(versions.EMULATED_VERSIONS)})")
    args = parser.parse_args(argv)
    for version in args.versions or versions.EMULATED_VERSIONS:
        try:
            path = install_version(version, args.root)
        except versions.UnknownVersion as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
