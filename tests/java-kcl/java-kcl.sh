#!/usr/bin/env bash
# The real Java KCL (3.1.3, through its MultiLangDaemon) as a test fixture, for the
# interoperability tests in tests/tests/java_interop.rs.
#
#   java-kcl.sh install   installs kclpy-ext==3.1.3.post4 from PyPI (it bundles the Java KCL
#                         jars) into a project-local virtualenv; idempotent, flock-protected
#   java-kcl.sh start     installs if needed, writes the daemon's properties into $KCL_JAVA_RUN_DIR
#                         and starts the MultiLangDaemon there, detached; prints its pid
#   java-kcl.sh stop      SIGTERM to the daemon of $KCL_JAVA_RUN_DIR (a graceful shutdown: the
#                         processors get shutdown_requested and checkpoint), SIGKILL after
#                         $KCL_JAVA_STOP_TIMEOUT seconds; prints how long it took
#
# The record processor is tests/java-kcl/processor.py: it appends what it processes to
# $KCL_JAVA_RECORDS (see its docstring). Diagnostics go to stderr; the daemon's own output to
# $KCL_JAVA_RUN_DIR/daemon.log.
#
# Environment of `start`:
#   KCL_JAVA_RUN_DIR     directory of this daemon: properties, pid, log       (required)
#   KCL_JAVA_APP         application name = lease table name                   (required)
#   KCL_JAVA_STREAM      stream name                                           (required)
#   KCL_JAVA_WORKER      worker id                                             (required)
#   KCL_JAVA_RECORDS     the processor's output file                           (required)
#   AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL_DYNAMODB  emulator endpoints    (required)
#   AWS_REGION (us-east-1), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (test / test)
#   KCL_JAVA_FAILOVER_MS failoverTimeMillis (default 10000)
#   KCL_JAVA_PROPERTIES  more `key = value` lines for the properties file (they win)
# Environment of all commands:
#   KCL_JAVA_HOME        where the virtualenv goes (default: tests/java-kcl/.venv)
#   KCL_JAVA_PYTHON      the Python that creates it (default: python3, 3.8 or later)
#   KCL_JAVA_STOP_TIMEOUT seconds before SIGKILL in `stop` (default 60)
set -euo pipefail

KCLPY_VERSION=3.1.3.post4
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${KCL_JAVA_HOME:-$HERE/.venv}
PYTHON=${KCL_JAVA_PYTHON:-python3}

log() { printf '[java-kcl] %s\n' "$*" >&2; }
die() { printf '[java-kcl] ERROR: %s\n' "$*" >&2; exit 1; }

installed() {
  [ -x "$VENV/bin/python" ] &&
    [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kclpy-ext"))' 2>/dev/null)" = "$KCLPY_VERSION" ]
}

jars_dir() {
  "$VENV/bin/python" -c 'import amazon_kclpy, os; print(os.path.join(os.path.dirname(amazon_kclpy.__file__), "jars"))'
}

install() {
  command -v java >/dev/null 2>&1 || die "java (17 or later) is required but not on PATH"
  command -v flock >/dev/null 2>&1 || die "flock is required but not on PATH"
  mkdir -p "$(dirname "$VENV")"
  exec 8>"$VENV.lock"
  flock -w 900 8 || die "timed out waiting for $VENV.lock"
  if installed; then
    flock -u 8
    return
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is required to install kclpy-ext"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "$PYTHON is older than 3.8"
  log "installing kclpy-ext==$KCLPY_VERSION (the Java KCL 3.1.3 jars) into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" 1>&2 || die "cannot create a virtualenv with $PYTHON -m venv"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
    "kclpy-ext==$KCLPY_VERSION" 1>&2 || die "pip install kclpy-ext==$KCLPY_VERSION failed"
  installed || die "kclpy-ext $KCLPY_VERSION is not installed after pip install"
  local jars
  jars=$(jars_dir)
  [ -f "$jars/amazon-kinesis-client-multilang-3.1.3.jar" ] || die "no Java KCL 3.1.3 jars in $jars"
  log "installed: $(find "$jars" -name '*.jar' | wc -l) jars in $jars"
  flock -u 8
}

