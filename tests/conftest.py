"""Fixtures: the real servers (started once per session, on loopback), and
fresh admin clients. A server that cannot be built or started fails the
tests that need it with the reason; nothing is skipped silently.

Every test that needs servers (or the Go toolchain that builds immudb) is
marked `servers` here, from the fixtures it uses: `immudb_build` and the
four `*_server` fixtures. `scripts/test --unit` (pytest -m "not servers")
runs the others, and there any attempt to start a server fails the test, so
a test that starts servers without asking for those fixtures cannot hide."""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", "the imp module is deprecated", DeprecationWarning)

from reconciler import config  # noqa: E402
from reconciler.reconcile import Reconciler  # noqa: E402
from tests.support import immudb_data, servers  # noqa: E402
from tests.support.configs import unique_name, write_config  # noqa: E402
from tests.support.servers import ImmudbServer, S3Server, ServerError, SftpServer, admin_for  # noqa: E402

# fixtures that stand for real servers or the immudb build; a test using any of them,
# directly or through other fixtures, is marked `servers`
SERVER_FIXTURES = frozenset({"immudb_build", "primary_server", "replica_server", "sftp_server", "s3_server"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that started daemons shows the end of each one's log:
    a CI failure then says what the daemon was doing, not only what the
    test waited for."""
    from tests.support import daemon
    if call.when == "setup":
        item._daemons_before = len(daemon.STARTED)
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for n, d in enumerate(daemon.STARTED[getattr(item, "_daemons_before", 0):]):
            report.sections.append((f"daemon {n} log (end)", d.tail()))


def pytest_configure(config):
    if "not servers" in (config.option.markexpr or ""):
        servers.REFUSED = ("this run excludes tests that need servers, yet a test tried to start one: "
                           "let it use the immudb_build fixture (or a *_server fixture) so that it is "
                           "marked `servers`")


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
    # it signs its states (--signingKey): the signed anchor of backups (reconciler/trust) is tested against it
    server = _start(lambda: ImmudbServer("primary", server_root / "primary", signing=True).start())
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


def _list_loading(admin, server):
    """The server's databases. immudb before 1.11.1 cannot list them while
    one is unloaded (a test of that may leave one so): then every database
    folder is loaded first, so that the next test starts from a server that
    answers."""
    from reconciler.admin import DatabaseClosed, ImmudbError
    try:
        return admin.list_databases()
    except DatabaseClosed:
        pass
    for folder in sorted(p.name for p in server.data_dir.iterdir() if p.is_dir()):
        try:
            admin.load(folder)
        except ImmudbError:
            pass  # loaded already, or not a database
    return admin.list_databases()


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
            before[name] = {d.name for d in _list_loading(admin, server)}
    yield
    for name in reversed(used):  # replicas first: they stop following before their primary goes
        server = request.getfixturevalue(name)
        if server.process is None or not server.process.running():
            continue
        with admin_for(server, name) as admin:
            for db in _list_loading(admin, server):
                if db.name in before[name]:
                    continue
                for step in (admin.unload, admin.delete):
                    try:
                        step(db.name)
                    except Exception:  # noqa: BLE001 - best effort: already unloaded, or busy
                        pass


@pytest.fixture
def pair(tmp_path, immudb_build):
    """A primary and a replica of this test's own."""
    started = []

    def make(*primary_args: str, replica_args: tuple[str, ...] = ()):
        p = ImmudbServer("fp", tmp_path / "p", extra_args=primary_args).start()
        started.append(p)
        r = ImmudbServer("fr", tmp_path / "r", extra_args=replica_args).start()
        started.append(r)
        return p, r

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def replicated(tmp_path, primary_server, replica_server, primary):
    """Three replica databases with data, caught up; returns (prefix, names, written)."""
    prefix = unique_name("bk") + "_"
    names = [f"{prefix}{i}" for i in range(3)]
    written = {}
    for n in names:
        primary.create_database(n)
        written[n] = immudb_data.write(primary_server, n, 20, prefix=n)
    rec = Reconciler.from_config(config.load(write_config(tmp_path, primary_server, replica_server, prefix), env={}))
    assert rec.run_pass().ok
    rec.close()
    for n in names:
        want, got = immudb_data.wait_caught_up(primary_server, replica_server, n, n)
        assert got == want
    return prefix, names, written


@pytest.fixture
def big_replica(tmp_path, primary_server, replica_server, primary):
    """make(prefix, blobs): a replica database `<prefix>big` of `blobs` x 512
    KiB random values, caught up; its name."""
    def make(prefix: str, blobs: int) -> str:
        name = f"{prefix}big"
        primary.create_database(name)
        immudb_data.write_blobs(primary_server, name, blobs)
        path = write_config(tmp_path, primary_server, replica_server, prefix, name=f"{unique_name('big')}.yaml")
        rec = Reconciler.from_config(config.load(path, env={}))
        assert rec.run_pass().ok
        rec.close()
        assert immudb_data.wait_caught_up(primary_server, replica_server, name, name, timeout=60)[1] is not None
        return name
    return make


@pytest.fixture
def followed(tmp_path, primary_server, replica_server, primary):
    """make(count): a primary database with `count` transactions and its
    replica, caught up; (prefix, name)."""
    def make(count: int = 10) -> tuple[str, str]:
        prefix = unique_name("jr") + "_"
        name = f"{prefix}db"
        primary.create_database(name)
        if count:
            immudb_data.write(primary_server, name, count, prefix="early")
        rec = Reconciler.from_config(config.load(write_config(tmp_path, primary_server, replica_server, prefix,
                                                              name=f"{prefix}.yaml"), env={}))
        assert rec.run_pass().ok
        rec.close()
        want, got = immudb_data.wait_caught_up(primary_server, replica_server, name, name)
        assert got == want
        return prefix, name
    return make
