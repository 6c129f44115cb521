# syntax=docker/dockerfile:1
#
# infergate: a multi-stage build. The release binary is built by the same `make ort build`
# that a developer and CI run; dependencies are compiled in their own cached layer (cargo-chef),
# so a source change rebuilds only infergate's crates. The runtime image is Debian slim with
# the binary, the ONNX Runtime library, and a non-root user; nothing else.
#
#   docker build -t infergate .
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/models/repository:/models:ro" infergate

ARG RUST_VERSION=1.95.0
ARG ORT_VERSION=1.31.1

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency graph only: changes when Cargo.toml or Cargo.lock change.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p infergate-server --bin infergate -p infergate-trainer --bin infergate-train
COPY . .
# The project's own set-up: ONNX Runtime into .ort/, then the release binaries.
RUN make ort build

FROM debian:bookworm-slim AS runtime
ARG ORT_VERSION
# CA certificates: TLS to an object-storage registry (S3) checks the system roots.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 infergate \
    && useradd --system --uid 10001 --gid infergate --home-dir /nonexistent --shell /usr/sbin/nologin infergate \
    && mkdir -p /models /etc/infergate \
    && chown infergate:infergate /models
COPY --from=build /src/target/release/infergate /usr/local/bin/infergate
COPY --from=build /src/.ort/libonnxruntime.so.${ORT_VERSION} /opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    INFERGATE_LOG__FORMAT=json
USER 10001:10001
# 8000 KServe V2 HTTP, 8001 KServe V2 gRPC, 8002 admin (metrics, management API with tokens).
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["infergate", "health", "--addr", "127.0.0.1:8000"]
ENTRYPOINT ["infergate"]
# Mount a model repository at /models (or a registry and pass --registry); add a config file
# with --config /etc/infergate/infergate.toml for tokens, TLS and routes.
CMD ["serve", "--model-repository", "/models"]
