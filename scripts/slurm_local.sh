#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for running prefopt's SLURM sweeps for real without a cluster.
#   sudo bash scripts/slurm_local.sh          # (as root) install + start, then wait until the node is idle
#   python -m prefopt.train -m hydra/launcher=slurm_cpu model=tiny benchmark=none loss=dpo,ipo
#
# Installs the Debian packages (slurm-wlm's daemons + client, munge; no recommends), writes
# /etc/slurm/slurm.conf for this host (`hostname -s`, CPUs/sockets/cores/memory as `slurmd -C` reads
# them), starts munged, slurmctld and slurmd directly (no systemd: works in a container), and waits until
# `sinfo` shows the node idle. Safe to run again: an already running, identically configured cluster is
# left alone (a drained/down node is resumed); a changed slurm.conf restarts the Slurm daemons.
# No cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), no accounting (sacct does not
# work; submitit only warns and reads each job's result file instead), one partition `debug` (default).
# Jobs run as root here: Slurm allows that (DisableRootJobs defaults to NO).
# Env: SLURM_LOCAL_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail

TIMEOUT="${SLURM_LOCAL_TIMEOUT:-60}"
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
START=$(date +%s)

log() { echo "slurm_local: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (installs packages and starts daemons)"; exit 1
fi

# --- install (skipped when the binaries are there) ---
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
INSTALLED=$(date +%s)

show_logs() {
  for f in /var/log/munge/munged.log "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log"; do
    echo "----- tail -n 40 $f -----" >&2
    tail -n 40 "$f" >&2 2>/dev/null || echo "(missing)" >&2
  done
  echo "----- sinfo -----" >&2
  sinfo -N -l >&2 2>&1 || true
}

running() {  # running <pidfile>: its pid is alive and is the daemon named like the file (not a reused pid)
  [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$(basename "$1" .pid)" ]
}

stop() {  # stop <pidfile>: only the daemon this script started (by its pid file)
  if running "$1"; then
    local pid; pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$1"
}

# --- munge ---
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
if ! munge -n </dev/null | unmunge >/dev/null 2>&1; then
  log "munge does not work"; show_logs; exit 1
fi

# --- slurm.conf for this host ---
HOST=$(hostname -s)
# e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
HW=$(slurmd -C | head -n 1 | sed -e "s/^NodeName=[^ ]*//")
install -d -m 0755 /etc/slurm "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
NEW=$(cat <<EOF
# Written by scripts/slurm_local.sh: a single-node cluster on $HOST.
ClusterName=prefopt-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$HOST$HW State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
RESTART=0
if [ ! -f "$CONF" ] || [ "$NEW" != "$(cat "$CONF")" ]; then
  log "writing $CONF ($HOST:$HW)"
  printf '%s\n' "$NEW" >"$CONF"
  RESTART=1
fi
# Debian's slurm packages ship no cgroup.conf; none is needed with the plugins above.

if [ "$RESTART" = 1 ]; then
  stop /run/slurmd.pid
  stop /run/slurmctld.pid
fi
if ! running /run/slurmctld.pid; then
  log "starting slurmctld"
  /usr/sbin/slurmctld
fi
if ! running /run/slurmd.pid; then
  log "starting slurmd"
  /usr/sbin/slurmd
fi

# --- wait for the node ---
deadline=$(( $(date +%s) + TIMEOUT ))
state=""
while :; do
  state=$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle|mixed|allocated) break ;;
    down*|drain*|drained*)
      # A node left down/drained by an earlier run (e.g. a restart): give it back.
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "node $HOST is not idle after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
    show_logs
    exit 1
  fi
  sleep 1
done
END=$(date +%s)
log "node $HOST $state in partition debug; install $((INSTALLED - START))s, start $((END - INSTALLED))s, total $((END - START))s"
sinfo
