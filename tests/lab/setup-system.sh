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
command -v prometheus > /dev/null || missing+=(prometheus)
command -v python3 > /dev/null || missing+=(python3 python3-venv)
python3 -c 'import ensurepip' 2> /dev/null || missing+=(python3-venv)
# `lab up --connection ssh`: the lab's own sshd, and sudo for the load balancer's host.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh > /dev/null || missing+=(openssh-client)
command -v sudo > /dev/null || missing+=(sudo)
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
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing system packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing and not running as root; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # No package starts a service of its own (openssh-server's sshd): the lab starts what it needs.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

# The user `lab up --connection ssh` logs in as and runs Kong as: unprivileged, no password
# (the lab sshd takes only the lab's key), a home for Ansible's temporary files. Its sudo rule
# is for the lab only (the LB host becomes root; the package method installs Kong): a
# production account that only runs Kong's CLI needs no sudo.
if ! getent passwd kong > /dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: the lab user kong is missing and not running as root; run this script with sudo" >&2
    exit 1
  fi
  echo "Creating the lab user kong"
  useradd --system --user-group --create-home --home-dir /home/kong --shell /bin/bash kong
fi
if [ "$(id -u)" -eq 0 ] && [ ! -f /etc/sudoers.d/kongops-lab ]; then
  tmp=$(mktemp)
  printf '# kongops lab only (tests/lab/setup-system.sh): the user of lab up --connection ssh\nkong ALL=(root) NOPASSWD: ALL\n' > "$tmp"
  visudo -cqf "$tmp"
  install -m 0440 -o root -g root "$tmp" /etc/sudoers.d/kongops-lab
  rm -f "$tmp"
fi
