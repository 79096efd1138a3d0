"""Writing and reading test data with immudb-py's own client: an independent
path to the servers, so tests do not check the admin module with itself."""
from __future__ import annotations

import time
import warnings

from tests.support.waiting import patient

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from immudb import ImmudbClient


def client(server, database: str) -> ImmudbClient:
    c = ImmudbClient(server.address, timeout=60)  # as generous as the code under test's
    c.login(server.username, server.password, database=database.encode())
    return c


def write(server, database: str, count: int, prefix: str = "key") -> dict[bytes, bytes]:
    """`count` keys in one transaction each; returns what was written."""
    c = client(server, database)
    written = {}
    for i in range(count):
        key, value = f"{prefix}{i}".encode(), f"value-{prefix}-{i}".encode() * 3
        c.set(key, value)
        written[key] = value
    c.shutdown()
    return written


def write_random(server, database: str, count: int, size: int = 4096) -> dict[bytes, bytes]:
    """`count` keys of random bytes with random values of `size` bytes, one
    transaction each; returns what was written. A leak check can find them
    in a journal segment, compressed: zstd stores literals this random as
    they are (at 4 KiB; not write()'s repetitive text, nor short values
    among the transactions' headers, which it Huffman-codes)."""
    import os
    c = client(server, database)
    written = {}
    for _ in range(count):
        key, value = b"rk" + os.urandom(30), os.urandom(size)
        c.set(key, value)
        written[key] = value
    c.shutdown()
    return written


def write_blobs(server, database: str, count: int, size: int = 512 * 1024) -> None:
    """`count` incompressible values of `size` bytes, one transaction each."""
    import os
    c = client(server, database)
    for i in range(count):
        c.set(f"blob{i}".encode(), os.urandom(size))
    c.shutdown()


def state(server, database: str) -> tuple[int, bytes]:
    c = client(server, database)
    s = c.currentState()
    c.shutdown()
    return s.txId, s.txHash


def read(server, database: str, keys) -> dict[bytes, bytes | None]:
    c = client(server, database)
    out = {}
    for key in keys:
        r = c.get(key)
        out[key] = r.value if r is not None else None
    c.shutdown()
    return out


def wait_caught_up(primary_server, replica_server, primary_db: str, replica_db: str, timeout: float = 30) -> tuple:
    """Wait until the replica database has the primary's tx id and hash;
    returns (primary_state, replica_state) at the end, equal or not."""
    deadline = time.monotonic() + patient(timeout)
    want = state(primary_server, primary_db)
    got = None
    while time.monotonic() < deadline:
        try:
            got = state(replica_server, replica_db)
        except Exception:  # noqa: BLE001 - the replica db may still be starting
            got = None
        if got == want:
            break
        time.sleep(0.2)
    return want, got


def create_small_database(admin, name: str) -> None:
    """A database with small store limits (its replica copies them): each
    replica stream costs its primary much less memory than with immudb's
    defaults, so that hundreds fit in a test machine."""
    from immudb.grpc import schema_pb2 as pb
    settings = pb.DatabaseNullableSettings(maxKeyLen=pb.NullableUint32(value=256),
                                           maxTxEntries=pb.NullableUint32(value=64))
    admin.call(f"create database {name}", "CreateDatabaseV2", pb.CreateDatabaseRequest(name=name, settings=settings))


def create_sync_database(admin, name: str, acks: int = 1) -> None:
    """A primary database whose commits wait for `acks` synchronous replicas
    (immudb needs syncReplication with syncAcks)."""
    from immudb.grpc import schema_pb2 as pb
    replication = pb.ReplicationNullableSettings(syncReplication=pb.NullableBool(value=True),
                                                 syncAcks=pb.NullableUint32(value=acks))
    settings = pb.DatabaseNullableSettings(replicationSettings=replication)
    admin.call(f"create database {name}", "CreateDatabaseV2", pb.CreateDatabaseRequest(name=name, settings=settings))


def try_write(server, database: str, timeout: float) -> bool:
    """One write with a client that gives up after `timeout` seconds: True
    if it committed, False if it was still waiting (for acknowledgements)."""
    import grpc
    c = ImmudbClient(server.address, timeout=timeout)
    c.login(server.username, server.password, database=database.encode())
    started = time.monotonic()
    try:
        c.set(b"sync-probe", b"value")
        return True
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return False
        # the server also ends a call at its deadline, with RST_STREAM CANCEL; when
        # that reaches the client before its own timer fires, gRPC says CANCELLED
        if exc.code() == grpc.StatusCode.CANCELLED and time.monotonic() - started >= timeout * 0.9:
            return False
        raise
    finally:
        c.shutdown()
