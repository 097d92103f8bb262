#!/usr/bin/env bash
# Install the system packages the lab and the checks need when missing: PostgreSQL,
# HAProxy, NGINX and the shellcheck linter.
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
