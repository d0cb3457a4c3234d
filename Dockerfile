# syntax=docker/dockerfile:1.7
#
# weir container image: a build stage on the official Rust image (Debian
# bookworm) and a distroless runtime (glibc + libgcc + CA certificates, no shell,
# runs as uid 65532).
#
#   docker build -t weir:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/my-weir.yaml:/etc/weir/weir.yaml:ro" -e OPENAI_API_KEY -e WEIR_ADMIN_TOKEN weir:0.1.0
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts:
# the cargo registry and target/ survive between builds on the same builder,
# so a source-only change recompiles weir, not its ~400 dependencies.
# (A CI builder without a persistent cache starts cold each time; export the
# cache with `docker buildx build --cache-to/--cache-from` if that matters.)
#
# Wasm plugins (plugins/*) are optional runtime files, not part of the binary.
# To ship some in the image, build them on the host first
# (`bash plugins/build.sh`, needs the wasm32-wasip1 target) and add to the
# runtime stage below, e.g.
#
#   COPY plugins/pii-redactor/pii-redactor.wasm /usr/local/lib/weir/plugins/
#
# then name them by absolute path in weir.yaml
# (`module: /usr/local/lib/weir/plugins/pii-redactor.wasm`). Do not put them
# under /etc/weir: in Kubernetes the ConfigMap is mounted there and hides
# whatever the image has in that directory. (A small module, < 1 MiB, can
# instead ride in the ConfigMap's binaryData.)

ARG RUST_VERSION=1

# ---------------------------------------------------------------- build ----
FROM rust:${RUST_VERSION}-bookworm AS build

# cmake: libz-ng-sys (Pingora's compression) builds zlib-ng with it. The rest
# of the native code (ring, zstd-sys) only needs the C compiler the rust image
# already has. No OpenSSL: Pingora runs with its rustls feature.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake

WORKDIR /src

# Only what `cargo build --bin weir` reads. benches/ is needed although nothing
# in it is built: Cargo.toml declares [[bench]] and [[example]] targets there,
# and cargo refuses a manifest whose declared targets are missing.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches

# 1 = drop DWARF (the release profile keeps line tables, `debug = 1`), keeping
# the symbol table so panics and backtraces still name functions. 0 = keep all.
ARG STRIP_DEBUG=1

# target/ is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin weir \
 && install -D -m 0755 target/release/weir /out/weir \
 && if [ "$STRIP_DEBUG" = 1 ]; then strip --strip-debug /out/weir; fi \
 && /out/weir --version

# -------------------------------------------------------------- runtime ----
# distroless/cc: glibc, libgcc_s, CA certificates, /etc/passwd with nonroot
# (65532). No shell, no package manager: `kubectl exec ... sh` does not work,
# and a Kubernetes preStop hook must use the `sleep` action, not `exec: sleep`.
# If you need a shell, use instead:
#   FROM debian:bookworm-slim
#   RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
#    && rm -rf /var/lib/apt/lists/*
# and keep the rest of this stage as it is.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

COPY --from=build /out/weir /usr/local/bin/weir

# Proxy (server.listen) and admin API (admin.listen) as in
# deploy/kubernetes/configmap.yaml. Both configs must say 0.0.0.0: the README's
# defaults bind loopback, which a container cannot be reached on. An admin
# listener off loopback requires admin.token (weir refuses the config otherwise).
EXPOSE 8080 9901

USER 65532:65532
WORKDIR /

# SIGTERM: Pingora's graceful terminate (stop accepting, finish what is in
# flight). SIGINT would be its fast shutdown; SIGQUIT its binary-upgrade hand-off.
STOPSIGNAL SIGTERM

ENTRYPOINT ["weir"]
CMD ["serve", "-c", "/etc/weir/weir.yaml"]
