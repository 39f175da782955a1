# syntax=docker/dockerfile:1.7
# One image per binary of the workspace:
#
#   docker build --build-arg BIN=inventory -t stockmesh/inventory:dev .
#
# BIN is one of user, product, inventory, order, notification, web,
# stockmesh-operator (and loadgen). Stages:
#   chef     Rust toolchain + cargo-chef
#   planner  computes the dependency "recipe" from the manifests only
#   builder  builds the dependencies from the recipe (a layer shared by all
#            images and reused until Cargo.toml/Cargo.lock change), then
#            the binary; BuildKit cache mounts keep the crate registry.
#   runtime  distroless cc (glibc, CA certificates), user 65532, no shell.
# No system protoc is needed: the proto crate uses protoc-bin-vendored.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
# sqlx query macros read .sqlx/ (no database at build time).
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked --workspace --recipe-path recipe.json
COPY . .
# Declared here, after the dependency layer, so all six images share it.
ARG BIN
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    test -n "${BIN}" || { echo "--build-arg BIN=<binary> is required" >&2; exit 1; } \
    && cargo build --release --locked --bin "${BIN}" \
    && install -D -m 0755 "target/release/${BIN}" /out/app

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG BIN
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="stockmesh-${BIN}" \
      org.opencontainers.image.description="stockmesh ${BIN}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/stockmesh/stockmesh" \
      org.opencontainers.image.url="https://github.com/stockmesh/stockmesh" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="stockmesh" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder --chown=0:0 /out/app /usr/local/bin/app
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/app"]
