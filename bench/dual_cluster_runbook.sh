#!/usr/bin/env bash
# A dual-cluster Kong upgrade as a shell runbook: the commands an operator would type for Kong's
# dual-cluster procedure, with none of the collection's checks (no freeze, no verification of the
# backup, no smoke tests, no gates, no report, no rollback). bench/dual_cluster.py runs it beside
# playbooks/upgrade_dual_cluster.yml on the same lab, with the same traffic steps and the same dwell
# per step, to measure what the collection costs on top of the work itself.
#
# Everything comes from the environment (bench/dual_cluster.py sets it from the lab's inventory):
#   PGHOST PGPORT PGUSER PGPASSFILE  the database server (the password only in PGPASSFILE)
#   X_DB Y_DB                        X's database and the one to create for Y
#   X_CONF                           an X node's kong.conf (Y's are made from it)
#   Y_KONG                           Y's kong executable
#   X_NODES                          "name:kong:prefix ..." of the X nodes
#   Y_NODES                          "name:prefix:conf:proxy_listen:admin_listen:status_listen ..." of the Y nodes
#   HAPROXY_ADMIN BACKEND            HAProxy's runtime API (host:port) and the backend of the Kong servers
#   STEPS DWELL WORK_DIR             traffic steps on Y (percent), seconds at each, a private directory
set -euo pipefail

say() { printf '%s runbook: %s\n' "$(date +%T)" "$*"; }

haproxy() {  # one runtime API command, its answer on stdout
    local host=${HAPROXY_ADMIN%:*} port=${HAPROXY_ADMIN#*:}
    exec 3<>"/dev/tcp/$host/$port"
    printf '%s\n' "$1" >&3
    cat <&3
    exec 3<&-
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        if ((SECONDS > deadline)); then say "gave up waiting for $what"; exit 1; fi
        sleep 0.2
    done
}

server_up() { haproxy "show stat" | awk -F, -v b="$BACKEND" -v s="$1" '$1 == b && $2 == s {print $18}' | grep -qx UP; }
no_sessions() { [ "$(haproxy "show stat" | awk -F, -v b="$BACKEND" -v s="$1" '$1 == b && $2 == s {print $5}')" = 0 ]; }
ready() { curl -fsS -o /dev/null "http://$1/status/ready"; }

say "1. back up X's database"
pg_dump -Fc -d "$X_DB" -f "$WORK_DIR/x.dump"

say "2. create Y's database and restore the backup into it"
createdb "$Y_DB"
pg_restore --no-owner --exit-on-error -d "$Y_DB" "$WORK_DIR/x.dump"

say "3. write Y's kong.conf and run the migrations on Y's database"
for node in $Y_NODES; do
    IFS=: read -r name prefix conf proxy_host proxy_port admin_host admin_port status_host status_port <<<"$node"
    mkdir -p "$(dirname "$conf")"
    sed -e "s|^prefix = .*|prefix = $prefix|" \
        -e "s|^proxy_listen = .*|proxy_listen = $proxy_host:$proxy_port|" \
        -e "s|^admin_listen = .*|admin_listen = $admin_host:$admin_port|" \
        -e "s|^status_listen = .*|status_listen = $status_host:$status_port|" \
        -e "s|^pg_database = .*|pg_database = $Y_DB|" "$X_CONF" >"$conf"
    chmod 600 "$conf"
done
first_conf=$(echo "$Y_NODES" | awk '{print $1}' | cut -d: -f3)
"$Y_KONG" migrations up -c "$first_conf"
"$Y_KONG" migrations finish -c "$first_conf"

say "4. start the Y nodes"
for node in $Y_NODES; do
    IFS=: read -r name prefix conf _ _ _ _ status_host status_port <<<"$node"
    "$Y_KONG" start -c "$conf" >/dev/null
done
for node in $Y_NODES; do
    IFS=: read -r name _ _ _ _ _ _ status_host status_port <<<"$node"
    wait_for 60 "$name ready" ready "$status_host:$status_port"
    wait_for 60 "HAProxy to see $name up" server_up "$name"
done

say "5. shift traffic to Y: $STEPS, $DWELL s each"
for step in $STEPS; do
    for node in $Y_NODES; do haproxy "set server $BACKEND/${node%%:*} weight $step" >/dev/null; done
    for node in $X_NODES; do haproxy "set server $BACKEND/${node%%:*} weight $((100 - step))" >/dev/null; done
    sleep "$DWELL"
done

say "6. retire X: wait for its servers to drain, stop its nodes"
for node in $X_NODES; do
    wait_for 60 "${node%%:*} to drain" no_sessions "${node%%:*}"
done
for node in $X_NODES; do
    IFS=: read -r name kong prefix <<<"$node"
    "$kong" quit -p "$prefix" >/dev/null
done
say "done"
