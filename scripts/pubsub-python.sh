#!/usr/bin/env bash
# The Python Pub/Sub API client of the wire-compatibility test
# (tests/python/pubsub_client.py, run by tests/pubsub.rs): a client that is
# not crmsync's, generated from the proto Salesforce publishes.
#
# Installed on first use into .ci-tools/pubsub-python/ (git-ignored;
# override the directory with CRMSYNC_TOOLS_DIR), pinned:
#   PyPI  grpcio-tools, grpcio, protobuf, avro (scripts/pubsub-tools.txt)
#   npm   salesforce-pubsub-api-client@5.5.2, for the pubsub_api.proto it
#         ships (Salesforce's published file, checked by its SHA-256)
# The stubs are generated there by grpcio-tools. A second run reuses it all
# (a stamp over this script and the pins), so it is quick and changes
# nothing. Prints the venv's python on stdout; logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOOLS=${CRMSYNC_TOOLS_DIR:-$ROOT/.ci-tools}
DIR=$TOOLS/pubsub-python
PROTO_NPM=salesforce-pubsub-api-client@5.5.2
PROTO_SHA256=0a651295ff3ff13551b3ae7cb6fe87cf91b749a8ae33b6079617dbc62f304eb5

log() { printf '[pubsub-python] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

mkdir -p "$TOOLS"
# Tests run in parallel: one installs, the others wait for it.
exec 9>"$TOOLS/.pubsub-python.lock"
flock 9

want=$(cat scripts/pubsub-tools.txt scripts/pubsub-python.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$DIR/.stamp" 2>/dev/null)" != "$want" ]; then
  log "installing the Python Pub/Sub client into $DIR (PyPI pins in scripts/pubsub-tools.txt, proto from npm $PROTO_NPM)"
  rm -rf "$DIR"
  mkdir -p "$DIR/published" "$DIR/gen"
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check --no-deps -r scripts/pubsub-tools.txt >&2
  dl=$(mktemp -d)
  (cd "$dl" && npm pack --silent "$PROTO_NPM" >/dev/null 2>&1) || die "npm pack $PROTO_NPM failed"
  tar -xzf "$dl"/*.tgz -C "$dl" package/pubsub_api.proto
  echo "$PROTO_SHA256  $dl/package/pubsub_api.proto" | sha256sum -c --quiet - >&2 ||
    die "the pubsub_api.proto in $PROTO_NPM is not the one this test was written against"
  cp "$dl/package/pubsub_api.proto" "$DIR/published/"
  rm -rf "$dl"
  "$DIR/venv/bin/python" -m grpc_tools.protoc -I "$DIR/published" --python_out "$DIR/gen" --grpc_python_out "$DIR/gen" pubsub_api.proto
  echo "$want" >"$DIR/.stamp"
fi
echo "$DIR/venv/bin/python"
