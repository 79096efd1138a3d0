"""The only package that talks gRPC to immudb.

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

Its rooms: schema.py (the messages and grpc, imported as this tool needs
them), errors.py (immudb's answers as exceptions), session.py (channel,
login, one call), operations.py (`ImmudbAdmin`), convert.py (messages <->
state.py values), export.py (the stream of exported transactions).
"""
from __future__ import annotations

from reconciler.admin.errors import (
    AlreadyExists,
    AlreadyLoaded,
    AuthenticationFailed,
    DatabaseClosed,
    ImmudbError,
    NotFound,
    NotLoaded,
    ProofFailed,
    Unreachable,
)
from reconciler.admin.export import ExportedBytes, TxFeed
from reconciler.admin.operations import GRANT, REVOKE, DatabaseState, ImmudbAdmin
from reconciler.admin.schema import pb

__all__ = ["GRANT", "REVOKE", "AlreadyExists", "AlreadyLoaded", "AuthenticationFailed", "DatabaseClosed",
           "DatabaseState", "ExportedBytes", "ImmudbAdmin", "ImmudbError", "NotFound", "NotLoaded", "ProofFailed",
           "TxFeed", "Unreachable", "pb"]
