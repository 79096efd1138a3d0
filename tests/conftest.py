"""Fixtures: the real servers (started once per session, on loopback), and
fresh admin clients. A server that cannot be built or started fails the
tests that need it with the reason; nothing is skipped silently.

Every test that needs servers (or the Go toolchain that builds immudb) is
marked `servers` here, from the fixtures it uses: `immudb_build` and the
four `*_server` fixtures. `scripts/test --unit` (pytest -m "not servers")
runs the others, and there any attempt to start a server fails the test, so
a test that starts servers without asking for those fixtures cannot hide."""
from __future__ import annotations

import itertools
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", "the imp module is deprecated", DeprecationWarning)

from tests import servers  # noqa: E402
from tests.servers import ImmudbServer, S3Server, ServerError, SftpServer  # noqa: E402

_names = itertools.count(1)

# fixtures that stand for real servers or the immudb build; a test using any of them,
# directly or through other fixtures, is marked `servers`
SERVER_FIXTURES = frozenset({"immudb_build", "primary_server", "replica_server", "sftp_server", "s3_server"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


def pytest_configure(config):
    if "not servers" in (config.option.markexpr or ""):
        servers.REFUSED = ("this run excludes tests that need servers, yet a test tried to start one: "
                           "let it use the immudb_build fixture (or a *_server fixture) so that it is "
                           "marked `servers`")


def unique_name(prefix: str = "db") -> str:
    """A database name no other test uses (immudb names: [a-z0-9_])."""
    return f"{prefix}{int(time.time() * 1000) % 10_000_000}_{next(_names)}"


@pytest.fixture(scope="session")
def server_root():
    root = Path(tempfile.mkdtemp(prefix="replicator-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _start(factory):
    try:
        return factory()
    except ServerError as exc:
        pytest.fail(f"test server unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def immudb_build():
    """immudb, immuadmin and immuclient built from the Go module proxy (cached): their folder."""
    return _start(servers.build_immudb)


@pytest.fixture(scope="session")
def primary_server(server_root, immudb_build):
    server = _start(lambda: ImmudbServer("primary", server_root / "primary").start())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def replica_server(server_root, immudb_build):
    server = _start(lambda: ImmudbServer("replica", server_root / "replica").start())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sftp_server(server_root):
    server = _start(lambda: SftpServer(server_root / "sftp").start())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(server_root):
    server = _start(lambda: S3Server(server_root / "s3").start())
    yield server
    server.stop()


def admin_for(server: ImmudbServer, name: str, timeout: float = 60):
    """An admin client for checks and set-up; its timeout is as generous as any
    the code under test uses (right after bulk creation a server may take many
    seconds to answer a login)."""
    from reconciler.admin import ImmudbAdmin
    from reconciler.secret import Secret
    return ImmudbAdmin(name, "127.0.0.1", server.port, server.username, Secret(server.password), timeout=timeout)


@pytest.fixture
def primary(primary_server):
    admin = admin_for(primary_server, "primary")
    yield admin
    admin.close()


@pytest.fixture
def replica(replica_server):
    admin = admin_for(replica_server, "replica")
    yield admin
    admin.close()


@pytest.fixture(autouse=True)
def _drop_new_databases(request):
    """Delete, after each test, the databases it created on the session's
    servers: every replica database is a replication session on the primary,
    and hundreds of idle ones keep it busy with logins."""
    used = [name for name in ("primary_server", "replica_server") if name in request.fixturenames]
    before = {}
    for name in used:
        server = request.getfixturevalue(name)
        with admin_for(server, name) as admin:
            before[name] = {d.name for d in admin.list_databases()}
    yield
    for name in reversed(used):  # replicas first: they stop following before their primary goes
        server = request.getfixturevalue(name)
        if server.process is None or not server.process.running():
            continue
        with admin_for(server, name) as admin:
            for db in admin.list_databases():
                if db.name in before[name]:
                    continue
                for step in (admin.unload, admin.delete):
                    try:
                        step(db.name)
                    except Exception:  # noqa: BLE001 - best effort: already unloaded, or busy
                        pass
