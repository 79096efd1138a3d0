"""The journal's segments: files on a target, each carrying a run of
immudb's exported transactions (exported.py reads those). Pure: no
I/O beyond the streams and byte strings given.

A segment (format 2) is

    b"IMMUJRNL", u8 format (2), u32 header length, header (JSON), payload,
    32-byte SHA-256 of every byte before it

where the payload is compressed (zstd, its frame declaring its size)
records `u64 tx id, u32 length, exported transaction`, and the header says
what the file holds: the database, first and last tx, the Alh before the
first and after the last, the first and last transactions' timestamps, the
payload's sizes and SHA-256, and (when the primary signs its states) the
primary's signature of the last transaction's state. The trailing checksum
covers the header, so no field of it can change alone; a writer who
recomputes every hash is caught only by an anchor outside the target
(reconciler/trust). Format 1 (no trailing checksum) is still read.

A reader trusts nothing: the header must agree with its name and with the
transactions (ids, Alh, times), every transaction is read as immudb would
read it (exported.parse_tx) and must follow the one before, one holding
truncated values is refused, and nothing is allocated beyond what a checked
field allows (the payload is decompressed as a stream, record by record,
each record bounded by its transaction's checked header and the database's
limits).

Segment names carry the range and a prefix of both hashes, so a listing
alone shows how segments chain:
`<first:020d>-<last:020d>-<prev alh 8 hex>-<last alh 8 hex>.journal`.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from reconciler.exported import (
    DEFAULT_LIMITS,
    GENESIS_ALH,
    ExportedTx,
    JournalError,
    Successor,
    TxHeader,
    TxLimits,
    entries_hash,
    parse_header,
    parse_tx,
)
from reconciler.signed import SignedState

__all__ = ["GENESIS_ALH", "ExportedTx", "JournalError", "TxHeader", "TxLimits", "entries_hash", "parse_header",
           "parse_tx"]

MAGIC = b"IMMUJRNL"
FORMAT = 2
READABLE_FORMATS = (1, 2)
SUFFIX = ".journal"
_NAME = re.compile(r"(\d{20})-(\d{20})-([0-9a-f]{8})-([0-9a-f]{8})" + re.escape(SUFFIX))
_MAX_HEADER = 64 * 1024
MAX_SEGMENT_BYTES = 1 << 30        # compressed: what a reader holds in memory to check the trailing checksum
MAX_SEGMENT_PAYLOAD = 1 << 36      # uncompressed: a claim beyond this is refused (it is read as a stream)
_RECORD = struct.Struct(">QI")
_CHUNK = 1 << 20


# ----------------------------------------------------------------------
# segments

@dataclass(frozen=True)
class SegmentInfo:
    """A segment's header: what it claims to hold (checked against the
    transactions when they are read)."""

    database: str
    first_tx: int
    last_tx: int
    prev_alh: bytes        # Alh of first_tx - 1 (GENESIS_ALH before tx 1)
    last_alh: bytes
    first_ts: int
    last_ts: int
    transactions: int
    payload_bytes: int     # uncompressed
    sha256: str            # of the compressed payload
    compressed_bytes: int | None = None   # format 2
    signed: SignedState | None = None     # the primary's signed state of last_tx, when it signs
    format: int = FORMAT

    @property
    def name(self) -> str:
        return segment_name(self.first_tx, self.last_tx, self.prev_alh, self.last_alh)

    def as_dict(self) -> dict:
        d = {"format": self.format, "database": self.database, "first_tx": self.first_tx, "last_tx": self.last_tx,
             "prev_alh": self.prev_alh.hex(), "last_alh": self.last_alh.hex(), "first_ts": self.first_ts,
             "last_ts": self.last_ts, "transactions": self.transactions, "payload_bytes": self.payload_bytes,
             "compression": "zstd", "sha256": self.sha256}
        if self.format >= 2:
            d["compressed_bytes"] = self.compressed_bytes
        if self.signed is not None:
            d["signed"] = self.signed.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SegmentInfo:
        try:
            fmt = d.get("format")
            if fmt not in READABLE_FORMATS or d.get("compression") != "zstd":
                raise ValueError(f"format {fmt!r}, compression {d.get('compression')!r}")
            signed = SignedState.from_dict(d["signed"]) if d.get("signed") is not None else None
            info = cls(_text(d["database"]), _int(d["first_tx"]), _int(d["last_tx"]), bytes.fromhex(d["prev_alh"]),
                       bytes.fromhex(d["last_alh"]), _int(d["first_ts"], signed=True), _int(d["last_ts"], signed=True),
                       _int(d["transactions"]), _int(d["payload_bytes"]), _text(d["sha256"]),
                       _int(d["compressed_bytes"]) if fmt >= 2 else None, signed, fmt)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise JournalError(f"segment header is not valid ({exc})") from None
        if (info.first_tx < 1 or info.last_tx < info.first_tx or len(info.prev_alh) != 32
                or len(info.last_alh) != 32 or info.transactions != info.last_tx - info.first_tx + 1
                or info.last_ts < info.first_ts or not re.fullmatch(r"[0-9a-f]{64}", info.sha256)):
            raise JournalError("segment header is not consistent")
        if info.payload_bytes > MAX_SEGMENT_PAYLOAD or (info.compressed_bytes or 0) > MAX_SEGMENT_BYTES:
            raise JournalError(f"segment header claims {info.payload_bytes} bytes ({info.compressed_bytes} "
                               f"compressed), more than a segment may hold")
        if info.signed is not None and info.signed.tx_id != info.last_tx:
            raise JournalError("segment header's signed state is not of its last transaction")
        return info


def _int(value, signed: bool = False) -> int:
    """A JSON integer (not a bool, a float or a string), 64-bit."""
    if type(value) is not int or not (-(1 << 63) if signed else 0) <= value < (1 << 64):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


@dataclass(frozen=True)
class SegmentName:
    """What a segment's name says: enough to chain segments from a listing."""

    first_tx: int
    last_tx: int
    prev: str              # 8 hex of the Alh before first_tx
    last: str              # 8 hex of last_tx's Alh
    name: str


