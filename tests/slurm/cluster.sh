#!/usr/bin/env bash
# Bring up / tear down a real single-node Slurm cluster on this machine, for CI and
# for the pytest `slow` tests that submit job arrays through submitit.
#
#   cluster.sh start    idempotent; installs slurm-wlm + munge via apt if missing,
#                       writes /etc/slurm/slurm.conf, starts munged, slurmctld, slurmd,
#                       waits until the node is idle (partition `debug`).
#   cluster.sh stop     cancels all jobs, kills the daemons this script started (pid files).
#   cluster.sh status   exit 0 iff sinfo answers and the node is idle/mixed/allocated.
#
# Needs root (writes /etc/slurm, runs the daemons with SlurmUser=root). No systemd or
# cgroups needed: proctrack/linuxproc, task/none, no accounting (so no sacct data).
# State, spool, logs and pid files live in $NCBENCH_SLURM_DIR (default /var/lib/ncbench-slurm).
set -euo pipefail

DIR=${NCBENCH_SLURM_DIR:-/var/lib/ncbench-slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

log() { echo "slurm: $*"; }
# long state of our node (idle, mixed, down*, drained, ...); sinfo retries ~10 s without a controller
node_state() { timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1; }
# pid file names a live (non-zombie) process
alive() { [[ -f $1 ]] && [[ $(ps -o stat= -p "$(cat "$1")" 2>/dev/null) == [^Z]* ]]; }
fail() {
  echo "slurm: $*" >&2
  for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log; do
    [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 25 "$f" >&2; }
  done
  exit 1
}

status() {
  case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

stop() {
  if alive "$DIR/slurmctld.pid"; then  # cancel jobs first so no job processes outlive slurmd
    squeue -h -o %i | xargs -r scancel 2>/dev/null || true
    for _ in $(seq 20); do [[ -z $(squeue -h -t R,CG,CF -o %i 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  for d in slurmd slurmctld; do
    if alive "$DIR/$d.pid"; then kill "$(cat "$DIR/$d.pid")"; fi
  done
  # munged only if we started it (marker written by start)
  if [[ -f $DIR/munged.ours ]] && alive /run/munge/munged.pid; then
    kill "$(cat /run/munge/munged.pid)"
  fi
  for _ in $(seq 50); do  # wait up to 10 s, then force
    alive "$DIR/slurmd.pid" || alive "$DIR/slurmctld.pid" || \
      { [[ -f $DIR/munged.ours ]] && alive /run/munge/munged.pid; } || break
    sleep 0.2
  done
  for p in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do alive "$p" && kill -9 "$(cat "$p")"; done
  [[ -f $DIR/munged.ours ]] && alive /run/munge/munged.pid && kill -9 "$(cat /run/munge/munged.pid)"
  rm -f "$DIR"/*.pid "$DIR/munged.ours"
  log "stopped"
}

start() {
  local t0=$SECONDS
  # sinfo stalls ~10 s when no controller runs, so ask it only if ours is up
  if alive "$DIR/slurmctld.pid" && status; then log "already running (partition debug)"; return 0; fi
  [[ $(id -u) == 0 ]] || { echo "slurm: cluster.sh start needs root" >&2; exit 3; }

  # 1. binaries
  if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null; then
    if command -v apt-get >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq slurm-wlm munge >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; } || true
    fi
    command -v sbatch >/dev/null && command -v slurmctld >/dev/null ||
      { echo "slurm: sbatch/slurmctld not installed and could not install them" >&2; exit 3; }
  fi

  # 2. munge: key + daemon (runs as user munge)
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  mkdir -p "$DIR"/{state,spool,log} /run/munge
  chown munge:munge /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force >/dev/null  # forks; pid in /run/munge/munged.pid
    touch "$DIR/munged.ours"
    for _ in $(seq 25); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || fail "munged does not work (see /var/log/munge/munged.log)"
  fi

  # 3. config (the hostname must resolve for slurmctld)
  getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p /etc/slurm
  cat >"$CONF" <<EOF
# written by tests/slurm/cluster.sh -- single-node CI cluster
ClusterName=ncbench-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10   # requeued jobs wait this long before restarting (default 120 s)
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MessageTimeout=10
KillWait=5
MinJobAge=120
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

  # 4. daemons (fresh state each start: no stale jobs from an earlier run)
  alive "$DIR/slurmctld.pid" || { rm -rf "$DIR"/state/*; slurmctld -i ||
    fail "slurmctld failed to start"; }
  alive "$DIR/slurmd.pid" || { rm -rf "$DIR"/spool/*; slurmd || fail "slurmd failed to start"; }

  # 5. wait for the node
  local s=""
  for _ in $(seq 60); do
    s=$(node_state)
    case "$s" in
      idle|mixed|allocated) break ;;
      down*|drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  status || fail "node $HOST not ready after 60 s (state: ${s:-no answer})"
  log "ready (partition debug, $cpus cpus) in $((SECONDS - t0)) s"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
