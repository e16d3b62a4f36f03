# syntax=docker/dockerfile:1
#
# One image for every crmsync process: the tiers, `migrate`, the operator
# commands and `sandbox serve`:
#
#   docker build -t crmsync:local .
#   docker run --rm crmsync:local producer|matcher|applier|migrate|status ...
#
# Stages: `chef` (toolchain + cargo-chef), `planner` (the dependency recipe),
# `builder` (dependencies cooked in their own cached layer, then our crates),
# `runtime` (the binary on a slim Debian, non-root).
#
# No SQLX_OFFLINE / .sqlx metadata and no DATABASE_URL are needed at build
# time: the code uses no compile-time-checked `query!` macros, only
# `sqlx::migrate!`, which embeds `migrations/` and
# `crates/sandbox/migrations/` from the build context.
#
# Versions are pinned by tag; pin by digest as well in a registry you control
# (the digests cannot be looked up from the machine this was written on).

# Rust 1.95: Cargo.toml's rust-version says 1.88, but the locked sqlx 0.9.0
# crates declare rust-version 1.94, so 1.94 is the real floor; 1.95 is the
# toolchain the test suite and clippy run with. Bookworm to match the runtime's
# glibc.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:12.11-slim

FROM ${RUST_IMAGE} AS chef
# cargo-chef turns the workspace's manifests and lock file into a "recipe", so
# the (slow) dependency build is a layer that only changes when Cargo.lock or
# a manifest does, not on every source edit. Built from crates.io with its
# own lock file, pinned.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The build environment (jemalloc's settings) before the dependencies are
# cooked, or they would be built again once the sources are copied.
COPY .cargo .cargo
# Dependencies only: cached until the recipe changes. rustls uses ring, so the
# C compiler that the rust image ships is all that is needed (no OpenSSL).
RUN cargo chef cook --release --locked --bin crmsync --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin crmsync \
    && install -D -m 0755 target/release/crmsync /out/crmsync

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: TLS to Salesforce and the other APIs is always verified
# against the platform's roots. Nothing else: no curl, no shell tools beyond
# the base (compose's health check uses bash's /dev/tcp; Kubernetes probes
# need nothing in the image). Versions follow the pinned Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it without
# reading /etc/passwd, and mounted secrets can be given to this group.
RUN groupadd --system --gid 10001 crmsync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin crmsync
COPY --from=builder /out/crmsync /usr/local/bin/crmsync
USER 10001:10001
# /metrics, /livez and /readyz (CRMSYNC_TELEMETRY__HTTP_LISTEN, default
# 0.0.0.0:9464).
EXPOSE 9464
# No HEALTHCHECK here: the same image runs one-shot commands (migrate,
# status), which must not be reported unhealthy; docker-compose.yml checks
# /readyz on the long-running tiers and Kubernetes uses its own probes.
ENTRYPOINT ["crmsync"]
CMD ["--help"]
