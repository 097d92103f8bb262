#!/usr/bin/env bash
# Run `ansible-test sanity` (no ignore files) on this checkout.
#
# ansible-test must run from a directory whose path ends in
# ansible_collections/<namespace>/<name>, and it bootstraps pip in its virtual
# environments with a script it would download from the internet; both are
# arranged here, so this works on a machine that reaches only package registries.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${VENV:-$repo/.venv}
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
mkdir -p "$work/ansible_collections/kongops"
ln -s "$repo" "$work/ansible_collections/kongops/upgrade"
cd "$work/ansible_collections/kongops/upgrade"
export PATH="$venv/bin:$PATH"
ansible-test sanity --venv --python 3.11 --color no "$@"
