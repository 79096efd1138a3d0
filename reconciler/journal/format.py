"""The journal's bytes: immudb's exported transactions, and the segments
that carry them. Pure: no I/O beyond the byte strings given.

An exported transaction is what immudb's ExportTx sends and ReplicateTx
takes (embedded/store ImmuStore.ExportTx, v1.9.5 to v1.11.1):

    u32 header length, header, then per entry:
        u16 key length, key, u16 metadata length, metadata, u32 value length, value
    then u16 length + one byte: 1 when the values were truncated (only their
    SHA-256 is there instead)

and the header (TxHeader.Bytes) is

    u64 id, 32-byte previous Alh, then the "inner" part:
    u64 ts, u16 version, (version 0: u16 nentries)
                         (version 1: u16 md length, md, u32 nentries),
    32-byte Eh, u64 BlTxID, 32-byte BlRoot

The accumulated linear hash is Alh = sha256(id + prevAlh + sha256(inner)),
and Eh is the root of the entries' hash tree (embedded/htree). Checking both
here lets a reader refuse a tampered journal and name the transaction
before immudb sees a byte of it.

A segment is one file on a target:

    b"IMMUJRNL", u8 format (1), u32 header length, header (JSON), payload

where the payload is compressed (zstd) records `u64 tx id, u32 length,
exported transaction`, and the header says what the file holds (database,
first and last tx, the Alh before the first and after the last, first and
last tx timestamps, the payload's SHA-256). Segment names carry the same
range and a prefix of both hashes, so a listing alone shows how segments
chain: `<first:020d>-<last:020d>-<prev alh 8 hex>-<last alh 8 hex>.journal`.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from reconciler.errors import ReplicatorError

MAGIC = b"IMMUJRNL"
FORMAT = 1
SUFFIX = ".journal"
GENESIS_ALH = hashlib.sha256(b"").digest()  # the previous Alh of transaction 1
_NAME = re.compile(r"(\d{20})-(\d{20})-([0-9a-f]{8})-([0-9a-f]{8})" + re.escape(SUFFIX))
_MAX_HEADER = 64 * 1024
_RECORD = struct.Struct(">QI")


class JournalError(ReplicatorError):
    """A journal's bytes are not what they claim to be: damaged, tampered
    with, or not a journal. The message names the transaction or segment."""


@dataclass(frozen=True)
class TxHeader:
    id: int
    prev_alh: bytes
    ts: int
    version: int
    entries: int
    eh: bytes
    alh: bytes


def parse_header(header: bytes) -> TxHeader:
    """The fields of an exported transaction's header, and its Alh."""
    if len(header) < 8 + 32 + 8 + 2:
        raise JournalError("transaction header too short")
    tx_id, = struct.unpack_from(">Q", header, 0)
    prev_alh = header[8:40]
    ts, version = struct.unpack_from(">QH", header, 40)
    i = 50
    if version == 0:
        entries, = struct.unpack_from(">H", header, i)
        i += 2
    elif version == 1:
        md_len, = struct.unpack_from(">H", header, i)
        i += 2 + md_len
        if len(header) < i + 4:
            raise JournalError(f"transaction {tx_id}: header too short")
        entries, = struct.unpack_from(">I", header, i)
        i += 4
    else:
        raise JournalError(f"transaction {tx_id}: unknown header version {version}")
    if len(header) != i + 32 + 8 + 32:
        raise JournalError(f"transaction {tx_id}: header length {len(header)} does not match its version")
    eh = header[i:i + 32]
    inner = hashlib.sha256(header[40:]).digest()
    alh = hashlib.sha256(header[:40] + inner).digest()
    return TxHeader(tx_id, prev_alh, ts, version, entries, eh, alh)


