#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and for trying `snakemake --profile slurm`.
#
#   scripts/slurm_local.sh install   apt-get install slurm-wlm and munge (Debian/Ubuntu, as root)
#   scripts/slurm_local.sh start     munged, slurmctld and slurmd; waits until the node is idle
#   scripts/slurm_local.sh stop      stops the three daemons this script started
#   scripts/slurm_local.sh status    daemons, sinfo and squeue
#
# The cluster: one node named after this machine (`hostname`) with all its CPUs and most of its
# memory, one default partition `debug`, select/cons_tres, no cgroups (proctrack/linuxproc,
# task/none), no accounting (so `sacct` has nothing: Snakemake's SLURM plugin must query job status
# with `squeue`, see slurm/config.yaml). Daemons run as root (SlurmUser=root), munged as `munge`.
# `start` is idempotent: running daemons are kept unless slurm.conf changed, which restarts them;
# a slurmctld that `start` launches begins with an empty queue (saved jobs are dropped), and `stop`
# cancels the jobs still queued or running.
#
# Environment: SLURM_LOCAL_TIMEOUT (seconds to wait for the node, default 120),
# SLURM_CONF_DIR (default /etc/slurm, where Debian's slurm-wlm reads slurm.conf).
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
MUNGE_LOG=/var/log/munge/munged.log
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-120}
NODE=$(hostname)

log() { echo "slurm_local: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (it writes $CONF and starts daemons as root)"; }

# A pid from a pid file, if that process is alive.
alive_pid() {
    local file=$1 pid
    [ -s "$file" ] || return 1
    pid=$(cat "$file" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

cmd_install() {
    need_root
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        log "slurm-wlm and munge are already installed"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
}

check_installed() {
    local missing=()
    for exe in munged slurmctld slurmd sbatch sinfo scontrol; do
        command -v "$exe" >/dev/null || missing+=("$exe")
    done
    [ ${#missing[@]} -eq 0 ] || die "not installed: ${missing[*]} (run: $0 install)"
}

start_munge() {
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
    if [ ! -s "$MUNGE_KEY" ]; then
        log "creating a random $MUNGE_KEY"
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none)
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    if alive_pid "$MUNGE_PID" >/dev/null; then
        log "munged already running (pid $(cat "$MUNGE_PID"))"
    else
        rm -f "$MUNGE_PID" "$MUNGE_RUN"/munge.socket.2*
        # --force: start even when a stale socket or lock is left from an unclean stop
        runuser -u munge -- munged --force --pid-file="$MUNGE_PID" --log-file="$MUNGE_LOG"
    fi
    local i
    for i in $(seq 1 50); do
        if munge -n </dev/null | unmunge >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    tail -n 20 "$MUNGE_LOG" >&2 || true
    die "munged does not answer (log above: $MUNGE_LOG)"
}

# Memory that SLURM may hand out: the machine's, less 10% and at least 512 MB, in MB.
real_memory_mb() {
    local total
    total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    local spare=$((total / 10))
    [ "$spare" -ge 512 ] || spare=512
    echo $((total - spare))
}

write_conf() {
    local out=$1 cpus mem
    cpus=$(nproc)
    mem=$(real_memory_mb)
    cat >"$out" <<EOF
# Written by synrep scripts/slurm_local.sh: a one-node cluster on this machine. Do not edit;
# \`scripts/slurm_local.sh start\` rewrites it.
ClusterName=synrep-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Finished jobs stay visible to squeue for 10 minutes: Snakemake's SLURM plugin reads their
# final state with squeue, since there is no accounting for sacct.
MinJobAge=600
# Node CPUs and memory as written below, whatever slurmd detects (containers, VMs).
SlurmdParameters=config_overrides
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
# OverSubscribe=YES:8: jobs that ask for it (sbatch --oversubscribe) may share cores, up to 8 jobs
# a core (the MLflow concurrency test); all other jobs, Snakemake's included, get CPUs of their own.
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES:8
EOF
}

# Compact node state: idle, mix, alloc, down, drain...; a suffix flags trouble (idle* = slurmd not
# responding, which is also what slurmctld reports from saved state before slurmd registers).
node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1 | tr -d ' '; }

show_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" "$MUNGE_LOG"; do
        [ -f "$f" ] || continue
        echo "---- tail of $f" >&2
        tail -n 25 "$f" >&2
    done
}

stop_daemon() {
    local name=$1 file=$2 pid i
    pid=$(alive_pid "$file") || { rm -f "$file"; return 0; }
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
        sleep 0.2
    done
    log "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
}

cmd_start() {
    need_root
    check_installed
    install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$RUN_DIR"
    install -d -m 0700 "$STATE_DIR"
    install -d -m 0755 "$SPOOL_DIR"
    start_munge

    local new
    new=$(mktemp)
    write_conf "$new"
    if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then
        rm -f "$new"
    else
        if alive_pid "$CTLD_PID" >/dev/null || alive_pid "$SLURMD_PID" >/dev/null; then
            log "slurm.conf changed: restarting the daemons"
            stop_daemon slurmd "$SLURMD_PID"
            stop_daemon slurmctld "$CTLD_PID"
        fi
        install -m 0644 "$new" "$CONF"
        rm -f "$new"
        log "wrote $CONF"
    fi

    if alive_pid "$CTLD_PID" >/dev/null; then
        log "slurmctld already running (pid $(cat "$CTLD_PID"))"
    else
        # -c: start with no jobs. Saved state can hold jobs that were running when the machine
        # stopped (a snapshot, a killed session); recovered as RUNNING, they hold the node's CPUs and
        # memory until their time limit and every new job stays PENDING.
        slurmctld -c -f "$CONF" || { show_logs; die "slurmctld failed to start"; }
    fi
    if alive_pid "$SLURMD_PID" >/dev/null; then
        log "slurmd already running (pid $(cat "$SLURMD_PID"))"
    else
        slurmd -f "$CONF" || { show_logs; die "slurmd failed to start"; }
    fi

    local start=$SECONDS state="" resumed=0
    while :; do
        state=$(node_state || true)
        case "$state" in
            idle | mix | alloc | comp)
                log "node $NODE is $state after $((SECONDS - start)) s; partition debug is up"
                return 0
                ;;
            down* | drain* | drng* | fail* | inval*)
                # ReturnToService=2 returns a node that registers with a valid config; a node
                # left down or drained by an earlier run needs an explicit resume.
                if [ $resumed -eq 0 ] && [ $((SECONDS - start)) -ge 5 ]; then
                    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
            sinfo -N -l >&2 || true
            scontrol show node "$NODE" >&2 || true
            show_logs
            die "node $NODE is not idle after $TIMEOUT s (state: '${state:-no answer from slurmctld}')"
        fi
        sleep 1
    done
}

cmd_stop() {
    need_root
    # Cancel what is left so that no job script outlives the cluster that ran it.
    if alive_pid "$CTLD_PID" >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        [ -z "$jobs" ] || scancel $jobs 2>/dev/null || true
    fi
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
}

cmd_status() {
    local rc=0 pid
    for pair in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
        if pid=$(alive_pid "${pair#*:}"); then
            echo "${pair%%:*}: running (pid $pid)"
        else
            echo "${pair%%:*}: not running"
            rc=1
        fi
    done
    if [ $rc -eq 0 ]; then
        sinfo -N -l || rc=1
        squeue || rc=1
    fi
    return $rc
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {install|start|stop|status}" >&2
        exit 2
        ;;
esac
