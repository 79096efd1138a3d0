"""immudb's exported transaction, read exactly as immudb's store reads it.

An exported transaction is what ExportTx sends and ReplicateTx takes
(embedded/store, ImmuStore.ExportTx / ReplicateTx, v1.9.5 to v1.11.1):

    u32 header length, header, then per entry:
        u16 key length, key, u16 metadata length, metadata, u32 value length, value
    then, optionally, u16 length + bytes whose first is 1 when the values were
    truncated (only their SHA-256 is there instead)

and the header (TxHeader.ReadFrom) is

    u64 id, 32-byte previous Alh, u64 ts, u16 version,
        version 0: u16 nentries
        version 1: u16 metadata length, metadata, u32 nentries
    32-byte Eh, u64 BlTxID, 32-byte BlRoot

`parse_tx` accepts exactly the byte strings that ReplicateTx accepts into a
database with the same limits, and refuses the others, including the ones on
which immudb v1.11.1 panics (which ends the whole server): an empty
truncation field, a value length cut short after entry metadata, a header
cut short before BlTxID, transaction metadata whose `extra` attribute claims
more bytes than it has or more than 256. tests/test_exported_differential.py
holds this against immudb's own code, built from the same module as the test
servers.

What a transaction is committed as is not its bytes but the fields immudb
parsed from them (`TxHeader.Bytes`, the metadata re-serialised in its
canonical order): the Alh and the entries' hash (Eh) are computed here the
same way, so a journal's hash chain is the one immudb will hold.

Beyond its own bytes a transaction must follow its predecessor:
`Successor` checks the id, the previous Alh and, when the history is known
from transaction 1, BlRoot (the root of the tree of every earlier Alh).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from reconciler.errors import ReplicatorError

GENESIS_ALH = hashlib.sha256(b"").digest()  # the previous Alh of transaction 1
ZERO = bytes(32)

# immudb's constants (embedded/store)
MAX_TX_METADATA_LEN = (1 + 8) + (1 + 2 + 256)   # truncatedUptoTx + extra
MAX_EXTRA_LEN = 256
MAX_KV_METADATA_LEN = (1 + 0) + (1 + 8) + (1 + 0)  # deleted, expiresAt, nonIndexable
_MIN_HEADER = 8 + 32 + 8 + 2 * 2 + 32 + 8 + 32

_U16, _U32, _U64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")


class JournalError(ReplicatorError):
    """A journal's bytes are not what they claim to be: damaged, tampered
    with, or not a journal. The message names the transaction or segment."""


@dataclass(frozen=True)
class TxLimits:
    """The limits of the database a transaction is replayed into (immudb
    refuses a transaction beyond them). The defaults are immudb's for a new
    database (pkg/server: MaxKeyLen 1024, MaxValueLen 32 MiB, MaxTxEntries
    1024)."""

    max_key_len: int = 1024
    max_value_len: int = 1 << 25
    max_tx_entries: int = 1024

    @property
    def max_tx_bytes(self) -> int:
        """The longest exported transaction these limits allow (what a reader
        may allocate for one)."""
        entry = 2 + self.max_key_len + 2 + MAX_KV_METADATA_LEN + 4 + self.max_value_len
        return 4 + _MIN_HEADER + 2 + MAX_TX_METADATA_LEN + 4 + self.max_tx_entries * entry + 2 + 1


DEFAULT_LIMITS = TxLimits()
# for what a server exports of its own database (which took it under its own limits): no limit of ours
UNBOUNDED = TxLimits(max_key_len=0xFFFF, max_value_len=0xFFFF_FFFF, max_tx_entries=0xFFFF_FFFF)


@dataclass(frozen=True)
class TxHeader:
    """A transaction's header as immudb holds it (the fields it parsed)."""

    id: int
    prev_alh: bytes
    ts: int                 # seconds since the epoch (immudb's int64)
    version: int
    metadata: bytes         # canonical transaction metadata (b"" when none)
    entries: int
    eh: bytes
    bl_tx_id: int
    bl_root: bytes
    alh: bytes

    @property
    def truncated_up_to(self) -> int | None:
        """The transaction up to which immudb truncated history, when this
        header's metadata says so."""
        if self.metadata[:1] == b"\x00":
            return _U64.unpack_from(self.metadata, 1)[0]
        return None


