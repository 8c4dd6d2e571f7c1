#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this host for the tests: munge, MariaDB + slurmdbd (accounting, so that
# sacct works for the executor plugin's status checks), slurmctld and slurmd, with fake GPUs declared as GRES.
# Idempotent: when the cluster it started is still up it only says so. Needs root; installs the Debian packages
# when missing. Everything lives under $SLURM_TEST_DIR (default /tmp/captioner-slurm); stop-slurm.sh stops exactly
# the daemons recorded there.
set -euo pipefail

STATE=${SLURM_TEST_DIR:-/tmp/captioner-slurm}
GPUS=${SLURM_TEST_GPUS:-2}
PARTITION=${SLURM_TEST_PARTITION:-main}
CLUSTER=captioner-test
HOST=$(hostname -s)
log() { echo "start-slurm: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root (it installs packages and runs the SLURM daemons)"; exit 2; }

alive() {  # a recorded daemon is running (a zombie left for PID 1 to reap counts as stopped)
    local pidfile=$STATE/pids/$1.pid
    [ -f "$pidfile" ] || return 1
    local pid; pid=$(cat "$pidfile")
    [ -d /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null
}

if alive slurmctld && alive slurmd && alive slurmdbd && sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    log "already running (state in $STATE)"
    exit 0
fi

packages=()
for pair in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge slurmdbd:slurmdbd \
            mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || packages+=("${pair#*:}")
done
if [ ${#packages[@]} -gt 0 ]; then
    log "installing ${packages[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm "${packages[@]}" \
        >"$STATE.apt.log" 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$STATE.apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm "${packages[@]}" \
            >>"$STATE.apt.log" 2>&1
    } || { log "apt-get install failed, see $STATE.apt.log"; exit 3; }
fi

mkdir -p "$STATE"/{pids,logs,spool,state,mysql}
chmod 755 "$STATE"

# ---------------------------------------------------------------------------------------------------------- munge
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
if ! alive munged; then
    runuser -u munge -- /usr/sbin/munged --foreground >"$STATE/logs/munged.log" 2>&1 &
    echo $! >"$STATE/pids/munged.pid"
fi

# ------------------------------------------------------------------------------------------- MariaDB for slurmdbd
if ! alive mariadbd; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
        chown mysql:mysql "$STATE/mysql"
        mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
            >"$STATE/logs/mariadb-install.log" 2>&1
    fi
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    /usr/sbin/mariadbd --user=mysql --datadir="$STATE/mysql" --socket=/run/mysqld/mysqld.sock \
        --bind-address=127.0.0.1 --port=3306 --pid-file=/run/mysqld/captioner-test.pid >"$STATE/logs/mariadb.log" 2>&1 &
    echo $! >"$STATE/pids/mariadbd.pid"
fi
for _ in $(seq 100); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb -e 'select 1' >/dev/null || { log "MariaDB did not start, see $STATE/logs/mariadb.log"; exit 4; }

# ---------------------------------------------------------------------------------------------------- SLURM config
# the cores here: nproc obeys OMP_NUM_THREADS, which the tests set to 1
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MEMORY=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
for i in $(seq 0 $((GPUS - 1))); do
    [ -c "$STATE/gpu$i" ] || mknod "$STATE/gpu$i" c 1 3  # character devices (clones of /dev/null) stand in for GPUs
done
mkdir -p /etc/slurm
cat >/etc/slurm/slurm.conf <<CONF
# written by tests/slurm/start-slurm.sh: a one-host test cluster
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/logs/slurmctld.log
SlurmdLogFile=$STATE/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
{
    echo "AutoDetect=off"
    for i in $(seq 0 $((GPUS - 1))); do echo "Name=gpu File=$STATE/gpu$i"; done
} >/etc/slurm/gres.conf
cat >/etc/slurm/slurmdbd.conf <<CONF
# written by tests/slurm/start-slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/logs/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf

# --------------------------------------------------------------------------------------------------------- daemons
if ! alive slurmdbd; then
    /usr/sbin/slurmdbd -D >>"$STATE/logs/slurmdbd.out" 2>&1 &
    echo $! >"$STATE/pids/slurmdbd.pid"
fi
for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
if ! alive slurmctld; then
    /usr/sbin/slurmctld -D -i >>"$STATE/logs/slurmctld.out" 2>&1 &
    echo $! >"$STATE/pids/slurmctld.pid"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
if ! alive slurmd; then
    /usr/sbin/slurmd -D >>"$STATE/logs/slurmd.out" 2>&1 &
    echo $! >"$STATE/pids/slurmd.pid"
fi
for _ in $(seq 300); do
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
    sleep 0.1
done
sinfo -h -o %T | grep -qE '^(idle|mix|alloc)' || { log "node did not come up: $(sinfo -h -o '%T %E')"; exit 5; }
# the cluster registers itself with slurmdbd; make sure root has an association so accounting applies
sacctmgr -i -n add account root Cluster=$CLUSTER >/dev/null 2>&1 || true
sacctmgr -i -n add user root Account=root Cluster=$CLUSTER >/dev/null 2>&1 || true
log "up: partition $PARTITION, $CPUS CPUs, $GPUS fake GPUs, state in $STATE"
