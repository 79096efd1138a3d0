"""The admin client against real immudb servers: the immudb-py workarounds."""
from __future__ import annotations

import pytest

from reconciler.admin import AlreadyExists, AuthenticationFailed, ImmudbAdmin, Unreachable
from reconciler.secret import Secret
from reconciler.state import PERMISSION_ADMIN, ReplicationSettings
from tests.support import immudb_data
from tests.support.configs import unique_name


def replication_settings(primary_server, database: str, user: str, password: str) -> ReplicationSettings:
    return ReplicationSettings(replica=True, primary_database=database, primary_host="127.0.0.1",
                               primary_port=primary_server.port, primary_username=user,
                               primary_password=Secret(password), prefetch_tx_buffer_size=100, commit_concurrency=10)


def _follower(primary, database: str, name: str, password: str) -> None:
    primary.create_user(name, Secret(password), PERMISSION_ADMIN, database)


def test_replica_created_from_raw_protobuf_catches_up_with_primary(primary_server, replica_server, primary, replica):
    db = unique_name()
    primary.create_database(db)
    written = immudb_data.write(primary_server, db, 25)
    follower = unique_name("fol")
    _follower(primary, db, follower, "F0llower-secret")

    settings = replication_settings(primary_server, db, follower, "F0llower-secret")
    replica.create_replica(db, settings, primary.limits(db))

    want, got = immudb_data.wait_caught_up(primary_server, replica_server, db, db)
    assert got == want
    assert immudb_data.read(replica_server, db, written) == written
    # the settings immudb stored are the ones we sent: password included (the immudb-py bug sent the username)
    info = {d.name: d for d in replica.list_databases()}[db]
    assert info.is_replica
    assert info.replication.primary_port == primary_server.port
    assert info.replication.primary_username == follower
    assert info.replication.primary_password.reveal() == "F0llower-secret"


def test_writes_after_creation_reach_the_replica(primary_server, replica_server, primary, replica):
    db = unique_name()
    primary.create_database(db)
    follower = unique_name("fol")
    _follower(primary, db, follower, "pw-Later-1")
    replica.create_replica(db, replication_settings(primary_server, db, follower, "pw-Later-1"))
    later = immudb_data.write(primary_server, db, 5, prefix="later")
    want, got = immudb_data.wait_caught_up(primary_server, replica_server, db, db)
    assert got == want
    assert immudb_data.read(replica_server, db, later) == later


def test_list_databases_reports_transaction_counts(primary_server, primary):
    db = unique_name()
    primary.create_database(db)
    immudb_data.write(primary_server, db, 7)
    info = {d.name: d for d in primary.list_databases()}[db]
    assert info.tx_count == immudb_data.state(primary_server, db)[0] == 7
    assert not info.is_replica and info.loaded


def test_creating_an_existing_database_is_refused_not_converted(primary_server, primary, replica):
    db = unique_name()
    replica.create_database(db)
    settings = replication_settings(primary_server, db, "x", "y-Password-1")
    with pytest.raises(AlreadyExists):
        replica.create_replica(db, settings)
    assert not {d.name: d for d in replica.list_databases()}[db].is_replica


def test_wrong_password_is_a_permanent_error_without_the_password(primary_server):
    admin = ImmudbAdmin("primary", "127.0.0.1", primary_server.port, "immudb", Secret("wrong-Secret-42"), timeout=5)
    with pytest.raises(AuthenticationFailed) as caught:
        admin.list_databases()
    assert not caught.value.temporary
    assert "wrong-Secret-42" not in str(caught.value)


def test_unreachable_server_is_a_temporary_error():
    from tests.support.servers import free_port
    admin = ImmudbAdmin("primary", "127.0.0.1", free_port(), "immudb", Secret("immudb"), timeout=2)
    with pytest.raises(Unreachable) as caught:
        admin.list_databases()
    assert caught.value.temporary


def test_expired_session_logs_in_again(primary, primary_server):
    primary.list_databases()
    primary._token = "not-a-valid-token"  # what a server restart or the 24 h expiry leaves behind
    assert any(d.name == "defaultdb" for d in primary.list_databases())


def test_follower_password_change_and_credentials_check(primary):
    db = unique_name()
    primary.create_database(db)
    name = unique_name("fol")
    primary.create_user(name, Secret("Old-pass-1"), PERMISSION_ADMIN, db)
    assert primary.check_credentials(name, Secret("Old-pass-1"))
    primary.change_password(name, Secret("New-pass-2"))
    assert primary.check_credentials(name, Secret("New-pass-2"))
    assert not primary.check_credentials(name, Secret("Old-pass-1"))


def test_replication_settings_round_trip_through_immudbs_message_field_by_field():
    """One table maps every ReplicationSettings field to immudb's message,
    both ways: a field missing from it fails here."""
    import dataclasses

    from reconciler.admin.convert import _REPLICATION_FIELDS, _replication_message, _replication_settings
    every = {f.name for f in dataclasses.fields(ReplicationSettings)}
    assert {mine for mine, _, _ in _REPLICATION_FIELDS} == every - {"primary_password"}
    settings = ReplicationSettings(replica=True, primary_database="shop", primary_host="10.0.0.5", primary_port=3323,
                                   primary_username="follower", primary_password=Secret("Pw-round-trip-1"),
                                   sync_replication=True, prefetch_tx_buffer_size=7, commit_concurrency=3,
                                   allow_tx_discarding=True, skip_integrity_check=True, wait_for_indexing=True)
    message = _replication_message(settings)
    assert message.syncAcks.value == 0
    back = _replication_settings(message, "shop")
    assert back == settings


def test_a_replay_immudb_refuses_names_the_refused_transaction_not_the_oldest_in_flight(replica):
    """Transaction 4's BlRoot wrong (immudb refuses it; 5 and 6, in flight,
    wait for it and fail too): the error names 4, and the database holds 3."""
    from reconciler.admin import ImmudbError
    from tests.support.exported import History
    h = History.of(6)
    h.txs[3].bl_root = bytes(32)
    for before, tx in zip(h.txs[3:], h.txs[4:], strict=False):
        tx.prev_alh = before.alh()
    name = unique_name("refused")
    replica.create_restore_database(name)
    try:
        with pytest.raises(ImmudbError, match="immudb refused transaction 4 .*the database holds 3 transactions"):
            replica.replicate(name, [(t.id, t.bytes()) for t in h.txs], in_flight=6)
        assert replica.state(name).tx_id == 3
    finally:
        replica.unload(name)
        replica.delete(name)


def test_the_servers_own_header_gives_the_alh_and_a_missing_transaction_is_none(primary_server, primary):
    db = unique_name()
    primary.create_database(db)
    immudb_data.write(primary_server, db, 3)
    state = primary.state(db)
    header = primary.tx_header(db, state.tx_id)
    assert (header.id, header.alh) == (state.tx_id, state.tx_hash)
    assert primary.tx_header(db, state.tx_id + 1) is None


def test_immudbs_answers_about_load_state_are_typed(primary_server, primary):
    """What reconcile, backup and shutdown decide on: immudb's own answers
    to loading a loaded database and unloading an unloaded one, as types
    (no module outside admin reads an error's text)."""
    from reconciler.admin import AlreadyLoaded, DatabaseClosed, NotLoaded
    db = unique_name()
    primary.create_database(db)
    with pytest.raises(AlreadyLoaded):
        primary.load(db)
    primary.unload(db)
    try:
        with pytest.raises((DatabaseClosed, NotLoaded)) as second:
            primary.unload(db)
        assert second.value.detail  # immudb's own words stay in the message
    finally:
        primary.load(db)
