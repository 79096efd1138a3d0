# The immudb-replicator image (used as the sidecar and the restoring init
# container in examples/kubernetes/). Installed as users install it: a wheel
# built from the source tree, then installed with its dependencies
# (tests/test_packaging.py checks that wheel). It carries an immudb server of
# the version the tests run (tests/support/servers.py IMMUDB_VERSION; the test
# suite checks they agree), built here from the Go module the same way, so
# that drills and `restore --data-dir` / `--all` run inside it.
ARG IMMUDB_VERSION=1.11.1

FROM golang:1.25-bookworm AS immudb
ARG IMMUDB_VERSION
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
RUN dir="$(go mod download -json github.com/codenotary/immudb@v${IMMUDB_VERSION} \
        | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')" \
    && cd "$dir" \
    && go build -ldflags "-X github.com/codenotary/immudb/cmd/version.Version=${IMMUDB_VERSION}" \
        -o /out/immudb ./cmd/immudb \
    && /out/immudb version

FROM python:3.11-slim AS build
COPY . /src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim
COPY --from=immudb /out/immudb /usr/local/bin/immudb
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin replicator
USER 10001
EXPOSE 8081
ENTRYPOINT ["replicator"]
CMD ["run", "-c", "/etc/immudb-replicator/replicator.yaml"]
