#!/usr/bin/env bash
# .ci/slurm.sh -- a throwaway single-node Slurm cluster on this machine, for the slow tests and CI.
#
#   .ci/slurm.sh up       install slurm-wlm + munge if missing (Debian/apt), write the configs into the state dir,
#                         start munged, slurmctld and slurmd, wait until the node is usable, and print on stdout
#                         the line to use:  export SLURM_CONF=<state dir>/slurm.conf
#                         Idempotent: daemons that are already running (per their pid files) are left alone.
#   .ci/slurm.sh down     cancel the cluster's jobs, stop exactly the daemons `up` started (by their recorded PIDs),
#                         remove the pid files. Logs and Slurm state stay in the state dir.
#   .ci/slurm.sh status   sinfo + squeue (exit status 1 when the controller does not answer).
#   .ci/slurm.sh env      print the export line only.
#
# Usage in a shell:   eval "$(.ci/slurm.sh up)"; sbatch --wrap hostname; ...; .ci/slurm.sh down
#
# Environment (all optional):
#   SLURM_STATE_DIR        state dir (configs, pids, logs, spool)      default: $PWD/.slurm-state
#   SLURM_CI_PARTITION     partition name                              default: gpu
#   SLURM_CI_CPUS          CPUs of the node                            default: max(nproc, 2)
#   SLURM_CI_GPUS          number of fake GPUs (gres gpu:fake:N)       default: 2
#   SLURM_CI_MEM_MB        RealMemory of the node                      default: 90% of MemTotal
#   SLURM_CI_CTLD_PORT / SLURM_CI_SLURMD_PORT                          default: 6817 / 6818
#   SLURM_CI_UP_TIMEOUT    seconds to wait for the node                default: 60
#
# Design (see /work/shared/docs/ecosystem-notes.md, section 3):
# * No accounting (no slurmdbd): `sacct` fails, so use `squeue` for job status (MinJobAge=300 keeps finished jobs
#   visible in squeue for 5 minutes). The Snakemake profile in slurm/ sets `slurm-status-command: squeue`.
# * DefMemPerCPU is set, otherwise every job gets the whole node's memory and jobs run one at a time.
# * The slurm.conf is also symlinked to /etc/slurm/slurm.conf (+ gres.conf, cgroup.conf): snakemake's jobstep plugin
#   strips SLURM_CONF from the job environment, and the srun inside the job must still find the config.
# * Requeue: slurmctld holds a requeued job for AuthInfo cred_expire (+1 s) before it may start again (default 120 s,
#   which made submitit's requeue test take ~3 min). cred_expire=5 (Slurm's minimum) plus a 1-second scheduler
#   interval makes a requeued job restart within a few seconds.
# * munged runs with its own key and socket inside the state dir, so it never touches a system munged.
# * Fake GPUs: gres.conf with File=/dev/null, /dev/zero, ... -- scheduled and bound (CUDA_VISIBLE_DEVICES set),
#   but of course torch sees no CUDA.
set -euo pipefail

