# A local stand-in for the public eclipse-mosquitto:2 image, the operator's default broker image,
# built from Debian's mosquitto package (scripts/image/build.sh tags it eclipse-mosquitto:2). It
# has what the operator's broker Deployment relies on (operator/builders.ts): `mosquitto` on the
# PATH, the configuration at /mosquitto/config/mosquitto.conf (a ConfigMap mounted read-only
# there), and a mosquitto user 1883:1883 that the Pod runs as. Like the upstream image, the
# default configuration sets nothing, so Mosquitto 2 listens on the loopback interface only.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN groupadd --system --gid 1883 mosquitto \
 && useradd --system --uid 1883 --gid 1883 --no-create-home --home-dir /mosquitto/data \
      --shell /usr/sbin/nologin mosquitto \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
 && echo '# Mount a mosquitto.conf here (the operator mounts its ConfigMap).' > /mosquitto/config/mosquitto.conf \
 && chown -R 1883:1883 /mosquitto/data /mosquitto/log \
 && mosquitto -h | head -1
LABEL org.opencontainers.image.title="eclipse-mosquitto (local stand-in)" \
      org.opencontainers.image.description="Debian's mosquitto package laid out like eclipse-mosquitto:2 for the ddnn-fog test bed" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
EXPOSE 1883
USER 1883:1883
CMD ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