need() { # <var>...
  local v
  for v in "$@"; do
    [ -n "${!v:-}" ] || die "$v must be set"
  done
}

daemon_alive() { # <pid>
  kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q MultiLangDaemon
}

start() {
  need KCL_JAVA_RUN_DIR KCL_JAVA_APP KCL_JAVA_STREAM KCL_JAVA_WORKER KCL_JAVA_RECORDS \
    AWS_ENDPOINT_URL_KINESIS AWS_ENDPOINT_URL_DYNAMODB
  install
  local run=$KCL_JAVA_RUN_DIR jars
  mkdir -p "$run"
  run=$(cd "$run" && pwd)
  if [ -f "$run/daemon.pid" ] && daemon_alive "$(cat "$run/daemon.pid")"; then
    die "a daemon (pid $(cat "$run/daemon.pid")) already runs in $run; stop it first"
  fi
  jars=$(jars_dir)
  cat >"$run/app.properties" <<PROPS
# Written by tests/java-kcl/java-kcl.sh
executableName = $VENV/bin/python $HERE/processor.py
streamName = $KCL_JAVA_STREAM
applicationName = $KCL_JAVA_APP
workerId = $KCL_JAVA_WORKER
processingLanguage = python/3
initialPositionInStream = TRIM_HORIZON
regionName = ${AWS_REGION:-us-east-1}
kinesisEndpoint = $AWS_ENDPOINT_URL_KINESIS
dynamoDBEndpoint = $AWS_ENDPOINT_URL_DYNAMODB
AwsCredentialsProvider = DefaultCredentialsProvider
retrievalMode = POLLING
metricsLevel = NONE
failoverTimeMillis = ${KCL_JAVA_FAILOVER_MS:-10000}
idleTimeBetweenReadsInMillis = 250
parentShardPollIntervalMillis = 1000
shardSyncIntervalMillis = 5000
shutdownGraceMillis = 30000
${KCL_JAVA_PROPERTIES:-}
PROPS
  : >>"$KCL_JAVA_RECORDS"
  log "starting the MultiLangDaemon (worker $KCL_JAVA_WORKER, application $KCL_JAVA_APP) in $run"
  (
    cd "$run"
    export AWS_REGION=${AWS_REGION:-us-east-1}
    export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
    export KCL_JAVA_RECORDS KCL_JAVA_WORKER PYTHONUNBUFFERED=1
    exec setsid java -Xmx512m -Daws.cborEnabled=false -Dlogback.configurationFile="$HERE/logback.xml" \
      -cp "$jars/*:$run" software.amazon.kinesis.multilang.MultiLangDaemon \
      --properties-file "$run/app.properties"
  ) </dev/null >"$run/daemon.log" 2>&1 8>&- &
  local pid=$!
  echo "$pid" >"$run/daemon.pid"
  sleep 0.5
  daemon_alive "$pid" || { tail -n 40 "$run/daemon.log" >&2; die "the daemon exited at once"; }
  echo "$pid"
}

stop() {
  need KCL_JAVA_RUN_DIR
  local run=$KCL_JAVA_RUN_DIR pid timeout=${KCL_JAVA_STOP_TIMEOUT:-60} t0=$SECONDS
  [ -f "$run/daemon.pid" ] || { log "nothing to stop in $run"; return 0; }
  pid=$(cat "$run/daemon.pid")
  if ! daemon_alive "$pid"; then
    log "daemon $pid in $run is not running"
    rm -f "$run/daemon.pid"
    return 0
  fi
  log "stopping daemon $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  while daemon_alive "$pid" && [ $((SECONDS - t0)) -lt "$timeout" ]; do sleep 0.2; done
  if daemon_alive "$pid"; then
    log "daemon $pid still alive after ${timeout}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while daemon_alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$run/daemon.pid"
  echo "stopped in $((SECONDS - t0))s"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 install|start|stop" ;;
esac