log() { printf '[slurm.sh] %s\n' "$*" >&2; }
STARTED=()   # daemons started by this invocation of `up`; stopped again if `up` fails
die() {
  printf '[slurm.sh] ERROR: %s\n' "$*" >&2
  if [ ${#STARTED[@]} -gt 0 ]; then
    printf '[slurm.sh] stopping what this invocation started: %s\n' "${STARTED[*]}" >&2
    stop_daemons "${STARTED[@]}" || true
  fi
  exit 1
}

D=${SLURM_STATE_DIR:-$PWD/.slurm-state}
mkdir -p "$D"
D=$(cd "$D" && pwd -P)
PART=${SLURM_CI_PARTITION:-gpu}
NGPU=${SLURM_CI_GPUS:-2}
CTLD_PORT=${SLURM_CI_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_CI_SLURMD_PORT:-6818}
UP_TIMEOUT=${SLURM_CI_UP_TIMEOUT:-60}
# Never let the caller's Slurm environment (e.g. when run inside a Slurm job) leak into our client calls
# (our own SLURM_STATE_DIR / SLURM_CI_* settings were read above).
while IFS= read -r _v; do unset "$_v"; done < <(compgen -e | grep '^SLURM_' || true)
export SLURM_CONF=$D/slurm.conf
DAEMONS=(slurmd slurmctld munged)   # stop order

pidfile() { echo "$D/run/$1.pid"; }

# PID from the pid file if that process is alive and is the expected program; empty otherwise.
live_pid() {
  local f pid comm
  f=$(pidfile "$1")
  [ -s "$f" ] || return 0
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 0
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  [ "$comm" = "$1" ] && echo "$pid"
  return 0
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (apt-get, munge user, /etc/slurm symlinks); got uid $(id -u)"; }

install_packages() {
  local missing=0 b
  for b in slurmctld slurmd sinfo sbatch squeue scontrol munged; do
    command -v "$b" >/dev/null 2>&1 || missing=1
  done
  [ $missing = 0 ] && return 0
  need_root
  command -v apt-get >/dev/null 2>&1 || die "slurm/munge not installed and apt-get not available"
  log "installing slurm-wlm and munge (apt-get) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$D/log/apt.log" 2>&1 || { cat "$D/log/apt.log" >&2; die "apt-get update failed"; }
  apt-get install -y -qq slurm-wlm munge >>"$D/log/apt.log" 2>&1 || { tail -30 "$D/log/apt.log" >&2; die "apt-get install slurm-wlm munge failed"; }
  for b in slurmctld slurmd sinfo munged; do command -v "$b" >/dev/null || die "$b still missing after apt-get install"; done
}

write_configs() {
  local host cpus memkb mem i files=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/ptmx /dev/console)
  host=$(hostname -s)
  cpus=${SLURM_CI_CPUS:-$(nproc)}
  [ "$cpus" -ge 2 ] || cpus=2
  memkb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  mem=${SLURM_CI_MEM_MB:-$((memkb * 9 / 10 / 1024))}
  [ "$NGPU" -le ${#files[@]} ] || die "SLURM_CI_GPUS=$NGPU: at most ${#files[@]} fake GPUs"
  echo "$host" >"$D/nodename"
  cat >"$D/slurm.conf.new" <<EOF
# Generated by .ci/slurm.sh -- throwaway single-node cluster (no accounting). Do not edit; rerun the script.
ClusterName=parci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# private munged socket; cred_expire also sets how long a requeued job waits before it may start again (min 5 s)
AuthInfo=socket=$D/munge/munge.socket,cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
JobRequeue=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# keep finished jobs visible to squeue/scontrol for 5 minutes (squeue-based status polling relies on it)
MinJobAge=300
InactiveLimit=0
KillWait=5
Waittime=0
# trust the node line below even if the sandbox reports fewer CPUs/less memory
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem Gres=gpu:fake:$NGPU State=UNKNOWN
PartitionName=$PART Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  {
    echo "# Generated by .ci/slurm.sh -- fake GPUs: device files that exist but are not GPUs"
    echo "AutoDetect=off"
    for ((i = 0; i < NGPU; i++)); do echo "NodeName=$host Name=gpu Type=fake File=${files[$i]}"; done
  } >"$D/gres.conf.new"
  cat >"$D/cgroup.conf.new" <<'EOF'
# Generated by .ci/slurm.sh -- unused (proctrack/linuxproc, task/none), present so no daemon complains
CgroupPlugin=autodetect
EOF
  local f
  for f in slurm.conf gres.conf cgroup.conf; do
    if [ -f "$D/$f" ] && cmp -s "$D/$f.new" "$D/$f"; then rm -f "$D/$f.new"; continue; fi
    if [ -n "$(live_pid slurmctld)$(live_pid slurmd)" ]; then
      log "WARNING: $f changed while the daemons are running; they keep the old settings until: $0 down; $0 up"
    fi
    mv -f "$D/$f.new" "$D/$f"
  done
  # the compiled-in default path, for job steps that lose SLURM_CONF (snakemake's jobstep plugin strips it)
  mkdir -p /etc/slurm
  for f in slurm.conf gres.conf cgroup.conf; do
    if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then
      die "/etc/slurm/$f is a regular file (a real Slurm installation?); refusing to replace it"
    fi
    ln -sfn "$D/$f" "/etc/slurm/$f"
  done
}

start_munged() {
  local pid
  pid=$(live_pid munged)
  if [ -n "$pid" ]; then log "munged already running (pid $pid)"; return 0; fi
  id munge >/dev/null 2>&1 || die "user 'munge' missing (is the munge package installed?)"
  local M=$D/munge
  mkdir -p "$M"
  if [ ! -s "$M/munge.key" ]; then
    dd if=/dev/urandom of="$M/munge.key" bs=1024 count=1 status=none
  fi
  chown -R munge:munge "$M"
  chmod 0755 "$M"
  chmod 0400 "$M/munge.key"
  rm -f "$M/munge.socket" "$M/munge.socket.lock" "$M/munged.pid"
  runuser -u munge -- /usr/sbin/munged --socket="$M/munge.socket" --key-file="$M/munge.key" \
    --pid-file="$M/munged.pid" --log-file="$M/munged.log" --seed-file="$M/munged.seed" \
    </dev/null >>"$D/log/munged.out" 2>&1 || { cat "$D/log/munged.out" "$M/munged.log" >&2 2>/dev/null; die "munged failed to start"; }
  for _ in $(seq 1 50); do [ -s "$M/munged.pid" ] && [ -S "$M/munge.socket" ] && break; sleep 0.1; done
  [ -s "$M/munged.pid" ] || die "munged wrote no pid file"
  cp "$M/munged.pid" "$(pidfile munged)"
  STARTED=(munged "${STARTED[@]}")
  pid=$(live_pid munged)
  [ -n "$pid" ] || { cat "$M/munged.log" >&2 2>/dev/null; die "munged is not running"; }
  log "started munged (pid $pid)"
}

start_slurm_daemon() {  # slurmctld | slurmd
  local name=$1 pid
  pid=$(live_pid "$name")
  if [ -n "$pid" ]; then log "$name already running (pid $pid)"; return 0; fi
  rm -f "$(pidfile "$name")"
  if [ "$name" = slurmd ]; then
    /usr/sbin/slurmd -N "$(cat "$D/nodename")" </dev/null >>"$D/log/slurmd.out" 2>&1 || {
      dump_logs; die "slurmd failed to start"; }
  else
    /usr/sbin/slurmctld </dev/null >>"$D/log/slurmctld.out" 2>&1 || { dump_logs; die "slurmctld failed to start"; }
  fi
  STARTED=("$name" "${STARTED[@]}")
  for _ in $(seq 1 100); do pid=$(live_pid "$name"); [ -n "$pid" ] && break; sleep 0.1; done
  [ -n "$pid" ] || { dump_logs; die "$name did not come up (no live pid in $(pidfile "$name"))"; }
  log "started $name (pid $pid)"
}

dump_logs() {
  local f
  for f in "$D"/log/slurmctld.log "$D"/log/slurmd.log "$D"/log/*.out "$D"/munge/munged.log; do
    [ -s "$f" ] || continue
    printf '\n----- %s (last 40 lines) -----\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
}

wait_node_usable() {
  local t0 state=""
  t0=$(date +%s)
  while :; do
    state=$(sinfo -h -p "$PART" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle | mixed | allocated | completing) return 0 ;;
    esac
    if [ $(($(date +%s) - t0)) -ge "$UP_TIMEOUT" ]; then
      log "node of partition '$PART' not usable after ${UP_TIMEOUT}s (state: '${state:-no answer}')"
      sinfo -R >&2 2>/dev/null || true
      dump_logs
      die "cluster did not come up"
    fi
    sleep 0.3
  done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Refuse to start next to another Slurm on the same ports (e.g. a cluster from another state dir), before touching
# /etc/slurm: its jobs rely on the /etc/slurm/slurm.conf symlink.
check_ports() {
  local other
  other=$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)
  if [ -z "$(live_pid slurmctld)" ] && port_in_use "$CTLD_PORT"; then
    die "port $CTLD_PORT (SlurmctldPort) is already in use -- another slurmctld running? (/etc/slurm/slurm.conf -> ${other:-none}). Stop it (SLURM_STATE_DIR=<its dir> $0 down) or set SLURM_CI_CTLD_PORT/SLURM_CI_SLURMD_PORT."
  fi
  if [ -z "$(live_pid slurmd)" ] && port_in_use "$SLURMD_PORT"; then
    die "port $SLURMD_PORT (SlurmdPort) is already in use -- another slurmd running? (/etc/slurm/slurm.conf -> ${other:-none}). Stop it or set SLURM_CI_SLURMD_PORT."
  fi
}

cmd_up() {
  local t0
  t0=$(date +%s.%N)
  mkdir -p "$D"/{run,log,spool/ctld,spool/d}
  install_packages
  need_root
  check_ports
  write_configs
  start_munged
  start_slurm_daemon slurmctld
  start_slurm_daemon slurmd
  wait_node_usable
  sinfo -o "%P %a %l %D %T %N %G" >&2
  log "cluster up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s; state dir $D"
  echo "export SLURM_CONF=$SLURM_CONF"
}

# stop the given daemons (names, in order) by their recorded PIDs; slurmd and slurmctld are signalled together
stop_daemons() {
  local name pid pids=() names=() i
  for name in "$@"; do
    pid=$(live_pid "$name")
    if [ -z "$pid" ]; then rm -f "$(pidfile "$name")"; continue; fi
    if [ "$name" = munged ] && [ ${#pids[@]} -gt 0 ]; then
      _wait_stopped pids names
      pids=() names=()
    fi
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid") names+=("$name")
  done
  [ ${#pids[@]} -gt 0 ] && _wait_stopped pids names
  return 0
}

_wait_stopped() {  # arrays of pids and names (by name)
  local -n _p=$1 _n=$2
  local i alive
  for _ in $(seq 1 100); do
    alive=0
    for i in "${!_p[@]}"; do [ -d "/proc/${_p[$i]}" ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for i in "${!_p[@]}"; do
    if [ -d "/proc/${_p[$i]}" ]; then
      log "${_n[$i]} (pid ${_p[$i]}) ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "${_p[$i]}" 2>/dev/null || true
    fi
    rm -f "$(pidfile "${_n[$i]}")"
    log "stopped ${_n[$i]} (pid ${_p[$i]})"
  done
}

cmd_down() {
  local name any=0
  for name in "${DAEMONS[@]}"; do [ -n "$(live_pid "$name")" ] && any=1; done
  if [ -n "$(live_pid slurmctld)" ]; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(tr "\n" " " <<<"$jobs")"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 30); do
        [ -z "$(squeue -h -t R,CG,CF -o %i 2>/dev/null || true)" ] && break
        sleep 0.3
      done
    fi
  fi
  stop_daemons "${DAEMONS[@]}"
  rm -f "$D/munge/munged.pid"
  # drop /etc/slurm symlinks that point into this state dir
  local f
  for f in slurm.conf gres.conf cgroup.conf; do
    if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$D/$f" ]; then rm -f "/etc/slurm/$f"; fi
  done
  [ $any = 1 ] || log "nothing was running (state dir $D)"
}

cmd_status() {
  local name pid
  for name in munged slurmctld slurmd; do
    pid=$(live_pid "$name")
    if [ -n "$pid" ]; then log "$name: running (pid $pid)"; else log "$name: not running"; fi
  done
  sinfo -o "%P %a %l %D %T %N %G" || return 1
  squeue -o "%.8i %.9P %.20j %.8T %.10M %.6D %R" || return 1
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 up|down|status|env   (state dir: \${SLURM_STATE_DIR:-\$PWD/.slurm-state})" >&2; exit 2 ;;
esac
