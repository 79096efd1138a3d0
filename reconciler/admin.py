"""The only module that talks gRPC to immudb.

A small admin client over immudb-py's generated protobuf messages
(`immudb.grpc.schema_pb2`), calling immudb's ImmuService methods on a gRPC
channel as its generated stub would. We bypass immudb-py's `ImmudbClient`
wrapper on purpose:
- its `ReplicationSettings` sends the primary *username* as the primary
  password and `ReplicationNullableSettings` has tuple defaults that break
  `createDatabaseV2`: replica settings are built here from raw protobuf,
  always with `primaryHost` and `primaryPort` (without them immudb creates the
  database silently with no replicator running);
- its `login()` overwrites the module attribute `schema_pb2.LoginResponse`
  and `useDatabase()` swaps the shared token in place: here the token is
  passed per call as metadata, so threads never switch database under each
  other's feet;
- its default timeout is none: here every call has one;
- its `logout()` kills every session of the user server-wide: never used.

Tokens die after 24 h and on every server restart: a call answered with
"please login" (immudb's way of saying UNAUTHENTICATED) logs in again once
and is retried.
"""
from __future__ import annotations

import collections
import importlib.util
import logging
import struct
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _namespace_google() -> None:
    """Let `google` be the namespace package it is meant to be. immudb-py
    depends on an unrelated PyPI package, `google-api`, whose
    `google/__init__.py` imports its web framework (appier): every command
    would spend ~50 ms running it (and see a DeprecationWarning) before
    `google.protobuf` could load. The folders searched stay the same."""
    if "google" in sys.modules:
        return
    spec = importlib.util.find_spec("google")
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return  # absent, or already a namespace package
    module = types.ModuleType("google")
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules["google"] = module


def _immudb_schema() -> types.ModuleType:
    """immudb-py's generated messages (`immudb.grpc.schema_pb2`), without
    running `immudb/__init__.py`, which imports its whole client (~80 ms
    more). Registered under its own name, so a later `import immudb` (the
    tests use its client) shares it."""
    name = "immudb.grpc.schema_pb2"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("immudb")
    if package is None or not package.submodule_search_locations:
        raise ImportError("immudb-py is not installed (pip install immudb-py)")
    path = Path(package.submodule_search_locations[0]) / "grpc" / "schema_pb2.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_namespace_google()
import grpc  # noqa: E402
from google.protobuf import empty_pb2, message_factory  # noqa: E402

pb = _immudb_schema()
_SERVICE = pb.DESCRIPTOR.services_by_name["ImmuService"]

from reconciler.config.model import ServerConfig  # noqa: E402
from reconciler.errors import ReplicatorError  # noqa: E402
from reconciler.log import event  # noqa: E402
from reconciler.secret import Secret  # noqa: E402
from reconciler.state import DatabaseInfo, ReplicationSettings, StoreLimits, UserInfo  # noqa: E402

log = logging.getLogger(__name__)

GRANT, REVOKE = 0, 1
_RELOGIN_MESSAGES = ("please login", "invalid token", "token has expired", "session not found",
                     "not logged in", "no session")
_PERMANENT_MESSAGES = ("invalid user name or password", "permission denied", "not allowed",
                       "user is not", "already exists", "illegal arguments", "invalid database name",
                       "database does not exist", "not a replica", "is a replica", "can not be")


class ImmudbError(ReplicatorError):
    """A call to an immudb server failed. `temporary` says whether retrying
    later may help (unreachable, timeout) or the config or the world must
    change first (bad credentials, name conflict)."""

    def __init__(self, server: str, operation: str, detail: str, temporary: bool):
        self.server, self.operation, self.detail, self.temporary = server, operation, detail, temporary
        super().__init__(f"{server}: {operation} failed: {detail}")


class Unreachable(ImmudbError):
    """The server did not answer (down, refused, or slower than the timeout)."""


class AuthenticationFailed(ImmudbError):
    """The server refused the configured user name or password."""


class NotFound(ImmudbError):
    """The database or user does not exist."""


class AlreadyExists(ImmudbError):
    """A database of that name exists already."""


class AlreadyLoaded(ImmudbError):
    """LoadDatabase on a database that is loaded (someone else loaded it
    meanwhile: the goal is reached)."""


