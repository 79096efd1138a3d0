# The immudb-replicator image (used as the sidecar in examples/kubernetes/).
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
COPY schemas ./schemas
RUN pip install --no-cache-dir . && rm -rf /src \
    && useradd --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin replicator
USER 10001
EXPOSE 8081
ENTRYPOINT ["replicator"]
CMD ["run", "-c", "/etc/immudb-replicator/replicator.yaml"]
