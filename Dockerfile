# The immudb-replicator image (used as the sidecar in examples/kubernetes/).
# Installed as users install it: a wheel built from the source tree, then
# installed with its dependencies (tests/test_packaging.py checks that wheel).
FROM python:3.11-slim AS build
COPY . /src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin replicator
USER 10001
EXPOSE 8081
ENTRYPOINT ["replicator"]
CMD ["run", "-c", "/etc/immudb-replicator/replicator.yaml"]
