# Redis from Debian's package, for machines that reach no registry (CI here): what
# docker/compose.local.yaml runs in place of redis:7-alpine. `make image` builds it on
# docker/base.sh's base. Same command line and health check as compose.yaml gives the official one.
ARG BASE=localhost/chatbot-base:bookworm
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
