"""Streamed transactions: immudb's stream framing, and the feed of one
database's exported transactions (the journal's source, the drill's check)."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.admin.errors import ImmudbError
from reconciler.admin.schema import SERVICE, empty_pb2, grpc, pb

if TYPE_CHECKING:
    from reconciler.admin.session import Session

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

    def __init__(self, admin: Session, name: str, first_tx: int, wait: float = 30.0):
        self.admin, self.name, self.wait = admin, name, wait
        self._next = first_tx
        self._cancelled = False
        self._call = None
        self._token = admin.database_token(name)
        self._committed = admin.call(f"current state of {name}", "CurrentState", empty_pb2.Empty(),
                                      token=self._token).txId
        self._metadata = (("authorization", "Bearer " + self._token),)
        self._one = admin.channel.unary_stream(
            f"/{SERVICE.full_name}/exportTx", request_serializer=pb.ExportTxRequest.SerializeToString,
            response_deserializer=pb.Chunk.FromString)
        self._many = admin.channel.stream_stream(
            f"/{SERVICE.full_name}/streamExportTx", request_serializer=pb.ExportTxRequest.SerializeToString,
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
            raise self.admin.error(f"export transaction {self._next} from {self.name}", exc) from None
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
