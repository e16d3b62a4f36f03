#!/usr/bin/env bash
# The fault-injection suite (tests/faults.rs), alone: it kills and pauses
# tier replicas and restarts this machine's RabbitMQ, Redis and PostgreSQL
# while a data set syncs, then checks that nothing was lost, doubled, left
# stale or stuck, and prints what it injected and verified.
#
#   bash scripts/faults.sh [--seed N] [--duration SECS] [--mode direct|http|both]
#
# The seed fixes the schedule of faults and the edits (printed first, so a
# failing run can be repeated); the duration is how long faults keep coming
# in each mode (every kind occurs at least once). Never run it alongside
# other tests: the services it restarts are shared. They are all left
# running when it ends, whatever happened.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=both
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) export FAULTS_SEED="$2"; shift 2 ;;
    --duration) export FAULTS_SECS="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "faults.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$mode" in
  direct) filter=(directly) ;;
  http) filter=(over_http) ;;
  both) filter=() ;;
  *) echo "faults.sh: --mode is direct, http or both" >&2; exit 2 ;;
esac

echo "[faults] seed ${FAULTS_SEED:-20261124 (default)}, ${FAULTS_SECS:-60} s of faults per mode, mode $mode"
# The suite restarts the Debian-packaged services, never a compose stack.
# (Not exported: crmsync's configuration refuses unknown CRMSYNC_* keys.)
CRMSYNC_NO_DOCKER=1 bash scripts/services.sh
trap 'CRMSYNC_NO_DOCKER=1 bash scripts/services.sh' EXIT

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p crmsync-tests --test faults --run-ignored only --test-threads 1 --locked --no-capture "${filter[@]}"
else
  cargo test -p crmsync-tests --test faults --locked -- --ignored --test-threads 1 --nocapture "${filter[@]}"
fi
