#!/usr/bin/env bash
# `make demo`: bring up the lab (Kong 3.4.2 -> 3.9.1, three X and three Y nodes behind
# HAProxy), run the dual-cluster upgrade playbook under steady load, print the upgrade
# report and the load summary (failed requests included), and tear the lab down.
# Kong is real when it can be had (installed, or built once from the realkong kit), else
# the emulator; the demo says which it ran on.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
lab=tests/lab/lab
run_dir=${KONG_LAB_RUN_DIR:-$repo/tests/lab/run}
export PATH="$repo/.venv/bin:$PATH"
load_pid=
# Runs from the EXIT trap below, which shellcheck 0.9 cannot follow.
# shellcheck disable=SC2317
cleanup() {
  if [ -n "$load_pid" ] && kill -0 "$load_pid" 2> /dev/null; then kill -TERM "$load_pid"; wait "$load_pid" || true; fi
  "$lab" down > /dev/null
}
trap cleanup EXIT
inventory=$("$lab" up --x-version 3.4.2 --y-version 3.9.1 --x-nodes 3 --y-nodes 3 --lb haproxy | tail -n 1)
echo "lab up; inventory: $inventory"
kong_line=$("$lab" status | sed -n 's/^kong: //p')
echo "Kong: $kong_line"
"$lab" load --duration 600 --output "$run_dir/load.json" > "$run_dir/load.out" 2>&1 &
load_pid=$!
vars="$run_dir/demo-vars.yml"
cat > "$vars" <<VARS
kong_upgrade_backup_dir: $run_dir/backups
kong_upgrade_report_dir: $run_dir/reports
kong_upgrade_gate_min_requests: 200
kong_upgrade_gate_min_duration: 5
# 3.4 -> 3.9 skips minors: Kong documents 3.4 -> 3.10 (LTS to LTS), and 3.10 has no OSS
# release, so the newest real OSS target goes through the preflight's override.
kong_upgrade_allow_unsupported_path: true
VARS
rc=0
ansible-playbook -i "$inventory" playbooks/upgrade_dual_cluster.yml -e "@$vars" || rc=$?
kill -INT "$load_pid"
wait "$load_pid" || true
load_pid=
echo
echo "================ upgrade report ================"
cat "$run_dir"/reports/*.md 2> /dev/null || echo "(no report written)"
echo
echo "================ traffic through the load balancer during the upgrade ================"
cat "$run_dir/load.out"
echo
echo "ran on Kong: $kong_line"
exit $rc
