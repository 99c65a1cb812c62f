#!/usr/bin/env bash
# A one-node Slurm on this machine, for the real-scheduler test (`make test-slurm`). Debian, as root.
#
#   bash scripts/slurm_local.sh [start]   install slurm-wlm and munge if missing (apt-get), write a munge
#                                         key and a one-node slurm.conf if missing, start munged, slurmctld
#                                         and slurmd if not running, wait until the node is idle. Idempotent.
#   bash scripts/slurm_local.sh stop      stop the daemons this script started (recorded with their pids in
#                                         $STATE_DIR), and only those; packages and configuration stay.
#   bash scripts/slurm_local.sh status    what runs, and what this script started.
#
# Exit status: 0 done; 3 this machine cannot run it (not root, no apt-get, a slurm.conf this script did not
# write): the message says why, and CI reports the test as skipped; 1 anything else went wrong.
# Partition: "debug" (the default), the node's CPUs and memory from `slurmd -C`, requeue allowed.
set -uo pipefail

STATE_DIR=${LTDET2_SLURM_STATE:-/run/ltdet2-slurm}
STARTED="$STATE_DIR/started"          # lines "<daemon> <pid>" of what this script started
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by ltdet2 scripts/slurm_local.sh"
SPOOL=/var/spool/ltdet2-slurm
LOGS=/var/log/ltdet2-slurm
PARTITION=debug

say() { echo "[slurm_local] $*"; }
cannot() { say "cannot run a local Slurm here: $*" >&2; exit 3; }
fail() { say "FAILED: $*" >&2; exit 1; }

pid_alive() {  # pid_alive PID NAME: the process PID exists and is NAME
  [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

pid_from_file() { [ -r "$1" ] && tr -dc '0-9' < "$1"; }

record() { mkdir -p "$STATE_DIR" && echo "$1 $2" >> "$STARTED"; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || cannot "slurm-wlm and munge are not installed and there is no apt-get"
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q slurm-wlm munge >/dev/null || cannot "apt-get could not install slurm-wlm and munge"
  fi
}

munge_key() {
  local key=/etc/munge/munge.key
  [ -s "$key" ] && return
  say "creating $key"
  mkdir -p /etc/munge
  dd if=/dev/urandom of="$key" bs=1 count=1024 status=none || fail "could not write $key"
  chown munge:munge "$key" && chmod 400 "$key"
}

check_conf_is_ours() {
  if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    cannot "$CONF exists and was not written by this script (a real Slurm configuration): not touching it"
  fi
}

write_conf() {
  local host node
  host=$(hostname -s)
  node=$(slurmd -C 2>/dev/null | head -n 1)
  [ -n "$node" ] || fail "slurmd -C printed no node configuration"
  mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOGS" "$STATE_DIR"
  local text
  text="$MARKER
ClusterName=ltdet2test
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
MpiDefault=none
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$text" ]; then
    say "writing $CONF ($node)"
    printf '%s\n' "$text" > "$CONF" || fail "could not write $CONF"
  fi
}

start_munged() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return  # a munged already answers (ours or the system's)
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged || fail "munged did not start (see /var/log/munge/munged.log)"
  local pid
  for _ in $(seq 50); do
    pid=$(pid_from_file /run/munge/munged.pid)
    pid_alive "$pid" munged && break
    sleep 0.1
  done
  pid_alive "$pid" munged || fail "munged did not write its pid file"
  record munged "$pid"
  say "started munged (pid $pid)"
}

start_daemon() {  # start_daemon NAME
  local name=$1 pidfile="$STATE_DIR/$1.pid" pid
  pid=$(pid_from_file "$pidfile")
  if pid_alive "$pid" "$name"; then
    return
  fi
  "$name" || fail "$name did not start (see $LOGS/$name.log)"
  for _ in $(seq 100); do
    pid=$(pid_from_file "$pidfile")
    pid_alive "$pid" "$name" && break
    sleep 0.1
  done
  pid_alive "$pid" "$name" || fail "$name did not write $pidfile (see $LOGS/$name.log)"
  record "$name" "$pid"
  say "started $name (pid $pid)"
}

wait_idle() {
  local state host
  host=$(hostname -s)
  for i in $(seq 120); do
    state=$(sinfo --noheader --format=%T --nodes="$host" 2>/dev/null | head -n 1)
    case "$state" in
      idle|mixed|allocated|completing) say "Slurm is up: partition $PARTITION, node $host ($state)"; return ;;
      down*|drain*|fail*) [ $((i % 10)) -eq 1 ] && scontrol update NodeName="$host" State=RESUME 2>/dev/null ;;
    esac
    sleep 0.5
  done
  fail "node $host is not idle after 60 s (state: ${state:-unknown}; see $LOGS)"
}

start() {
  [ "$(id -u)" -eq 0 ] || cannot "it needs root (to install packages and run slurmctld / slurmd)"
  check_conf_is_ours
  install_packages
  munge_key
  write_conf
  start_munged
  start_daemon slurmctld
  start_daemon slurmd
  wait_idle
}

stop() {
  [ -f "$STARTED" ] || { say "nothing to stop (this script started nothing that is recorded in $STARTED)"; return; }
  local name pid
  # the reverse order of starting: slurmd, slurmctld, munged
  tac "$STARTED" | while read -r name pid; do
    if pid_alive "$pid" "$name"; then
      kill "$pid" && say "stopping $name (pid $pid)"
      for _ in $(seq 100); do pid_alive "$pid" "$name" || break; sleep 0.1; done
      pid_alive "$pid" "$name" && say "$name (pid $pid) is still running after 10 s" >&2
    fi
  done
  rm -f "$STARTED"
}

status() {
  for name in munged slurmctld slurmd; do
    printf '%-10s %s\n' "$name" "$(pgrep -x "$name" | tr '\n' ' ' || true)"
  done
  if [ -f "$STARTED" ]; then echo "started by this script:"; cat "$STARTED"; else echo "started by this script: none"; fi
  command -v sinfo >/dev/null && sinfo 2>&1 | head -5
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
