#!/usr/bin/env bash
# Starts moto's server (moto[server] from PyPI, pinned) for the CloudWatch metrics tests and the
# DynamoDB Streams ones, on loopback only: one process serving every AWS service moto emulates;
# the tests use CloudWatch, DynamoDB and DynamoDB Streams (and the virtualenv's boto3, which
# moto depends on, to write a table's changes).
# moto is installed into a virtualenv under the project's emulator directory (no global installs),
# with cbor2: moto runs behind localstack/moto-cbor.py, which adds the Smithy RPC v2 CBOR protocol
# that the Rust SDK's CloudWatch client speaks (moto serves CloudWatch's JSON and query ones).
#
# stdout carries ONLY `export K=V` lines (the same contract as start-emulators.sh), so
#   eval "$(localstack/start-moto.sh)"
# works. Progress and errors go to stderr.
#
# Idempotent: a moto whose pid file names a live process that answers on the requested port is
# reused. Safe to run concurrently (flock on $DIR/run/moto.lock). Stop it with
# localstack/stop-moto.sh (by its pid file).
#
# Environment:
#   KCL_EMULATOR_DIR   install/run directory (default: <repo>/localstack/.emulators)
#   KCL_MOTO_PORT      moto's HTTP port      (default: 4569)
#   KCL_MOTO_TIMEOUT   seconds to wait for moto to answer (default: 120)
#   KCL_PYTHON         the Python (>= 3.9) to create the virtualenv with (default: python3)
set -euo pipefail

MOTO_VERSION=5.2.5
CBOR2_VERSION=6.2.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${KCL_EMULATOR_DIR:-$ROOT/localstack/.emulators}
PORT=${KCL_MOTO_PORT:-4569}
TIMEOUT=${KCL_MOTO_TIMEOUT:-120}
PYTHON=${KCL_PYTHON:-python3}
RUN=$DIR/run

log() { printf '[start-moto] %s\n' "$*" >&2; }
die() { printf '[start-moto] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in "$PYTHON" curl flock setsid; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not on PATH"
done
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "bad port: $PORT"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "KCL_MOTO_TIMEOUT must be a whole number of seconds"

mkdir -p "$RUN"
DIR=$(cd "$DIR" && pwd)
RUN=$DIR/run
VENV=$DIR/moto-venv

# One start at a time (parallel test binaries). fd 9 must not leak into moto (9>&- below).
exec 9>"$RUN/moto.lock"
flock -w 600 9 || die "timed out waiting for $RUN/moto.lock"

# ---------------------------------------------------------------------------------------------
# Install (skipped when the pinned version is already there)
# ---------------------------------------------------------------------------------------------
installed_version() { # <distribution>
  "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true
}

if [ ! -x "$VENV/bin/python" ]; then
  log "creating a virtualenv in $VENV"
  "$PYTHON" -m venv "$VENV" 1>&2 || die "cannot create a virtualenv with $PYTHON -m venv (Debian: apt-get install python3-venv)"
fi
if [ "$(installed_version moto)" != "$MOTO_VERSION" ] || [ "$(installed_version cbor2)" != "$CBOR2_VERSION" ]; then
  log "installing moto[server]==${MOTO_VERSION} cbor2==${CBOR2_VERSION} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto[server]==${MOTO_VERSION}" "cbor2==${CBOR2_VERSION}" 1>&2 ||
    die "pip install moto[server]==${MOTO_VERSION} cbor2==${CBOR2_VERSION} failed"
  [ "$(installed_version moto)" = "$MOTO_VERSION" ] || die "moto ${MOTO_VERSION} not installed"
  [ "$(installed_version cbor2)" = "$CBOR2_VERSION" ] || die "cbor2 ${CBOR2_VERSION} not installed"
fi

# ---------------------------------------------------------------------------------------------
# Start (or reuse)
# ---------------------------------------------------------------------------------------------
answers() { # CloudWatch's ListMetrics (query protocol) answers 200
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 -X POST "http://127.0.0.1:$PORT/" \
    -H 'Content-Type: application/x-www-form-urlencoded' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/monitoring/aws4_request, SignedHeaders=host, Signature=0' \
    -d 'Action=ListMetrics&Version=2010-08-01' 2>/dev/null || true)" = 200 ]
}

port_open() {
  local rc=0
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/" 2>/dev/null || rc=$?
  [ "$rc" -ne 7 ] && [ "$rc" -ne 28 ]
}

our_pid_alive() {
  local pid
  pid=$(cat "$RUN/moto.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "moto-cbor.py" || return 1
}

fail_with_log() {
  {
    printf '[start-moto] ERROR: %s\n' "$1"
    printf '[start-moto] --- last 40 lines of %s ---\n' "$RUN/moto.log"
    tail -n 40 "$RUN/moto.log" 2>/dev/null || true
  } >&2
  exit 1
}

if our_pid_alive; then
  had_port=$(cat "$RUN/moto.port" 2>/dev/null || true)
  [ "$had_port" = "$PORT" ] ||
    die "moto (pid $(cat "$RUN/moto.pid")) runs on port ${had_port:-?}, not $PORT; run localstack/stop-moto.sh first"
  log "moto: reusing pid $(cat "$RUN/moto.pid") on 127.0.0.1:$PORT"
else
  rm -f "$RUN/moto.pid" "$RUN/moto.port"
  if port_open; then
    die "port $PORT (for moto) is already in use by a process this script did not start; stop it or choose another port (KCL_MOTO_PORT)"
  fi
  log "moto: starting on 127.0.0.1:$PORT (log $RUN/moto.log)"
  # Detached as the emulators are: own session, stdin from /dev/null, output to its log, the
  # lock fd closed; setsid execs in place, so $! is moto's pid.
  (
    cd "$RUN"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
    exec setsid "$VENV/bin/python" "$ROOT/localstack/moto-cbor.py" 127.0.0.1 "$PORT"
  ) </dev/null >"$RUN/moto.log" 2>&1 9>&- &
  echo $! >"$RUN/moto.pid"
  echo "$PORT" >"$RUN/moto.port"
  started=$SECONDS
  pid=$(cat "$RUN/moto.pid")
  until answers; do
    kill -0 "$pid" 2>/dev/null || fail_with_log "moto (pid $pid) exited before answering on port $PORT"
    [ $((SECONDS - started)) -lt "$TIMEOUT" ] || fail_with_log "moto (pid $pid) did not answer on port $PORT within ${TIMEOUT}s"
    sleep 0.1
  done
  log "moto: ready in $((SECONDS - started))s"
fi

flock -u 9

printf 'export AWS_ENDPOINT_URL_CLOUDWATCH=http://127.0.0.1:%s\n' "$PORT"
printf 'export AWS_REGION=us-east-1\n'
printf 'export AWS_ACCESS_KEY_ID=test\n'
printf 'export AWS_SECRET_ACCESS_KEY=test\n'
