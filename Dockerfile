# syntax=docker/dockerfile:1
# ddnn-fog: the `ddnn` command (operator, server, gateway, agent, eval, up) with the shipped model
# bundles, for the operator's Pods: `args: [server]` runs `ddnn server`. How to build it here and
# elsewhere, what it writes at run time, and the arm/v7 behaviour: docs/image.md.
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t ddnn-fog:0.1.0 .
#   bash scripts/image/build.sh        (this machine: local base image, podman, npm secrets)
#
# A private npm registry or CA is passed as build secrets, never as layers or arguments; all are
# optional: --secret id=npmrc (user .npmrc), id=npmrc-global (global npmrc), id=ca (CA bundle, PEM).
ARG NODE_IMAGE=node:22-bookworm-slim

# Built on the build machine's own platform: every dependency is JavaScript (onnxruntime-node
# carries prebuilt binaries for every platform in its npm package), so a multi-arch build runs
# no emulated step; the target only decides which binaries are kept.
FROM --platform=$BUILDPLATFORM ${NODE_IMAGE} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
# onnxruntime-node's install script would download CUDA parts; the CPU build is in the package.
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=secret,id=npmrc \
    --mount=type=secret,id=npmrc-global \
    --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=cache,target=/root/.npm,sharing=locked \
    if [ -f /run/secrets/npmrc ]; then export NPM_CONFIG_USERCONFIG=/run/secrets/npmrc; fi; \
    if [ -f /run/secrets/npmrc-global ]; then export NPM_CONFIG_GLOBALCONFIG=/run/secrets/npmrc-global; fi; \
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt; fi; \
    npm ci --no-audit --no-fund --update-notifier=false --loglevel=error
COPY tsconfig.json tsconfig.build.json ./
COPY core ./core
COPY cli ./cli
COPY server ./server
COPY gateway ./gateway
COPY device-agent ./device-agent
COPY operator ./operator
COPY codegen ./codegen
COPY profile ./profile
RUN npm run build --silent \
 && npm prune --omit=dev --no-audit --no-fund --update-notifier=false --loglevel=error
# Keep only the target's onnxruntime-node binaries (the package holds ~290 MB for every OS and
# CPU). 32-bit ARM (linux/arm/v7, the Odroid-XU4) has none: there onnxruntime-node fails to load
# and the tiers run their stages on onnxruntime-web's WebAssembly build (core/bundle/backend.ts).
# Of onnxruntime-web, Node loads only its node entry and the plain SIMD wasm; the browser and
# WebGPU/WebGL builds (~120 MB) go, and so do source maps, TypeScript sources and declarations,
# and read-me files of every package (~55 MB). Where the build runs on the target's platform,
# the kept runtime is loaded once as a check.
RUN set -eu; \
    os=${TARGETOS:-linux}; arch=${TARGETARCH:-$(node -p 'process.arch === "x64" ? "amd64" : process.arch')}; \
    case "$os/$arch" in \
      linux/amd64) keep=linux/x64 ;; \
      linux/arm64) keep=linux/arm64 ;; \
      *) keep=none ;; \
    esac; \
    cd /src/node_modules/onnxruntime-node/bin/napi-v6; \
    for dir in */*; do [ "$dir" = "$keep" ] || rm -rf "$dir"; done; \
    find . -mindepth 1 -type d -empty -delete; \
    cd /src/node_modules/onnxruntime-web/dist; \
    for file in *; do \
      case "$file" in ort.node.min.mjs|ort.node.min.js|ort-wasm-simd-threaded.mjs|ort-wasm-simd-threaded.wasm) ;; *) rm -rf "$file" ;; esac; \
    done; \
    echo "onnxruntime-node binaries kept for $os/$arch: $keep"; \
    find /src/node_modules -type f \( -name '*.map' -o -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.md' \) -delete; \
    if [ "$keep" = "$(node -p 'process.platform + "/" + process.arch')" ]; then \
      node -e 'import("onnxruntime-node").then(() => console.log("onnxruntime-node loads"))'; \
    fi; \
    node -e 'import("onnxruntime-web").then(() => console.log("onnxruntime-web loads"))'

FROM ${NODE_IMAGE}
# Nothing is written under /app (owned by root, read-only to the user): the root filesystem can
# be mounted read-only. onnxruntime-node (1.30) would otherwise keep a telemetry device id and an
# event database under $XDG_CACHE_HOME or ~/.cache (Microsoft/DeveloperTools/.onnxruntime) and
# try to upload them: ORT_DISABLE_TELEMETRY=1 turns that off. HOME points at /tmp, the one
# writable place (an emptyDir in the Pods the operator writes), for anything that still wants a
# dot-file in a home directory.
ENV NODE_ENV=production \
    ORT_DISABLE_TELEMETRY=1 \
    HOME=/tmp
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The C runtime that `ddnn codegen c` copies next to a generated device program.
COPY codegen/c ./codegen/c
COPY models ./models
COPY config ./config
COPY crds ./crds
# Labels last: a new revision or version then changes no layer above.
ARG NODE_IMAGE
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="ddnn-fog" \
      org.opencontainers.image.description="Early-exit distributed DNNs across IoT devices, edge gateways and servers: the ddnn command (operator, server, gateway, device agent) with the shipped model bundles" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${NODE_IMAGE}" \
      org.opencontainers.image.documentation="docs/image.md"
# 65532: the conventional "nonroot" of distroless images; numeric so that runAsNonRoot can check it.
USER 65532:65532
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["--help"]
