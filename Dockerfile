# Build stage: a virtualenv with Sluice and its dependencies.
FROM python:3.11-slim-bookworm AS build
RUN python -m venv /venv
COPY pyproject.toml README.md /src/
COPY stream /src/stream
COPY volume /src/volume
COPY engine_client /src/engine_client
RUN /venv/bin/pip install --no-cache-dir /src

# Runtime stage: only the virtualenv, the config and an unprivileged user.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends qemu-utils \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/sluice --uid 36 sluice
COPY --from=build /venv /venv
COPY conf/container.toml /etc/sluice/sluice.toml
USER sluice
WORKDIR /var/lib/sluice
EXPOSE 54322
ENTRYPOINT ["/venv/bin/sluice", "serve", "--config", "/etc/sluice/sluice.toml"]
