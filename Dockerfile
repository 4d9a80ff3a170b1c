# syntax=docker/dockerfile:1
# coderd container image (see docs/operations.md, "The container").
#
#   docker build -t coderd .
#   docker run -d --name coderd --stop-timeout 60 -v coderd-state:/var/lib/coderd \
#     -e CODERD_AMQP_URL=amqp://... -e CODERD_CLIENT_SECRET_FILE=/run/secrets/client_secret \
#     -v /etc/coderd/client_secret:/run/secrets/client_secret:ro -p 127.0.0.1:9464:9464 coderd
#
# No secret is baked into any layer: the client secret comes at run time from
# CODERD_CLIENT_SECRET or a mounted file named by CODERD_CLIENT_SECRET_FILE.

# --- build: wheels of coderd and of every dependency -------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The dependencies exactly as locked (requirements/runtime.txt, written by scripts/lock): the
# released wheels, each checked against its hash, so that two builds hold the same packages.
COPY requirements/runtime.txt ./requirements/
RUN pip wheel --no-cache-dir --require-hashes --only-binary=:all: --wheel-dir /wheels \
      -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime ------------------------------------------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="coderd" \
      org.opencontainers.image.description="Occupation coding through the ABS coding API, fed by RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, numeric, non-root identity: volumes and mounted secret files can be owned by
# 10001:10001, and orchestrators can verify runAsNonRoot.
RUN groupadd --system --gid 10001 coderd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/coderd --no-create-home \
      --shell /usr/sbin/nologin coderd \
 && mkdir -p /var/lib/coderd/inbox /var/lib/coderd/outbox \
 && chown -R 10001:10001 /var/lib/coderd \
 && chmod 0750 /var/lib/coderd

# The wheels and the lock are bind-mounted from the build stage, so none of them stays in a
# layer. The dependencies are installed from the lock with their hashes checked again, then
# coderd without dependencies; pip check confirms that the lock satisfies coderd.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements,target=/requirements \
    pip install --no-cache-dir --no-index --find-links=/wheels --require-hashes \
      -r /requirements/runtime.txt \
 && pip install --no-cache-dir --no-index --no-deps /wheels/coderd-*.whl \
 && pip check

ENV CODERD_STATE_DIR=/var/lib/coderd \
    CODERD_INBOX_DIR=/var/lib/coderd/inbox \
    CODERD_OUTBOX_DIR=/var/lib/coderd/outbox \
    CODERD_HTTP_LISTEN=0.0.0.0:9464
VOLUME ["/var/lib/coderd"]
WORKDIR /var/lib/coderd
EXPOSE 9464

USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=3)"]
# coderd drains on SIGTERM: give it time (docker run/stop --stop-timeout 60, or
# terminationGracePeriodSeconds: 60), as requests in flight get 20 s before they are handed back.
STOPSIGNAL SIGTERM
ENTRYPOINT ["coderd"]
CMD ["run"]
