"""Checks on the real servers, shared by the tests."""
from __future__ import annotations

from tests.support import immudb_data


def is_unloaded(replica, name: str) -> bool:
    """Whether database `name` is unloaded. immudb before 1.11.1 cannot list
    while any database is unloaded: there, a failed listing counts as yes
    (for tests that unload nothing else)."""
    from reconciler.admin import DatabaseClosed
    try:
        return not {d.name: d for d in replica.list_databases()}[name].loaded
    except DatabaseClosed:
        return True


def assert_all_loaded(replica, names) -> None:
    """Every one of `names` is loaded on the replica. A replica that does
    not answer at once (busy loading hundreds of databases again after a
    backup, on a busy machine) is asked again until it answers."""
    from reconciler.admin import Unreachable
    from tests.support.waiting import wait_for

    def listing() -> dict | None:
        try:
            return {d.name: d for d in replica.list_databases()}
        except Unreachable:
            return None
    infos = wait_for(listing, 60, f"{replica.name} to answer a listing", interval=0.5)
    assert all(infos[n].loaded for n in names), {n: infos[n].loaded for n in names}


def assert_follows(primary_server, replica_server, primary_db: str, replica_db: str, timeout: float = 30) -> None:
    """The replica database reaches the primary database's transaction id and hash."""
    want, got = immudb_data.wait_caught_up(primary_server, replica_server, primary_db, replica_db, timeout=timeout)
    assert got == want, f"{replica_db} did not catch up with {primary_db}: {got} != {want}"


def assert_restores(tmp_path, archive_stream, names, written, manifest_states) -> None:
    """Restore into an empty data dir, start immudb on it: same keys, tx id and hash."""
    from reconciler.backup.restore import restore
    from tests.support.configs import unique_name
    from tests.support.servers import ImmudbServer
    server = ImmudbServer("restored", tmp_path / f"restored-{unique_name('r')}")
    result = restore(archive_stream, server.data_dir)
    assert sorted(result.databases) == sorted(names)
    server.start()
    try:
        for n in names:
            tx_id, tx_hash = immudb_data.state(server, n)
            assert (tx_id, tx_hash.hex()) == manifest_states[n]
            assert immudb_data.read(server, n, written[n]) == written[n]
    finally:
        server.stop()