def _malformed(tx_id: int | None, why: str) -> JournalError:
    where = f"transaction {tx_id}" if tx_id is not None else "transaction"
    return JournalError(f"{where}: refused: {why}")


def _tx_metadata(b: bytes, tx_id: int) -> bytes:
    """Canonical bytes of transaction metadata (TxMetadata.ReadFrom, then
    Bytes)."""
    attrs: dict[int, bytes] = {}
    i = 0
    while i != len(b):
        if i > len(b):
            raise _malformed(tx_id, "transaction metadata overruns its length")  # immudb panics here
        code = b[i]
        i += 1
        if code == 0:      # truncatedUptoTx
            if len(b) - i < 8:
                raise _malformed(tx_id, "transaction metadata: truncation attribute too short")
            attrs[0] = b[i:i + 8]
            i += 8
        elif code == 1:    # extra
            if len(b) - i < 2:
                raise _malformed(tx_id, "transaction metadata: extra attribute too short")
            n, = _U16.unpack_from(b, i)
            if n > MAX_EXTRA_LEN:
                raise _malformed(tx_id, f"transaction metadata: extra data of {n} bytes (immudb allows "
                                        f"{MAX_EXTRA_LEN})")  # immudb panics re-serialising it
            if len(b) - i - 2 < n:
                raise _malformed(tx_id, "transaction metadata: extra data overruns its length")  # immudb panics
            attrs[1] = b[i:i + 2 + n]
            i += 2 + n
        else:
            raise _malformed(tx_id, f"transaction metadata: unknown attribute {code}")
    return b"".join(bytes([code]) + attrs[code] for code in (0, 1) if code in attrs)


def _kv_metadata(b: bytes, tx_id: int) -> bytes:
    """Canonical bytes of an entry's metadata (KVMetadata.unsafeReadFrom,
    then Bytes)."""
    if len(b) > MAX_KV_METADATA_LEN:
        raise _malformed(tx_id, f"entry metadata of {len(b)} bytes (immudb allows {MAX_KV_METADATA_LEN})")
    attrs: dict[int, bytes] = {}
    i = 0
    while i != len(b):
        code = b[i]
        i += 1
        if code in (0, 2):  # deleted, nonIndexable
            attrs[code] = b""
        elif code == 1:     # expiresAt
            if len(b) - i < 8:
                raise _malformed(tx_id, "entry metadata: expiry attribute too short")
            attrs[1] = b[i:i + 8]
            i += 8
        else:
            raise _malformed(tx_id, f"entry metadata: unknown attribute {code}")
    return b"".join(bytes([code]) + attrs[code] for code in (0, 1, 2) if code in attrs)


def _inner(ts: int, version: int, metadata: bytes, entries: int, eh: bytes, bl_tx_id: int, bl_root: bytes) -> bytes:
    if version == 0:
        counts = _U16.pack(entries)
    else:
        counts = _U16.pack(len(metadata)) + metadata + _U32.pack(entries)
    return _U64.pack(ts & 0xFFFF_FFFF_FFFF_FFFF) + _U16.pack(version) + counts + eh + _U64.pack(bl_tx_id) + bl_root


def alh_of(tx_id: int, prev_alh: bytes, ts: int, version: int, metadata: bytes, entries: int, eh: bytes,
           bl_tx_id: int, bl_root: bytes) -> bytes:
    """immudb's accumulated linear hash of a header's fields:
    sha256(id + prevAlh + sha256(inner))."""
    inner = hashlib.sha256(_inner(ts, version, metadata, entries, eh, bl_tx_id, bl_root)).digest()
    return hashlib.sha256(_U64.pack(tx_id) + prev_alh + inner).digest()