def segment_name(first_tx: int, last_tx: int, prev_alh: bytes, last_alh: bytes) -> str:
    return f"{first_tx:020d}-{last_tx:020d}-{prev_alh.hex()[:8]}-{last_alh.hex()[:8]}{SUFFIX}"


def parse_name(name: str) -> SegmentName | None:
    m = _NAME.fullmatch(name)
    if not m:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    if first < 1 or last < first:
        return None
    return SegmentName(first, last, m.group(3), m.group(4), name)


def encode_segment(database: str, txs: list[ExportedTx], prev_alh: bytes, level: int = 3,
                   signed: SignedState | None = None) -> tuple[SegmentInfo, bytes]:
    """A segment holding `txs` (consecutive, chained to `prev_alh`), with
    `signed` (the primary's signed state of the last one) when given."""
    import zstandard
    if not txs:
        raise ValueError("a segment holds at least one transaction")
    check_chain(txs, prev_alh)
    if any(tx.truncated for tx in txs):
        raise ValueError("a journal never holds a transaction with truncated values")
    raw = b"".join(_RECORD.pack(tx.id, len(tx.data)) + tx.data for tx in txs)
    payload = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    info = SegmentInfo(database, txs[0].id, txs[-1].id, prev_alh, txs[-1].header.alh, txs[0].header.ts,
                       txs[-1].header.ts, len(txs), len(raw), hashlib.sha256(payload).hexdigest(), len(payload),
                       signed)
    header = json.dumps(info.as_dict(), sort_keys=True, separators=(",", ":")).encode()
    body = MAGIC + struct.pack(">BI", FORMAT, len(header)) + header + payload
    return info, body + hashlib.sha256(body).digest()


def check_chain(txs: Iterable[ExportedTx], prev_alh: bytes) -> bytes:
    """Each transaction follows the one before (ids consecutive, prevAlh
    equal to its predecessor's Alh); the last Alh. Raises JournalError
    naming the first transaction that does not."""
    successor: Successor | None = None
    for tx in txs:
        if successor is None:
            successor = Successor(tx.id, prev_alh, from_genesis=False)
        successor.take(tx)
    return successor.prev_alh if successor is not None else prev_alh


