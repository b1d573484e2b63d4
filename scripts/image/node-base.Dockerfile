# The local stand-in of the official node:<major>-bookworm-slim image (scripts/image/base.sh):
# the Node binary and npm laid out as the official image has them. The build context holds
# `node` (the binary pinned by scripts/node-runtime.sh) and `npm/` (the registry's npm package).
# npm enables Node's compile cache under /tmp: the check below leaves none in the layer, where a
# container's /tmp tmpfs would copy it up.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version \
 && rm -rf /tmp/node-compile-cache
CMD ["node"]