def _leaf_digests(version: int, entries: list[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    """Each entry's digest as immudb computes it (TxEntryDigest_v1_1/_v1_2)
    from (key, metadata, SHA-256 of the value)."""
    digests = []
    for key, md, value_hash in entries:
        if version == 0:
            if md:
                raise JournalError("entry metadata in a version 0 transaction")
            digests.append(hashlib.sha256(key + value_hash).digest())
        else:
            digests.append(hashlib.sha256(struct.pack(">H", len(md)) + md + struct.pack(">H", len(key)) + key
                                          + value_hash).digest())
    return digests


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


@dataclass(frozen=True)
class ExportedTx:
    """One transaction as immudb exported it, checked: its entries hash to
    the header's Eh. `truncated`: immudb sent the values' hashes only (its
    history was truncated), so it cannot be replayed with its values."""

    header: TxHeader
    data: bytes
    truncated: bool

    @property
    def id(self) -> int:
        return self.header.id


def parse_tx(data: bytes) -> ExportedTx:
    """An exported transaction, with its entries checked against its header
    (Eh). Raises JournalError naming the transaction."""
    try:
        hdr_len, = struct.unpack_from(">I", data, 0)
        header = parse_header(data[4:4 + hdr_len])
        i = 4 + hdr_len
        raw = []
        for _ in range(header.entries):
            k_len, = struct.unpack_from(">H", data, i)
            key = data[i + 2:i + 2 + k_len]
            i += 2 + k_len
            md_len, = struct.unpack_from(">H", data, i)
            md = data[i + 2:i + 2 + md_len]
            i += 2 + md_len
            v_len, = struct.unpack_from(">I", data, i)
            value = data[i + 4:i + 4 + v_len]
            if len(value) != v_len or len(key) != k_len or len(md) != md_len:
                raise struct.error("short entry")
            i += 4 + v_len
            raw.append((key, md, value))
        truncated = False
        if i < len(data):
            t_len, = struct.unpack_from(">H", data, i)
            flag = data[i + 2:i + 2 + t_len]
            i += 2 + t_len
            truncated = len(flag) > 0 and flag[0] == 1
        if i != len(data):
            raise struct.error("trailing bytes")
    except struct.error as exc:
        raise JournalError(f"transaction bytes are malformed ({exc})") from None
    hashed = [(k, md, v if truncated else hashlib.sha256(v).digest()) for k, md, v in raw]
    if truncated and any(len(v) != 32 for _, _, v in hashed):
        raise JournalError(f"transaction {header.id}: truncated value hashes are not 32 bytes")
    if entries_hash(_leaf_digests(header.version, hashed)) != header.eh:
        raise JournalError(f"transaction {header.id}: its entries do not match its header's hash (Eh)")
    return ExportedTx(header, data, truncated)


# ----------------------------------------------------------------------
# segments

@dataclass(frozen=True)
class SegmentInfo:
    """A segment's header: what it holds."""

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

    @property
    def name(self) -> str:
        return segment_name(self.first_tx, self.last_tx, self.prev_alh, self.last_alh)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "database": self.database, "first_tx": self.first_tx, "last_tx": self.last_tx,
                "prev_alh": self.prev_alh.hex(), "last_alh": self.last_alh.hex(), "first_ts": self.first_ts,
                "last_ts": self.last_ts, "transactions": self.transactions, "payload_bytes": self.payload_bytes,
                "compression": "zstd", "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentInfo":
        try:
            if d.get("format") != FORMAT or d.get("compression") != "zstd":
                raise ValueError(f"format {d.get('format')!r}, compression {d.get('compression')!r}")
            info = cls(str(d["database"]), int(d["first_tx"]), int(d["last_tx"]), bytes.fromhex(d["prev_alh"]),
                       bytes.fromhex(d["last_alh"]), int(d["first_ts"]), int(d["last_ts"]), int(d["transactions"]),
                       int(d["payload_bytes"]), str(d["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"segment header is not valid ({exc})") from None
        if (info.first_tx < 1 or info.last_tx < info.first_tx or len(info.prev_alh) != 32
                or len(info.last_alh) != 32 or info.transactions != info.last_tx - info.first_tx + 1):
            raise JournalError("segment header is not consistent")
        return info


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


def encode_segment(database: str, txs: list[ExportedTx], prev_alh: bytes, level: int = 3) -> tuple[SegmentInfo, bytes]:
    """A segment holding `txs` (consecutive, chained to `prev_alh`)."""
    import zstandard
    if not txs:
        raise ValueError("a segment holds at least one transaction")
    check_chain(txs, prev_alh)
    raw = b"".join(_RECORD.pack(tx.id, len(tx.data)) + tx.data for tx in txs)
    payload = zstandard.ZstdCompressor(level=level).compress(raw)
    info = SegmentInfo(database, txs[0].id, txs[-1].id, prev_alh, txs[-1].header.alh, txs[0].header.ts,
                       txs[-1].header.ts, len(txs), len(raw), hashlib.sha256(payload).hexdigest())
    header = json.dumps(info.as_dict(), sort_keys=True, separators=(",", ":")).encode()
    return info, MAGIC + struct.pack(">BI", FORMAT, len(header)) + header + payload


def check_chain(txs: Iterable[ExportedTx], prev_alh: bytes) -> bytes:
    """Each transaction follows the one before (ids consecutive, prevAlh
    equal to its predecessor's Alh); the last Alh. Raises JournalError
    naming the first transaction that does not."""
    expected_id = None
    for tx in txs:
        if expected_id is not None and tx.id != expected_id:
            raise JournalError(f"transaction {tx.id} where {expected_id} was expected")
        if tx.header.prev_alh != prev_alh:
            raise JournalError(f"transaction {tx.id}: the hash chain does not match (its previous Alh is "
                               f"{tx.header.prev_alh.hex()[:16]}..., the transaction before has "
                               f"{prev_alh.hex()[:16]}...)")
        prev_alh, expected_id = tx.header.alh, tx.id + 1
    return prev_alh


def read_header(stream: io.RawIOBase | io.BufferedIOBase) -> SegmentInfo:
    """A segment's header, reading only its first bytes."""
    head = _read_exactly(stream, len(MAGIC) + 5)
    if head[:len(MAGIC)] != MAGIC:
        raise JournalError("not a journal segment (bad magic)")
    version, length = struct.unpack(">BI", head[len(MAGIC):])
    if version != FORMAT:
        raise JournalError(f"journal segment format {version} is not supported (this version reads {FORMAT})")
    if length > _MAX_HEADER:
        raise JournalError("journal segment header too large")
    try:
        header = json.loads(_read_exactly(stream, length))
    except ValueError:
        raise JournalError("journal segment header is not JSON") from None
    if not isinstance(header, dict):
        raise JournalError("journal segment header is not an object")
    return SegmentInfo.from_dict(header)


def decode_segment(stream, expected: SegmentName | None = None, until: int | None = None,
                   max_payload: int = 1 << 31) -> tuple[SegmentInfo, Iterator[ExportedTx]]:
    """A segment's header, and its transactions (up to `until`), every one
    checked (Eh, the hash chain from the header's prev_alh, ids, the
    payload's checksum, the header against its name). The checksum is
    checked before any transaction is given out; a transaction after
    `until` is not even read."""
    import zstandard
    info = read_header(stream)
    where = f"segment {info.name}"
    if expected is not None and (expected.first_tx, expected.last_tx, expected.prev, expected.last) != (
            info.first_tx, info.last_tx, info.prev_alh.hex()[:8], info.last_alh.hex()[:8]):
        raise JournalError(f"segment {expected.name}: its header says it is {info.name}")
    if info.payload_bytes > max_payload:  # a hostile header must not make us allocate it
        raise JournalError(f"{where}: its header claims {info.payload_bytes} bytes, more than a segment holds")
    payload = stream.read(max_payload + 1)
    if len(payload) > max_payload:
        raise JournalError(f"{where}: payload too large")
    if hashlib.sha256(payload).hexdigest() != info.sha256:
        raise JournalError(f"{where} (transactions {info.first_tx}-{info.last_tx}): checksum does not match")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max(info.payload_bytes, 1))
    except zstandard.ZstdError as exc:
        raise JournalError(f"{where}: cannot decompress ({exc})") from None
    if len(raw) != info.payload_bytes:
        raise JournalError(f"{where}: payload is {len(raw)} bytes, its header says {info.payload_bytes}")

    def transactions() -> Iterator[ExportedTx]:
        i, expected_id, prev = 0, info.first_tx, info.prev_alh
        last = None
        while i < len(raw):
            if len(raw) - i < _RECORD.size:
                raise JournalError(f"{where}: truncated record after transaction {expected_id - 1}")
            tx_id, length = _RECORD.unpack_from(raw, i)
            if until is not None and tx_id > until:
                return
            i += _RECORD.size
            if tx_id != expected_id or len(raw) - i < length:
                raise JournalError(f"{where}: transaction {tx_id} where {expected_id} was expected")
            try:
                tx = parse_tx(raw[i:i + length])
            except JournalError as exc:
                detail = str(exc) if str(exc).startswith("transaction") else f"transaction {tx_id}: {exc}"
                raise JournalError(f"{where}: {detail}") from None
            i += length
            if tx.id != tx_id:
                raise JournalError(f"{where}: record {tx_id} holds transaction {tx.id}")
            prev = check_chain([tx], prev)
            expected_id += 1
            last = tx
            yield tx
        if last is None or last.id != info.last_tx or prev != info.last_alh or last.header.ts != info.last_ts:
            raise JournalError(f"{where}: ends at transaction {expected_id - 1}, its header says {info.last_tx}")

    return info, transactions()


def _read_exactly(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise JournalError("journal segment is truncated")
        data += chunk
    return data
