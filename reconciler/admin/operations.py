"""The admin operations this tool asks of immudb: server, databases,
transactions (the journal, restores) and users."""
from __future__ import annotations

import collections
import struct
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reconciler.admin.convert import _database_info, _replication_message, _set_limits
from reconciler.admin.errors import AuthenticationFailed, ImmudbError, NotFound, ProofFailed
from reconciler.admin.export import TxFeed, _chunks
from reconciler.admin.schema import SERVICE, empty_pb2, grpc, pb
from reconciler.admin.session import Session
from reconciler.secret import Secret
from reconciler.state import DatabaseInfo, ReplicationSettings, StoreLimits, UserInfo

GRANT, REVOKE = 0, 1


@dataclass(frozen=True)
class DatabaseState:
    """A database's current transaction id and hash (for lag and backups)."""

    database: str
    tx_id: int
    tx_hash: bytes



class ImmudbAdmin(Session):
    """Admin operations on one immudb server, as a sysadmin user.

    Thread-safe. Every method raises ImmudbError (or a subclass) on failure,
    with a message that names the server and never a password.
    """

    # ------------------------------------------------------------------
    # server

    def login(self) -> None:
        """Log in now (otherwise the first call does). Raises AuthenticationFailed, Unreachable."""
        self._token_for_call(self._token)

    def version(self) -> str:
        """The server's version. From Health, not ServerInfo: in immudb up to
        1.11.1 ServerInfo fails while any database is unloaded."""
        return self.call("health", "Health", empty_pb2.Empty()).version.rstrip("-")

    def check_credentials(self, username: str, password: Secret) -> bool:
        """True when `username`/`password` may log in; False when refused.
        Raises Unreachable when the server does not answer. Opens no session
        that needs closing (immudb tokens expire by themselves)."""
        request = pb.LoginRequest(user=username.encode(), password=password.reveal().encode())
        try:
            self._unary(f"login as {username}", "Login", request, None)
            return True
        except AuthenticationFailed:
            return False

    # ------------------------------------------------------------------
    # databases

    def list_databases(self) -> list[DatabaseInfo]:
        """Every database with its settings, load state and transaction count: one RPC."""
        response = self.call("list databases", "DatabaseListV2", pb.DatabaseListRequestV2())
        return [_database_info(d) for d in response.databases]

    def limits(self, database: str) -> StoreLimits:
        for info in self.list_databases():
            if info.name == database:
                return info.limits
        raise NotFound(f"{self.name} ({self.address})", f"read settings of {database}", "database does not exist",
                       temporary=False)

    def create_replica(self, name: str, replication: ReplicationSettings, limits: StoreLimits | None = None) -> None:
        """Create database `name` as a replica. Raises AlreadyExists when a
        database of that name exists (replica or not): never converts one."""
        settings = pb.DatabaseNullableSettings(replicationSettings=_replication_message(replication))
        if limits is not None:
            _set_limits(settings, limits)
        self.call(f"create replica database {name}", "CreateDatabaseV2",
                   pb.CreateDatabaseRequest(name=name, settings=settings, ifNotExists=False))

    def create_database(self, name: str) -> None:
        """An ordinary (non-replica) database; used by tests and demos."""
        self.call(f"create database {name}", "CreateDatabaseV2", pb.CreateDatabaseRequest(name=name))

    def update_replication(self, name: str, replication: ReplicationSettings) -> None:
        """Change the replication settings of existing database `name`
        (immudb restarts its replicator with them)."""
        settings = pb.DatabaseNullableSettings(replicationSettings=_replication_message(replication))
        self.call(f"update replication of {name}", "UpdateDatabaseV2",
                   pb.UpdateDatabaseRequest(database=name, settings=settings))

    def promote(self, name: str) -> None:
        """Stop replicating `name`; it keeps its data and becomes writable."""
        settings = pb.DatabaseNullableSettings(replicationSettings=pb.ReplicationNullableSettings(
            replica=pb.NullableBool(value=False)))
        self.call(f"promote {name}", "UpdateDatabaseV2", pb.UpdateDatabaseRequest(database=name, settings=settings))

    def load(self, name: str) -> None:
        self.call(f"load {name}", "LoadDatabase", pb.LoadDatabaseRequest(database=name))

    def unload(self, name: str) -> None:
        self.call(f"unload {name}", "UnloadDatabase", pb.UnloadDatabaseRequest(database=name))

    def delete(self, name: str) -> None:
        """Delete an (unloaded) database and its files."""
        self.call(f"delete {name}", "DeleteDatabase", pb.DeleteDatabaseRequest(database=name))

    def state(self, name: str) -> DatabaseState:
        """Current transaction id and hash of `name`: two RPCs."""
        token = self.database_token(name)
        s = self.call(f"current state of {name}", "CurrentState", empty_pb2.Empty(), token=token)
        return DatabaseState(name, s.txId, bytes(s.txHash))

    def scan_keys(self, name: str, limit: int, newest_first: bool = False, since_tx: int = 0) -> list[bytes]:
        """Up to `limit` keys of database `name` in key order (or reverse),
        once its index holds transaction `since_tx`."""
        token = self.database_token(name)
        response = self.call(f"scan {name}", "Scan", pb.ScanRequest(limit=limit, desc=newest_first, sinceTx=since_tx),
                              token=token)
        return [entry.key for entry in response.entries]

    def verified_get(self, name: str, key: bytes, trusted: DatabaseState) -> bytes:
        """The value of `key` in database `name`, with immudb's proofs
        checked (immudb-py's own verification: the entry is included in its
        transaction, and that transaction in the history whose last state is
        `trusted`, e.g. the one a backup's manifest recorded). Raises
        ProofFailed when a proof does not hold, ImmudbError otherwise."""
        from immudb.exceptions import ErrCorruptedData
        from immudb.handler import verifiedGet
        token = self.database_token(name)
        admin = self

        class Service:  # what immudb-py's handler calls: our RPC, with the database's token and a timeout
            def VerifiableGet(self, request):  # noqa: N802 - the gRPC method's name
                return admin.call(f"verified get in {name}", "VerifiableGet", request, token=token)

        class TrustedState:  # immudb-py's state service, holding the state we trust
            def __init__(self):
                self.state = types.SimpleNamespace(db=name, txId=trusted.tx_id, txHash=trusted.tx_hash)

            def get(self):
                return self.state

            def set(self, state):
                self.state = state

        try:
            return verifiedGet.call(Service(), TrustedState(), key).value
        except ErrCorruptedData:
            raise ProofFailed(f"{self.name} ({self.address})", f"verified get in {name}",
                              f"the proofs for key {key[:64]!r} do not hold against transaction {trusted.tx_id}",
                              temporary=False) from None

    # ------------------------------------------------------------------
    # transactions (the journal)

    def follow(self, name: str, first_tx: int, wait: float = 30.0) -> TxFeed:
        """Transactions of database `name` from `first_tx` on, as immudb
        exports them, waiting up to `wait` s for new ones (see TxFeed)."""
        return TxFeed(self, name, first_tx, wait)

    def create_restore_database(self, name: str, limits: StoreLimits | None = None) -> None:
        """A database that takes replayed transactions: a replica with no
        primary to follow (immudb runs no replicator for it), as `immuadmin
        hot-restore` makes one, with `limits` (the original's, so that it
        takes every transaction the original took). `promote()` makes it an
        ordinary database."""
        settings = pb.DatabaseNullableSettings(replicationSettings=pb.ReplicationNullableSettings(
            replica=pb.NullableBool(value=True), primaryDatabase=pb.NullableString(value="replicator-restore")))
        if limits is not None:
            _set_limits(settings, limits)
        self.call(f"create database {name} for replay", "CreateDatabaseV2",
                   pb.CreateDatabaseRequest(name=name, settings=settings, ifNotExists=False))

    def make_restore_target(self, name: str) -> None:
        """Let existing database `name` take replayed transactions (replica,
        no primary)."""
        settings = pb.DatabaseNullableSettings(replicationSettings=pb.ReplicationNullableSettings(
            replica=pb.NullableBool(value=True), primaryDatabase=pb.NullableString(value="replicator-restore"),
            primaryHost=pb.NullableString(value=""), primaryPort=pb.NullableUint32(value=0)))
        self.call(f"prepare {name} for replay", "UpdateDatabaseV2",
                   pb.UpdateDatabaseRequest(database=name, settings=settings))

    def replicate(self, name: str, transactions: Iterable[tuple[int, bytes]], in_flight: int = 24,
                  done: Callable[[int, int], None] | None = None) -> int:
        """Replay exported transactions into database `name` (a replica with
        no primary), in order, with immudb's ReplicateTx. Up to `in_flight`
        calls are outstanding: immudb applies each after its predecessor and
        syncs them together (a database takes 30 concurrent requests at most,
        immudb's default maxConcurrency). `done(tx_id, size)` is called as each is
        applied. The number replayed; raises ImmudbError naming the
        transaction immudb refused."""
        token = self.database_token(name)
        call = self.channel.stream_unary(
            f"/{SERVICE.full_name}/replicateTx", request_serializer=pb.Chunk.SerializeToString,
            response_deserializer=pb.TxHeader.FromString)
        metadata = (("authorization", "Bearer " + token), ("skip-integrity-check", "false"),
                    ("wait-for-indexing", "false"))
        pending: collections.deque = collections.deque()
        count = 0

        def settle() -> None:
            tx_id, size, future = pending.popleft()
            try:
                future.result()
            except grpc.RpcError as exc:
                last = pending[-1][0] if pending else tx_id
                for _, _, other in pending:
                    other.cancel()
                pending.clear()
                raise self._refused_replay(name, tx_id, last, exc) from None
            if done is not None:
                done(tx_id, size)

        try:
            for tx_id, data in transactions:
                self.calls += 1
                pending.append((tx_id, len(data), call.future(_chunks(data), timeout=max(self.timeout, 60.0),
                                                              metadata=metadata)))
                count += 1
                if len(pending) >= in_flight:
                    settle()
            while pending:
                settle()
        finally:
            for _, _, future in pending:
                future.cancel()
        return count

    def _refused_replay(self, name: str, first: int, last: int, exc: grpc.RpcError) -> ImmudbError:
        """The error of a failed replay, naming the transaction immudb
        refused: the one after what the database holds now (while calls
        were in flight, the oldest of them failing says nothing: each waits
        for its predecessor, and all fail when the server goes away)."""
        error = self.error(f"replay into {name}", exc)
        try:
            held = self.state(name).tx_id
        except ImmudbError as later:
            return type(error)(error.server, f"replay into {name}",
                               f"{error.detail}; transactions {first}-{last} were in flight and the server no longer "
                               f"answers ({later.detail}): how far it got is unknown", temporary=error.temporary)
        refused = held + 1
        return type(error)(error.server, f"replay into {name}",
                           f"immudb refused transaction {refused} ({error.detail}); the database holds "
                           f"{held} transactions", temporary=error.temporary)

    def tx_header(self, name: str, tx_id: int):
        """The header (exported.TxHeader: Alh, time) of committed
        transaction `tx_id` of database `name`, from the server's own export
        of it; None when the database has not committed it."""
        from reconciler.exported import JournalError, parse_header
        token = self.database_token(name)
        call = self.channel.unary_stream(
            f"/{SERVICE.full_name}/exportTx", request_serializer=pb.ExportTxRequest.SerializeToString,
            response_deserializer=pb.Chunk.FromString)
        self.calls += 1
        data = bytearray()
        try:
            chunks = call(pb.ExportTxRequest(tx=tx_id, allowPreCommitted=False), timeout=self.timeout,
                          metadata=(("authorization", "Bearer " + token),))
            for chunk in chunks:
                data += chunk.content
                if len(data) >= 12:
                    size, hdr_len = struct.unpack_from(">QI", data)
                    if len(data) >= 12 + hdr_len:
                        chunks.cancel()
                        break
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and len(data) >= 12:
                pass
            else:
                error = self.error(f"read transaction {tx_id} of {name}", exc)
                if "tx not found" in error.detail.lower() or "no new transactions" in error.detail.lower():
                    return None
                raise error from None
        if len(data) < 12:
            return None
        hdr_len, = struct.unpack_from(">I", data, 8)
        try:
            header = parse_header(bytes(data[12:12 + hdr_len]))
        except JournalError as exc:
            raise ImmudbError(f"{self.name} ({self.address})", f"read transaction {tx_id} of {name}",
                              f"its header does not parse ({exc})", temporary=False) from None
        if header.id != tx_id:
            raise ImmudbError(f"{self.name} ({self.address})", f"read transaction {tx_id} of {name}",
                              f"the server sent transaction {header.id}", temporary=False)
        return header

    def signed_state(self, name: str, tx_id: int):
        """The server's signed state of transaction `tx_id` of `name`
        (VerifiableTxById: immudb signs it when started with --signingKey),
        as a signed.SignedState; None when the server does not sign.
        The Alh is the one the signature covers, computed from the header
        the server sent."""
        from reconciler.exported import alh_of
        from reconciler.signed import SignedState
        token = self.database_token(name)
        vtx = self.call(f"signed state of {name} transaction {tx_id}", "VerifiableTxById",
                         pb.VerifiableTxRequest(tx=tx_id, proveSinceTx=tx_id), token=token)
        if not vtx.signature.signature:
            return None
        h = vtx.dualProof.targetTxHeader
        if h.id != tx_id:
            raise ImmudbError(f"{self.name} ({self.address})", f"signed state of {name}",
                              f"the server signed transaction {h.id}, not {tx_id}", temporary=False)
        metadata = b""
        if h.version >= 1 and (h.metadata.truncatedTxID or h.metadata.extra):
            if h.metadata.truncatedTxID:
                metadata += b"\x00" + struct.pack(">Q", h.metadata.truncatedTxID)
            if h.metadata.extra:
                metadata += b"\x01" + struct.pack(">H", len(h.metadata.extra)) + bytes(h.metadata.extra)
        alh = alh_of(h.id, bytes(h.prevAlh), h.ts, h.version, metadata, h.nentries, bytes(h.eH), h.blTxId,
                     bytes(h.blRoot))
        return SignedState(name, tx_id, alh, bytes(vtx.signature.signature))

    # ------------------------------------------------------------------
    # users

    def list_users(self) -> list[UserInfo]:
        response = self.call("list users", "ListUsers", empty_pb2.Empty())
        return [UserInfo(u.user.decode(), u.active, {p.database: p.permission for p in u.permissions})
                for u in response.users]

    def create_user(self, username: str, password: Secret, permission: int, database: str) -> None:
        self.call(f"create user {username}", "CreateUser", pb.CreateUserRequest(
            user=username.encode(), password=password.reveal().encode(), permission=permission, database=database))

    def grant(self, username: str, database: str, permission: int) -> None:
        self.call(f"grant {username} on {database}", "ChangePermission", pb.ChangePermissionRequest(
            action=GRANT, username=username, database=database, permission=permission))

    def set_active(self, username: str, active: bool = True) -> None:
        self.call(f"activate {username}", "SetActiveUser", pb.SetActiveUserRequest(active=active, username=username))

    def change_password(self, username: str, new_password: Secret) -> None:
        """As a sysadmin, set another user's password (no old password needed)."""
        self.call(f"change password of {username}", "ChangePassword", pb.ChangePasswordRequest(
            user=username.encode(), newPassword=new_password.reveal().encode()))

