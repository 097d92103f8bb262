#!/usr/bin/env bash
# Install the system packages the lab and the checks need when missing: PostgreSQL,
# HAProxy, NGINX, the shellcheck linter and, when the realkong kit is here
# ($KONG_LAB_REALKONG_KIT, default ../shared/realkong beside the checkout), what the
# kit needs to build and run real Kong (its apt-packages.txt).
# Debian 12; needs root for apt-get. Nothing is started here: the lab starts its own
# processes on loopback when it comes up.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || missing+=(postgresql)
command -v pg_dump > /dev/null || missing+=(postgresql-client)
command -v haproxy > /dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx > /dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v python3 > /dev/null || missing+=(python3 python3-venv)
python3 -c 'import ensurepip' 2> /dev/null || missing+=(python3-venv)
# ansible-test sanity runs its shellcheck test only when shellcheck is installed.
command -v shellcheck > /dev/null || missing+=(shellcheck)
repo=$(cd "$(dirname "$0")/../.." && pwd)
kit=${KONG_LAB_REALKONG_KIT:-$repo/../shared/realkong}
if [ -f "$kit/apt-packages.txt" ]; then
  while read -r pkg; do
    # Debian's Rust crates name features as virtual packages: librust-pest+default-dev is
    # provided by librust-pest-dev.
    real=$(sed -E 's/\+[^-]*-dev$/-dev/' <<< "$pkg")
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$real" 2> /dev/null)" = installed ] || missing+=("$pkg")
  done < <(sed 's/#.*//' "$kit/apt-packages.txt" | tr -s ' \t' '\n' | grep -v '^$')
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "Installing system packages: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "error: ${missing[*]} missing and not running as root; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