def read_header(stream) -> SegmentInfo:
    """A segment's header, reading only its first bytes. Not yet checked
    against anything: what a listing may show, never what a restore acts on
    (decode_segment checks it)."""
    info, _ = _read_head(stream)
    return info


def _read_head(stream) -> tuple[SegmentInfo, bytes]:
    head = _read_exactly(stream, len(MAGIC) + 5)
    if head[:len(MAGIC)] != MAGIC:
        raise JournalError("not a journal segment (bad magic)")
    version, length = struct.unpack(">BI", head[len(MAGIC):])
    if version not in READABLE_FORMATS:
        raise JournalError(f"journal segment format {version} is not supported (this version reads "
                           f"{', '.join(map(str, READABLE_FORMATS))})")
    if length > _MAX_HEADER:
        raise JournalError("journal segment header too large")
    raw = _read_exactly(stream, length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise JournalError("journal segment header is not JSON") from None
    if not isinstance(header, dict):
        raise JournalError("journal segment header is not an object")
    info = SegmentInfo.from_dict(header)
    if info.format != version:
        raise JournalError(f"journal segment says format {version}, its header {info.format}")
    return info, head + raw


@dataclass
class DecodedSegment:
    """What decode_segment read: the header (checked against the name and
    the bytes), the SHA-256 of the whole file as read, and the transactions
    (each checked as it is given out)."""

    info: SegmentInfo
    digest: bytes
    transactions: Iterator[ExportedTx] = field(repr=False)

    def __iter__(self):  # (info, transactions), as before
        return iter((self.info, self.transactions))


def decode_segment(stream, expected: SegmentName | None = None, until: int | None = None,
                   limits: TxLimits = DEFAULT_LIMITS, successor: Successor | None = None,
                   database: str | None = None) -> DecodedSegment:
    """A segment's header and its transactions (up to `until`), every one
    checked: the trailing checksum (format 2) and the payload's before
    anything is given out; the header against its name (and `database`);
    each transaction read as immudb would read it into a database with
    `limits`, following the one before (`successor`, shared across
    segments, or one starting at the header's prev_alh), its values not
    truncated; the header's times, last Alh and count against the
    transactions. A transaction after `until` is not even decompressed."""
    import zstandard
    info, head = _read_head(stream)
    where = f"segment {expected.name if expected else info.name}"
    if expected is not None and (expected.first_tx, expected.last_tx, expected.prev, expected.last) != (
            info.first_tx, info.last_tx, info.prev_alh.hex()[:8], info.last_alh.hex()[:8]):
        raise JournalError(f"{where}: its header says it is {info.name}")
    if database is not None and info.database != database:
        raise JournalError(f"{where}: its header names database {info.database!r}, not {database!r}")
    if info.format >= 2:
        if info.compressed_bytes is None:  # the header's parser sets it for format 2: never trust that silently
            raise JournalError(f"{where}: its header gives no compressed length")
        body = _read_exactly(stream, info.compressed_bytes + 32)
        payload, trailer = body[:-32], body[-32:]
        whole = hashlib.sha256(head)
        whole.update(payload)
        if whole.digest() != trailer:
            raise JournalError(f"{where}: its checksum does not match (damaged, or changed after it was written)")
        if stream.read(1):
            raise JournalError(f"{where}: bytes after its checksum")
        whole.update(trailer)
    else:
        payload = stream.read(MAX_SEGMENT_BYTES + 1)
        if len(payload) > MAX_SEGMENT_BYTES:
            raise JournalError(f"{where}: payload too large")
        whole = hashlib.sha256(head)
        whole.update(payload)
    if hashlib.sha256(payload).hexdigest() != info.sha256:
        raise JournalError(f"{where} (transactions {info.first_tx}-{info.last_tx}): checksum does not match")
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise JournalError(f"{where}: not a zstd payload ({exc})") from None
    if declared != info.payload_bytes:  # -1: not declared; a frame claiming more than the header is refused here
        raise JournalError(f"{where}: its payload declares {declared} bytes, its header {info.payload_bytes}")
    chain = successor if successor is not None else Successor(info.first_tx, info.prev_alh, from_genesis=False)
    if chain.next_id != info.first_tx or chain.prev_alh != info.prev_alh:
        raise JournalError(f"transaction {info.first_tx}: the hash chain does not match ({where} does not follow "
                           f"transaction {chain.next_id - 1})")

    def transactions() -> Iterator[ExportedTx]:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload), read_size=_CHUNK,
                                                            read_across_frames=False)
        left, count, last = info.payload_bytes, 0, None
        with reader:
            while left > 0:
                expected_id = info.first_tx + count
                if until is not None and expected_id > until:
                    return
                if left < _RECORD.size:
                    raise JournalError(f"{where}: truncated record after transaction {expected_id - 1}")
                tx_id, length = _RECORD.unpack(_read_exactly(reader, _RECORD.size, where))
                left -= _RECORD.size
                if tx_id != expected_id:
                    raise JournalError(f"{where}: transaction {tx_id} where {expected_id} was expected")
                data = _read_tx(reader, tx_id, length, left, limits, where)
                left -= length
                try:
                    tx = parse_tx(data, limits)
                except JournalError as exc:
                    raise JournalError(f"{where}: {exc}") from None
                if tx.id != tx_id:
                    raise JournalError(f"{where}: record {tx_id} holds transaction {tx.id}")
                if tx.truncated:
                    raise JournalError(f"{where}: transaction {tx_id}: its values were truncated (only their "
                                       f"hashes are here), so it cannot be restored; a journal never holds one")
                if count == 0 and tx.header.ts != info.first_ts:
                    raise JournalError(f"{where}: transaction {tx_id} was committed at {tx.header.ts}, the "
                                       f"header says {info.first_ts}")
                chain.take(tx)
                count += 1
                last = tx
                yield tx
            if reader.read(1):
                raise JournalError(f"{where}: payload longer than its header says")
        if last is None or last.id != info.last_tx or last.header.alh != info.last_alh \
                or last.header.ts != info.last_ts:
            raise JournalError(f"{where}: its transactions end at {last.id if last else info.first_tx - 1}"
                               f"{'' if last is None else f' (committed at {last.header.ts})'}, its header says "
                               f"{info.last_tx} (at {info.last_ts})")

    return DecodedSegment(info, whole.digest(), transactions())


