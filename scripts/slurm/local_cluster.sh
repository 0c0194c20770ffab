#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munged + slurmctld + slurmd from the distribution's packages,
# Debian: apt-get install slurm-wlm munge), to try scripts/slurm/ before a real cluster.
#   bash scripts/slurm/local_cluster.sh start    # idempotent; prints the SLURM_CONF line to export
#   export SLURM_CONF=/tmp/llava-slurm/slurm.conf
#   salloc -N1 bash scripts/slurm/launch.sh -- bash scripts/v1_5/pretrain.sh   (DEVICE=cpu on a CPU machine)
#   bash scripts/slurm/local_cluster.sh stop     # stops the three daemons it started
#   bash scripts/slurm/local_cluster.sh status
# Everything (config, keys, sockets, state, logs) lives in LLAVA_SLURM_DIR (default /tmp/llava-slurm); ports
# LLAVA_SLURM_PORT (slurmctld, default 6817) and +1 (slurmd). One partition "local" with this host's CPUs.
set -euo pipefail

DIR="${LLAVA_SLURM_DIR:-/tmp/llava-slurm}"
PORT="${LLAVA_SLURM_PORT:-6817}"
CONF="${DIR}/slurm.conf"
SOCKET="${DIR}/munge/munge.socket"
HOST="$(hostname -s)"
DAEMONS=(munged slurmctld slurmd)

need() {
    local missing=()
    for tool in munged slurmctld slurmd sinfo; do
        command -v "${tool}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${tool}" ]] || missing+=("${tool}")
    done
    if (( ${#missing[@]} )); then
        echo "error: ${missing[*]} not installed: apt-get install slurm-wlm munge (or your distribution's packages)" >&2
        exit 2
    fi
}

running() {  # running NAME: its pid file names a live process
    local pidfile="${DIR}/$1.pid"
    [[ -f "${pidfile}" ]] && kill -0 "$(cat "${pidfile}")" 2>/dev/null
}

write_config() {
    mkdir -p "${DIR}/munge" "${DIR}/state" "${DIR}/spool"
    chmod 700 "${DIR}/munge"
    [[ -f "${DIR}/munge/munge.key" ]] || { head -c 1024 /dev/urandom > "${DIR}/munge/munge.key"; chmod 400 "${DIR}/munge/munge.key"; }
    local cpus mem user
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    user="$(id -un)"
    cat > "${CONF}.tmp" <<EOF
# written by scripts/slurm/local_cluster.sh: a one-node cluster on ${HOST}
ClusterName=llava-local
SlurmctldHost=${HOST}
SlurmUser=${user}
SlurmdUser=${user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${SOCKET}
SlurmctldPort=${PORT}
SlurmdPort=$((PORT + 1))
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd.pid
SlurmctldLogFile=${DIR}/slurmctld.log
SlurmdLogFile=${DIR}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=local Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    mv "${CONF}.tmp" "${CONF}"
}

wait_idle() {  # the node answers as idle (or mixed/allocated) within 30 s
    for _ in $(seq 60); do
        if SLURM_CONF="${CONF}" sinfo -h -N -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            return 0
        fi
        sleep 0.5
    done
    echo "error: the local cluster did not come up; see ${DIR}/slurmctld.log and ${DIR}/slurmd.log" >&2
    return 1
}

start() {
    need
    write_config
    running munged || munged --key-file="${DIR}/munge/munge.key" --socket="${SOCKET}" \
        --pid-file="${DIR}/munged.pid" --log-file="${DIR}/munged.log" --seed-file="${DIR}/munge/seed" --force
    running slurmctld || SLURM_CONF="${CONF}" slurmctld -f "${CONF}"
    running slurmd || SLURM_CONF="${CONF}" slurmd -f "${CONF}"
    wait_idle
    echo "local SLURM cluster up on ${HOST}: export SLURM_CONF=${CONF}"
}

stop() {
    local name pid
    for (( i = ${#DAEMONS[@]} - 1; i >= 0; i-- )); do
        name="${DAEMONS[i]}"
        if running "${name}"; then
            pid="$(cat "${DIR}/${name}.pid")"
            kill "${pid}"
            for _ in $(seq 40); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.25; done
        fi
        rm -f "${DIR}/${name}.pid"
    done
    echo "local SLURM cluster stopped"
}

status() {
    local name
    for name in "${DAEMONS[@]}"; do
        if running "${name}"; then echo "${name}: running (pid $(cat "${DIR}/${name}.pid"))"; else echo "${name}: stopped"; fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
