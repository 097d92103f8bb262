#!/usr/bin/env bash
# Run `ansible-test sanity` (no ignore files) on this checkout.
#
# ansible-test must run from a directory whose real path ends in
# ansible_collections/<namespace>/<name> (it resolves symlinks), so the files git
# tracks or would track are copied into such a directory. It also bootstraps pip in
# its virtual environments with a script it would download from the internet; a
# local stand-in is put in its cache, so this works with only package registries.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=$(cd "$repo" && realpath -m "${VENV:-.venv}")
pip_version=$("$venv/bin/python" - <<'PY'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
PY
)
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
install -m 0644 "$repo/tests/sanity/pip_bootstrap.py" "$cache/get_pip_${pip_version//./_}.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/kongops/upgrade"
mkdir -p "$dest"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp -P --parents -t "$dest")
cd "$dest"
export PATH="$venv/bin:$PATH"
ansible-test sanity --venv --python 3.11 --color no "$@"
