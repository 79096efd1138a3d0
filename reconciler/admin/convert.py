"""protobuf messages <-> the values of state.py."""
from __future__ import annotations

from typing import Any

from reconciler.admin.schema import pb
from reconciler.secret import Secret
from reconciler.state import DatabaseInfo, ReplicationSettings, StoreLimits

# ReplicationSettings' fields and immudb's: one table for both directions (the password is apart)
_REPLICATION_FIELDS = (
    ("replica", "replica", pb.NullableBool), ("primary_database", "primaryDatabase", pb.NullableString),
    ("primary_host", "primaryHost", pb.NullableString), ("primary_port", "primaryPort", pb.NullableUint32),
    ("primary_username", "primaryUsername", pb.NullableString),
    ("sync_replication", "syncReplication", pb.NullableBool),
    ("prefetch_tx_buffer_size", "prefetchTxBufferSize", pb.NullableUint32),
    ("commit_concurrency", "replicationCommitConcurrency", pb.NullableUint32),
    ("allow_tx_discarding", "allowTxDiscarding", pb.NullableBool),
    ("skip_integrity_check", "skipIntegrityCheck", pb.NullableBool),
    ("wait_for_indexing", "waitForIndexing", pb.NullableBool),
)


def _replication_message(r: ReplicationSettings) -> pb.ReplicationNullableSettings:
    if not r.replica:
        return pb.ReplicationNullableSettings(replica=pb.NullableBool(value=False))
    if not (r.primary_host and r.primary_port and r.primary_database and r.primary_username
            and r.primary_password is not None):
        # immudb would create a replica with no replicator running
        raise ValueError("a replica needs primary host, port, database, username and password")
    return pb.ReplicationNullableSettings(
        primaryPassword=pb.NullableString(value=r.primary_password.reveal()),
        syncAcks=pb.NullableUint32(value=0),  # must be 0 on a replica
        **{ours: wrapper(value=getattr(r, mine)) for mine, ours, wrapper in _REPLICATION_FIELDS})


def _replication_settings(r: Any, database: str) -> ReplicationSettings:
    password = r.primaryPassword.value
    return ReplicationSettings(
        primary_password=Secret(password, origin=f"{database} replication") if password else None,
        **{mine: getattr(r, ours).value for mine, ours, _ in _REPLICATION_FIELDS})


def _set_limits(settings: pb.DatabaseNullableSettings, limits: StoreLimits) -> None:
    for field_name, value in (("maxKeyLen", limits.max_key_len), ("maxValueLen", limits.max_value_len),
                              ("maxTxEntries", limits.max_tx_entries), ("fileSize", limits.file_size),
                              ("writeTxHeaderVersion", limits.write_tx_header_version)):
        if value:
            getattr(settings, field_name).value = value
    if limits.embedded_values is not None:
        settings.embeddedValues.value = limits.embedded_values


def _database_info(d: Any) -> DatabaseInfo:
    s, r = d.settings, d.settings.replicationSettings
    return DatabaseInfo(
        name=d.name, loaded=d.loaded, tx_count=d.numTransactions, disk_size=d.diskSize, sync_acks=r.syncAcks.value,
        replication=_replication_settings(r, d.name),
        limits=StoreLimits(
            max_key_len=s.maxKeyLen.value, max_value_len=s.maxValueLen.value, max_tx_entries=s.maxTxEntries.value,
            file_size=s.fileSize.value, write_tx_header_version=s.writeTxHeaderVersion.value,
            embedded_values=s.embeddedValues.value if s.HasField("embeddedValues") else None),
    )

