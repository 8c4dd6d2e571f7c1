#!/usr/bin/env bash
# Stop the daemons tests/slurm/start-slurm.sh started (by the PIDs it recorded), newest first. Nothing else.
set -uo pipefail
STATE=${SLURM_TEST_DIR:-/tmp/captioner-slurm}
stopped() { [ ! -d /proc/$1 ] || grep -q '^State:.*Z' /proc/$1/status 2>/dev/null; }
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
    pidfile=$STATE/pids/$daemon.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if ! stopped "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do stopped "$pid" && break; sleep 0.1; done
        stopped "$pid" || kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
done
echo "stop-slurm: stopped" >&2
