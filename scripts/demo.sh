#!/usr/bin/env bash
# The main job on a fresh machine: start the services (installing them when
# missing), build, and run the demo. Extra arguments go to `crmsync demo`
# (for example `--scale 5` for a bigger data set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --release --locked --bin crmsync
exec target/release/crmsync demo "$@"