def parse_header(b: bytes) -> TxHeader:
    """A header as TxHeader.ReadFrom reads it (bytes after BlRoot are
    ignored, as immudb does; a BlRoot cut short is zero-filled, as immudb's
    copy does), with its Alh."""
    if len(b) < _MIN_HEADER:
        raise _malformed(None, f"header of {len(b)} bytes is too short")
    tx_id, = _U64.unpack_from(b, 0)
    if tx_id < 1:
        raise _malformed(None, "transaction id 0")
    prev_alh = b[8:40]
    ts_raw, version = struct.unpack_from(">QH", b, 40)
    ts = ts_raw - (1 << 64) if ts_raw >= 1 << 63 else ts_raw
    i = 50
    metadata = b""
    if version == 0:
        entries, = _U16.unpack_from(b, i)
        i += 2
    elif version == 1:
        md_len, = _U16.unpack_from(b, i)
        i += 2
        if len(b) < i + md_len + 4 or md_len > MAX_TX_METADATA_LEN:
            raise _malformed(tx_id, "header metadata overruns the header")
        if md_len:
            metadata = _tx_metadata(b[i:i + md_len], tx_id)
            i += md_len
        entries, = _U32.unpack_from(b, i)
        i += 4
    else:
        raise _malformed(tx_id, f"unknown header version {version}")
    if entries < 1:
        raise _malformed(tx_id, "no entries")
    if len(b) < i + 32 + 8:
        raise _malformed(tx_id, "header cut short before BlTxID")  # immudb panics here
    eh = b[i:i + 32]
    bl_tx_id, = _U64.unpack_from(b, i + 32)
    if bl_tx_id >= tx_id:
        raise _malformed(tx_id, f"BlTxID {bl_tx_id} is not before the transaction")
    bl_root = b[i + 40:i + 72].ljust(32, b"\x00")
    return TxHeader(tx_id, prev_alh, ts, version, metadata, entries, eh, bl_tx_id, bl_root,
                    alh_of(tx_id, prev_alh, ts, version, metadata, entries, eh, bl_tx_id, bl_root))


@dataclass(frozen=True)
class ExportedTx:
    """One transaction as immudb exported it, checked: immudb would take
    these bytes, and its entries hash to the header's Eh. `truncated`: immudb
    sent the values' hashes only (its history was truncated): such a
    transaction restores without its values, so a restore refuses it."""

    header: TxHeader
    data: bytes
    truncated: bool

    @property
    def id(self) -> int:
        return self.header.id


def parse_tx(data: bytes, limits: TxLimits = DEFAULT_LIMITS) -> ExportedTx:
    """An exported transaction, read as ReplicateTx reads it into a
    database with `limits`, its entries checked against its header (Eh).
    Raises JournalError naming the transaction (by id when its header could
    be read)."""
    n = len(data)
    if n < 4:
        raise _malformed(None, "fewer than 4 bytes")
    hdr_len, = _U32.unpack_from(data, 0)
    if n < 4 + hdr_len:
        raise _malformed(None, "header overruns the transaction")
    header = parse_header(data[4:4 + hdr_len])
    tx_id = header.id
    i = 4 + hdr_len
    raw: list[tuple[bytes, bytes, bytes]] = []
    for _ in range(header.entries):
        if n < i + 8:
            raise _malformed(tx_id, f"entry {len(raw) + 1} of {header.entries} is cut short")
        k_len, = _U16.unpack_from(data, i)
        i += 2
        if n < i + 6 + k_len:
            raise _malformed(tx_id, f"entry {len(raw) + 1}: key overruns the transaction")
        key = data[i:i + k_len]
        i += k_len
        md_len, = _U16.unpack_from(data, i)
        i += 2
        if n < i + md_len:
            raise _malformed(tx_id, f"entry {len(raw) + 1}: metadata overruns the transaction")
        md = _kv_metadata(data[i:i + md_len], tx_id) if md_len else b""
        i += md_len
        if n < i + 4:
            raise _malformed(tx_id, f"entry {len(raw) + 1}: value length cut short")  # immudb panics here
        v_len, = _U32.unpack_from(data, i)
        i += 4
        if n < i + v_len:
            raise _malformed(tx_id, f"entry {len(raw) + 1}: value overruns the transaction")
        raw.append((key, md, data[i:i + v_len]))
        i += v_len
    truncated = False
    if i < n:
        if n < i + 2:
            raise _malformed(tx_id, "truncation field cut short")  # immudb panics here
        t_len, = _U16.unpack_from(data, i)
        i += 2
        if n < i + t_len:
            raise _malformed(tx_id, "truncation field overruns the transaction")
        if t_len == 0:
            raise _malformed(tx_id, "empty truncation field")  # immudb v1.11.1 panics here
        if data[i] > 1:
            raise _malformed(tx_id, f"truncation flag {data[i]} (0 or 1)")
        truncated = data[i] == 1
        i += t_len
    if i != n:
        raise _malformed(tx_id, f"{n - i} bytes after the last field")
    seen: set[bytes] = set()
    for key, _, value in raw:
        if not key:
            raise _malformed(tx_id, "an entry with an empty key")
        if len(key) > limits.max_key_len:
            raise _malformed(tx_id, f"a key of {len(key)} bytes (the database allows {limits.max_key_len})")
        if not truncated and len(value) > limits.max_value_len:
            raise _malformed(tx_id, f"a value of {len(value)} bytes (the database allows {limits.max_value_len})")
        if key in seen:
            raise _malformed(tx_id, "the same key twice")
        seen.add(key)
    if len(raw) > limits.max_tx_entries:
        raise _malformed(tx_id, f"{len(raw)} entries (the database allows {limits.max_tx_entries})")
    digests = []
    for key, md, value in raw:
        value_hash = value[:32].ljust(32, b"\x00") if truncated else hashlib.sha256(value).digest()
        if header.version == 0:
            if md:
                raise _malformed(tx_id, "entry metadata in a version 0 transaction")
            digests.append(hashlib.sha256(key + value_hash).digest())
        else:
            digests.append(hashlib.sha256(_U16.pack(len(md)) + md + _U16.pack(len(key)) + key + value_hash).digest())
    if entries_hash(digests) != header.eh:
        raise JournalError(f"transaction {tx_id}: its entries do not match its header's hash (Eh)")
    return ExportedTx(header, data, truncated)


