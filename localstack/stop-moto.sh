#!/usr/bin/env bash
# Stops moto's server started by localstack/start-moto.sh, by the pid in $DIR/run/moto.pid:
# SIGTERM, up to 5 s grace, then SIGKILL. Removes the pid file. Succeeds when nothing runs.
# Only a process whose command line is moto's server (localstack/moto-cbor.py) is signalled (no stale-pid kills).
#
# Environment: KCL_EMULATOR_DIR (default: <repo>/localstack/.emulators), as for the start script.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${KCL_EMULATOR_DIR:-$ROOT/localstack/.emulators}
RUN=$DIR/run

log() { printf '[stop-moto] %s\n' "$*" >&2; }

[ -d "$RUN" ] || { log "nothing to stop ($RUN does not exist)"; exit 0; }

# Do not race a concurrent start (which holds the lock while it launches and waits).
exec 9>"$RUN/moto.lock"
flock -w 300 9 || log "warning: could not take $RUN/moto.lock; stopping anyway"

pidfile=$RUN/moto.pid
if [ ! -f "$pidfile" ]; then
  log "moto: not running (no pid file)"
  exit 0
fi
pid=$(cat "$pidfile" 2>/dev/null || true)
if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
   tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q moto-cbor.py; then
  log "moto: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "moto: pid $pid still alive after 5 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  if kill -0 "$pid" 2>/dev/null; then
    log "moto: ERROR: pid $pid survived SIGKILL"
    exit 1
  fi
  log "moto: stopped"
else
  log "moto: not running (stale pid file)"
fi
rm -f "$pidfile" "$RUN/moto.port"
