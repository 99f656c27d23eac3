#!/usr/bin/env bash
# Stops the emulators (and the edge proxy) started by localstack/start-emulators.sh, by the pids in $DIR/run/*.pid:
# SIGTERM, up to 5 s grace, then SIGKILL. Removes the pid files. Succeeds when nothing runs.
# Only processes whose command line is the expected emulator are signalled (no stale-pid kills).
#
# Environment: KCL_EMULATOR_DIR (default: <repo>/localstack/.emulators), as for the start script.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${KCL_EMULATOR_DIR:-$ROOT/localstack/.emulators}
RUN=$DIR/run

log() { printf '[stop-emulators] %s\n' "$*" >&2; }

[ -d "$RUN" ] || { log "nothing to stop ($RUN does not exist)"; exit 0; }

# Do not race a concurrent start (which holds the lock while it launches and waits).
exec 9>"$RUN/lock"
flock -w 300 9 || log "warning: could not take $RUN/lock; stopping anyway"

stop_one() { # <name> <cmdline-marker>
  local name=$1 marker=$2 pidfile="$RUN/$1.pid" pid
  if [ ! -f "$pidfile" ]; then
    log "$name: not running (no pid file)"
    return 0
  fi
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
     tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$marker"; then
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name: pid $pid still alive after 5 s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    if kill -0 "$pid" 2>/dev/null; then
      log "$name: ERROR: pid $pid survived SIGKILL"
      return 1
    fi
    log "$name: stopped"
  else
    log "$name: not running (stale pid file)"
  fi
  rm -f "$pidfile" "$RUN/$name.port"
}

rc=0
stop_one edge edge-proxy.cjs || rc=1 # the front door first: clients get "refused", not 502s
stop_one kinesis kinesis-local/main.js || rc=1
stop_one dynamodb dynalite/cli.js || rc=1
exit "$rc"