def entries_hash(digests: list[bytes]) -> bytes:
    """The root of immudb's hash tree (embedded/htree BuildWith) over the
    entry digests: leaves sha256(0x00 + d), nodes sha256(0x01 + l + r), an
    odd node carried up as is."""
    if not digests:
        return hashlib.sha256(b"").digest()
    level = [hashlib.sha256(b"\x00" + d).digest() for d in digests]
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class BinaryLinks:
    """The root of immudb's accumulated hash tree (embedded/ahtree) over
    every Alh so far, kept as the peaks of its perfect subtrees: leaves
    sha256(0x00 + alh), nodes sha256(0x01 + left + right), the root the
    peaks folded from the right (RFC 6962's tree hash)."""

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[tuple[int, bytes]] = []   # (height, hash), largest first

    def append(self, alh: bytes) -> None:
        node, height = hashlib.sha256(b"\x00" + alh).digest(), 0
        while self._peaks and self._peaks[-1][0] == height:
            _, left = self._peaks.pop()
            node, height = hashlib.sha256(b"\x01" + left + node).digest(), height + 1
        self._peaks.append((height, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return ZERO
        acc = self._peaks[-1][1]
        for _, peak in reversed(self._peaks[:-1]):
            acc = hashlib.sha256(b"\x01" + peak + acc).digest()
        return acc


class Successor:
    """What the next transaction of a history must be: its id, its previous
    Alh, and (when the history is known from transaction 1) its BlRoot.
    `take` checks one and moves on; raises JournalError naming it."""

    def __init__(self, next_id: int = 1, prev_alh: bytes = GENESIS_ALH, from_genesis: bool | None = None):
        self.next_id, self.prev_alh = next_id, prev_alh
        self.links = BinaryLinks() if (from_genesis if from_genesis is not None else next_id == 1) else None

    def take(self, tx: ExportedTx) -> None:
        h = tx.header
        if h.id != self.next_id:
            raise JournalError(f"transaction {h.id} where {self.next_id} was expected")
        if h.prev_alh != self.prev_alh:
            raise JournalError(f"transaction {h.id}: the hash chain does not match (its previous Alh is "
                               f"{h.prev_alh.hex()[:16]}..., the transaction before has {self.prev_alh.hex()[:16]}...)")
        if self.links is not None:
            if h.bl_tx_id == 0:
                expected = ZERO
            elif h.bl_tx_id == self.links.size:
                expected = self.links.root()
            else:
                expected = None  # an older BlTxID (immudb before binary linking was synchronous): immudb checks it
            if expected is not None and h.bl_root != expected:
                raise JournalError(f"transaction {h.id}: its BlRoot is not the root of the history before it")
            self.links.append(h.alh)
        self.next_id, self.prev_alh = h.id + 1, h.alh