class DatabaseClosed(ImmudbError):
    """immudb answered "already closed": the database (or, before immudb
    1.11.1, any listing while one is unloaded) is unloaded."""


class NotLoaded(ImmudbError):
    """immudb answered "not loaded": the database is unloaded already."""


class ProofFailed(ImmudbError):
    """immudb's cryptographic proofs for an entry did not hold: the data is
    not the history the trusted state records."""


@dataclass(frozen=True)
class DatabaseState:
    """A database's current transaction id and hash (for lag and backups)."""

    database: str
    tx_id: int
    tx_hash: bytes


class ImmudbAdmin:
    """Admin operations on one immudb server, as a sysadmin user.

    Thread-safe. Every method raises ImmudbError (or a subclass) on failure,
    with a message that names the server and never a password.
    """

    def __init__(self, name: str, host: str, port: int, username: str, password: Secret,
                 timeout: float = 10.0):
        self.name = name
        self.address = f"{host}:{port}"
        self.username = username
        self._password = password
        self.timeout = timeout
        self._token: str | None = None
        self._lock = threading.Lock()
        self._warned = False
        self.calls = 0  # RPCs sent, for tests and benchmarks
        self.logins = 0
        self._connect()

    def _connect(self) -> None:
        self._channel = grpc.insecure_channel(self.address, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 0),
            # a channel of its own: with gRPC's global subchannel pool a fresh channel would
            # inherit the old one's reconnect backoff and fail just the same
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ])
        self._methods: dict[str, Callable] = {}

    def _reconnect(self) -> None:
        """A fresh channel. After a server restart, gRPC's channel sits in
        reconnect backoff and fails calls at once for up to minutes; a new
        channel connects on the first call."""
        old = self._channel
        self._connect()
        old.close()

    @classmethod
    def from_config(cls, name: str, server: ServerConfig) -> ImmudbAdmin:
        return cls(name, server.host, server.port, server.username, server.password, server.timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ImmudbAdmin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImmudbAdmin({self.name} {self.username}@{self.address})"

    # ------------------------------------------------------------------
    # plumbing

    def _error(self, operation: str, exc: grpc.RpcError) -> ImmudbError:
        code = exc.code() if hasattr(exc, "code") else None
        detail = (exc.details() if hasattr(exc, "details") else None) or str(code)
        low = detail.lower()
        where = f"{self.name} ({self.address})"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                detail = f"no answer within {self.timeout:g}s"
            elif "connection refused" in low:
                detail = "connection refused"
            return Unreachable(where, operation, detail, temporary=True)
        if "invalid user name or password" in low:
            return AuthenticationFailed(where, operation, f"user '{self.username}' or its password refused",
                                        temporary=False)
        if "already exists" in low:
            return AlreadyExists(where, operation, detail, temporary=False)
        if "already loaded" in low:
            return AlreadyLoaded(where, operation, detail, temporary=False)
        permanent = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT) or any(
            m in low for m in _PERMANENT_MESSAGES)
        if "already closed" in low:
            return DatabaseClosed(where, operation, detail, temporary=not permanent)
        if "not loaded" in low:
            return NotLoaded(where, operation, detail, temporary=not permanent)
        if "does not exist" in low or "not found" in low:
            return NotFound(where, operation, detail, temporary=False)
        return ImmudbError(where, operation, detail, temporary=not permanent)

    def _login(self) -> str:
        request = pb.LoginRequest(user=self.username.encode(), password=self._password.reveal().encode())
        self.logins += 1
        response = self._unary("login", "Login", request, None)
        if response.warning and not self._warned:
            self._warned = True
            event(log, "login_warning", logging.WARNING, server=self.name,
                  message=response.warning.decode(errors="replace"))
        return response.token

    def _token_for_call(self, stale: str | None) -> str:
        with self._lock:
            if self._token is None or self._token == stale:
                self._token = self._login()
            return self._token

    def _method(self, name: str) -> Callable:
        """ImmuService's method `name` on the current channel, as the
        generated stub (schema_pb2_grpc) would build it. The response
        classes come from the service's descriptor, not from attributes of
        schema_pb2, which immudb-py's own login() overwrites."""
        method = self._methods.get(name)
        if method is None:
            descriptor = _SERVICE.methods_by_name[name]
            method = self._channel.unary_unary(
                f"/{_SERVICE.full_name}/{name}",
                request_serializer=message_factory.GetMessageClass(descriptor.input_type).SerializeToString,
                response_deserializer=message_factory.GetMessageClass(descriptor.output_type).FromString)
            self._methods[name] = method
        return method

    def _unary(self, operation: str, method: str, request: Any, token: str | None) -> Any:
        """One RPC; when the server refuses the connection, once more on a
        fresh channel (see _reconnect). Raises grpc.RpcError."""
        metadata = (("authorization", "Bearer " + token),) if token else None
        for attempt in (1, 2):
            self.calls += 1
            try:
                return self._method(method)(request, timeout=self.timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if attempt == 2 or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    if method == "Login":
                        raise self._error(operation, exc) from None
                    raise
                self._reconnect()
        raise AssertionError("unreachable")

    def _call(self, operation: str, method: str, request: Any, token: str | None = None) -> Any:
        """One RPC with the session token (or `token`); on an expired token,
        log in again once and retry."""
        for attempt in (1, 2):
            use = token or self._token_for_call(None)
            try:
                return self._unary(operation, method, request, use)
            except grpc.RpcError as exc:
                detail = (exc.details() or "").lower() if hasattr(exc, "details") else ""
                relogin = exc.code() == grpc.StatusCode.UNAUTHENTICATED or any(m in detail for m in _RELOGIN_MESSAGES)
                if attempt == 1 and relogin and token is None:
                    event(log, "relogin", server=self.name, reason=detail or str(exc.code()))
                    self._token_for_call(use)
                    continue
                raise self._error(operation, exc) from None
        raise AssertionError("unreachable")

    def _database_token(self, database: str) -> str:
        """A token scoped to `database` (immudb's UseDatabase), for calls such
        as CurrentState that act on the session's current database."""
        return self._call(f"use database {database}", "UseDatabase", pb.Database(databaseName=database)).token

    # ------------------------------------------------------------------
    # server

    def login(self) -> None:
        """Log in now (otherwise the first call does). Raises AuthenticationFailed, Unreachable."""
        self._token_for_call(self._token)

    def version(self) -> str:
        """The server's version. From Health, not ServerInfo: in immudb up to
        1.11.1 ServerInfo fails while any database is unloaded."""
        return self._call("health", "Health", empty_pb2.Empty()).version.rstrip("-")

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
        response = self._call("list databases", "DatabaseListV2", pb.DatabaseListRequestV2())
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
        self._call(f"create replica database {name}", "CreateDatabaseV2",
                   pb.CreateDatabaseRequest(name=name, settings=settings, ifNotExists=False))

    def create_database(self, name: str) -> None:
        """An ordinary (non-replica) database; used by tests and demos."""
        self._call(f"create database {name}", "CreateDatabaseV2", pb.CreateDatabaseRequest(name=name))

    def update_replication(self, name: str, replication: ReplicationSettings) -> None:
        """Change the replication settings of existing database `name`
        (immudb restarts its replicator with them)."""
        settings = pb.DatabaseNullableSettings(replicationSettings=_replication_message(replication))
        self._call(f"update replication of {name}", "UpdateDatabaseV2",
                   pb.UpdateDatabaseRequest(database=name, settings=settings))

    def promote(self, name: str) -> None:
        """Stop replicating `name`; it keeps its data and becomes writable."""
        settings = pb.DatabaseNullableSettings(replicationSettings=pb.ReplicationNullableSettings(
            replica=pb.NullableBool(value=False)))
        self._call(f"promote {name}", "UpdateDatabaseV2", pb.UpdateDatabaseRequest(database=name, settings=settings))

    def load(self, name: str) -> None:
        self._call(f"load {name}", "LoadDatabase", pb.LoadDatabaseRequest(database=name))

    def unload(self, name: str) -> None:
        self._call(f"unload {name}", "UnloadDatabase", pb.UnloadDatabaseRequest(database=name))

    def delete(self, name: str) -> None:
        """Delete an (unloaded) database and its files."""
        self._call(f"delete {name}", "DeleteDatabase", pb.DeleteDatabaseRequest(database=name))

    def state(self, name: str) -> DatabaseState:
        """Current transaction id and hash of `name`: two RPCs."""
        token = self._database_token(name)
        s = self._call(f"current state of {name}", "CurrentState", empty_pb2.Empty(), token=token)
        return DatabaseState(name, s.txId, bytes(s.txHash))

    def scan_keys(self, name: str, limit: int, newest_first: bool = False, since_tx: int = 0) -> list[bytes]:
        """Up to `limit` keys of database `name` in key order (or reverse),
        once its index holds transaction `since_tx`."""
        token = self._database_token(name)
        response = self._call(f"scan {name}", "Scan", pb.ScanRequest(limit=limit, desc=newest_first, sinceTx=since_tx),
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
        token = self._database_token(name)
        admin = self

        class Service:  # what immudb-py's handler calls: our RPC, with the database's token and a timeout
            def VerifiableGet(self, request):  # noqa: N802 - the gRPC method's name
                return admin._call(f"verified get in {name}", "VerifiableGet", request, token=token)

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
        self._call(f"create database {name} for replay", "CreateDatabaseV2",
                   pb.CreateDatabaseRequest(name=name, settings=settings, ifNotExists=False))

    def make_restore_target(self, name: str) -> None:
        """Let existing database `name` take replayed transactions (replica,
        no primary)."""
        settings = pb.DatabaseNullableSettings(replicationSettings=pb.ReplicationNullableSettings(
            replica=pb.NullableBool(value=True), primaryDatabase=pb.NullableString(value="replicator-restore"),
            primaryHost=pb.NullableString(value=""), primaryPort=pb.NullableUint32(value=0)))
        self._call(f"prepare {name} for replay", "UpdateDatabaseV2",
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
        token = self._database_token(name)
        call = self._channel.stream_unary(
            f"/{_SERVICE.full_name}/replicateTx", request_serializer=pb.Chunk.SerializeToString,
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
        error = self._error(f"replay into {name}", exc)
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
        token = self._database_token(name)
        call = self._channel.unary_stream(
            f"/{_SERVICE.full_name}/exportTx", request_serializer=pb.ExportTxRequest.SerializeToString,
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
                error = self._error(f"read transaction {tx_id} of {name}", exc)
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
        token = self._database_token(name)
        vtx = self._call(f"signed state of {name} transaction {tx_id}", "VerifiableTxById",
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
        response = self._call("list users", "ListUsers", empty_pb2.Empty())
        return [UserInfo(u.user.decode(), u.active, {p.database: p.permission for p in u.permissions})
                for u in response.users]

    def create_user(self, username: str, password: Secret, permission: int, database: str) -> None:
        self._call(f"create user {username}", "CreateUser", pb.CreateUserRequest(
            user=username.encode(), password=password.reveal().encode(), permission=permission, database=database))

    def grant(self, username: str, database: str, permission: int) -> None:
        self._call(f"grant {username} on {database}", "ChangePermission", pb.ChangePermissionRequest(
            action=GRANT, username=username, database=database, permission=permission))

    def set_active(self, username: str, active: bool = True) -> None:
        self._call(f"activate {username}", "SetActiveUser", pb.SetActiveUserRequest(active=active, username=username))

    def change_password(self, username: str, new_password: Secret) -> None:
        """As a sysadmin, set another user's password (no old password needed)."""
        self._call(f"change password of {username}", "ChangePassword", pb.ChangePasswordRequest(
            user=username.encode(), newPassword=new_password.reveal().encode()))


# ----------------------------------------------------------------------
# protobuf <-> values

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


# ----------------------------------------------------------------------
# streamed transactions

_CHUNK = 64 * 1024  # immudb's own stream chunk size


def _chunks(data: bytes) -> Iterator[Any]:
    """One message of immudb's stream protocol (pkg/stream): its length as a
    u64, then its bytes, in chunks."""
    framed = struct.pack(">Q", len(data)) + data
    for i in range(0, len(framed), _CHUNK):
        yield pb.Chunk(content=framed[i:i + _CHUNK])


@dataclass(frozen=True)
class ExportedBytes:
    tx_id: int
    data: bytes
    committed: int      # the database's last committed transaction when it was sent


class TxFeed:
    """Transactions of one database from `first_tx` on, as immudb exports
    them, each as ExportedBytes (its id, its bytes, and how far the database
    had committed when it was sent).

    Two ways, by where the feed is:
    - behind (transactions up to the last committed one wait): one
      streamExportTx stream asks for up to BULK of them at once; immudb
      answers them back to back (one call per transaction would cost a
      round trip each);
    - caught up: one exportTx call for the next transaction. immudb answers
      a call for a transaction it has not committed with "no new
      transactions" at once, unless the call allows precommitted ones: then
      it waits until the transaction is durably written (no polling). So the
      call allows them, and the caller ships a transaction only once
      `committed` covers it (see Journal). After `wait` seconds with nothing
      new the iteration simply ends and the caller follows again.

    `cancel()` from any thread ends the iteration. Raises ImmudbError when a
    call fails."""

    BULK = 10_000

    def __init__(self, admin: ImmudbAdmin, name: str, first_tx: int, wait: float = 30.0):
        self.admin, self.name, self.wait = admin, name, wait
        self._next = first_tx
        self._cancelled = False
        self._call = None
        self._token = admin._database_token(name)
        self._committed = admin._call(f"current state of {name}", "CurrentState", empty_pb2.Empty(),
                                      token=self._token).txId
        self._metadata = (("authorization", "Bearer " + self._token),)
        self._one = admin._channel.unary_stream(
            f"/{_SERVICE.full_name}/exportTx", request_serializer=pb.ExportTxRequest.SerializeToString,
            response_deserializer=pb.Chunk.FromString)
        self._many = admin._channel.stream_stream(
            f"/{_SERVICE.full_name}/streamExportTx", request_serializer=pb.ExportTxRequest.SerializeToString,
            response_deserializer=pb.Chunk.FromString)

    def cancel(self) -> None:
        self._cancelled = True
        call = self._call
        if call is not None:
            call.cancel()

    def __iter__(self) -> Iterator[ExportedBytes]:
        try:
            while not self._cancelled:
                if self._next <= self._committed:
                    last = min(self._committed, self._next + self.BULK - 1)
                    first = self._next
                    requests = (pb.ExportTxRequest(tx=t, allowPreCommitted=True) for t in range(first, last + 1))
                    self.admin.calls += 1
                    self._call = self._many(requests, metadata=self._metadata,
                                            timeout=self.wait + (last - first + 1) / 100)
                    for data, committed in self._messages(self._call, last - first + 1):
                        yield self._exported(data, committed)
                    self._call.cancel()  # every answer is in: end the stream
                else:
                    self.admin.calls += 1
                    self._call = self._one(pb.ExportTxRequest(tx=self._next, allowPreCommitted=True),
                                           timeout=self.wait, metadata=self._metadata)
                    got = list(self._messages(self._call, 1))
                    if not got or not got[0][0]:
                        return  # nothing committed for `wait` seconds: the caller follows again
                    yield self._exported(*got[0])
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self._next > self._committed:
                return  # nothing new for `wait` seconds
            raise self.admin._error(f"export transaction {self._next} from {self.name}", exc) from None
        finally:
            self.cancel()

    def _exported(self, data: bytes, committed: int) -> ExportedBytes:
        exported = ExportedBytes(self._next, data, committed)
        self._committed = max(self._committed, committed)
        self._next += 1
        return exported

    def _messages(self, call, count: int) -> Iterator[tuple[bytes, int]]:
        """`count` messages of immudb's stream protocol (a u64 length, then
        the bytes, over one or more chunks): (bytes, committed)."""
        buffer, size, committed = bytearray(), None, 0
        for chunk in call:
            if size is None:
                if len(chunk.content) < 8:
                    raise ImmudbError(f"{self.admin.name} ({self.admin.address})", f"export from {self.name}",
                                      "the server's message is too short", temporary=True)
                size = struct.unpack_from(">Q", chunk.content)[0]
                buffer += chunk.content[8:]
                raw = chunk.metadata.get("committed-txid-bin")
                committed = struct.unpack(">Q", raw)[0] if raw and len(raw) == 8 else 0
            else:
                buffer += chunk.content
            if len(buffer) > size:
                raise ImmudbError(f"{self.admin.name} ({self.admin.address})", f"export from {self.name}",
                                  "the server's message is longer than announced", temporary=True)
            if len(buffer) == size:
                yield bytes(buffer), committed
                buffer, size = bytearray(), None
                count -= 1
                if count == 0:
                    return
        if size is not None:
            raise ImmudbError(f"{self.admin.name} ({self.admin.address})", f"export from {self.name}",
                              "the server's message is incomplete", temporary=True)

    def __enter__(self) -> TxFeed:
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()