def _read_tx(reader, tx_id: int, length: int, left: int, limits: TxLimits, where: str) -> bytes:
    """One record's transaction, allocating only what its checked header
    allows: the header is read and parsed first, and the record may be no
    longer than its entry count allows under `limits`."""
    if length > left:
        raise JournalError(f"{where}: transaction {tx_id}: its record overruns the payload")
    if length < 4:
        raise JournalError(f"{where}: transaction {tx_id}: refused: fewer than 4 bytes")
    prefix = _read_exactly(reader, 4, where)
    hdr_len, = struct.unpack(">I", prefix)
    if hdr_len > min(length - 4, _MAX_HEADER):
        raise JournalError(f"{where}: transaction {tx_id}: refused: header of {hdr_len} bytes")
    header_bytes = _read_exactly(reader, hdr_len, where)
    try:
        header = parse_header(header_bytes)
    except JournalError as exc:
        raise JournalError(f"{where}: {exc}") from None
    if header.entries > limits.max_tx_entries:
        raise JournalError(f"{where}: transaction {tx_id}: refused: {header.entries} entries (the database allows "
                           f"{limits.max_tx_entries})")
    per_entry = 2 + limits.max_key_len + 2 + 11 + 4 + limits.max_value_len
    if length > 4 + hdr_len + header.entries * per_entry + 2 + 0xFFFF:
        raise JournalError(f"{where}: transaction {tx_id}: refused: a record of {length} bytes for "
                           f"{header.entries} entries")
    parts = [prefix, header_bytes]
    remaining = length - 4 - hdr_len
    while remaining:
        chunk = reader.read(min(remaining, _CHUNK))
        if not chunk:
            raise JournalError(f"{where}: transaction {tx_id}: the payload ends inside it")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _read_exactly(stream, n: int, where: str = "journal segment") -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(min(n - got, _CHUNK))
        if not chunk:
            raise JournalError(f"{where} is truncated")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
