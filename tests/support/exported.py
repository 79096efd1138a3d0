"""immudb's exported transactions and journal segments built byte for byte
here, independently of reconciler/journal (its own hash code): what tests
feed the reader, what the differential test feeds immudb, and what a
forger who can write a target writes (every hash recomputed, so that the
result is consistent with itself)."""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field, replace

GENESIS = hashlib.sha256(b"").digest()


def sha(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def htree_root(digests: list[bytes]) -> bytes:
    level = [sha(b"\x00", d) for d in digests]
    if not level:
        return sha()
    while len(level) > 1:
        nxt = [sha(b"\x01", level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def ahtree_root(alhs: list[bytes]) -> bytes:
    """RFC 6962's tree hash, as immudb's ahtree (recursive, independent of
    the product's peaks)."""
    if not alhs:
        return bytes(32)
    if len(alhs) == 1:
        return sha(b"\x00", alhs[0])
    k = 1
    while k * 2 < len(alhs):
        k *= 2
    return sha(b"\x01", ahtree_root(alhs[:k]), ahtree_root(alhs[k:]))


@dataclass
class Entry:
    key: bytes
    value: bytes
    metadata: bytes = b""          # KV metadata as written (canonical unless a test says otherwise)


@dataclass
class Tx:
    """One exported transaction's fields; `bytes()` encodes it, with Eh
    computed from the entries unless `eh` is forced."""

    id: int
    prev_alh: bytes
    entries: list[Entry]
    ts: int = 1_795_000_000
    version: int = 1
    tx_metadata: bytes = b""
    bl_tx_id: int = 0
    bl_root: bytes = bytes(32)
    truncation: bytes | None = b"\x00"   # the trailing field's content (None: absent)
    truncated_values: bool = False        # values are the 32-byte hashes
    eh: bytes | None = None               # None: computed
    nentries: int | None = None           # None: len(entries)
    header_tail: bytes = b""              # bytes after BlRoot inside the header

    def entry_digest(self, e: Entry) -> bytes:
        vh = e.value[:32].ljust(32, b"\x00") if self.truncated_values else sha(e.value)
        if self.version == 0:
            return sha(e.key, vh)
        return sha(struct.pack(">H", len(e.metadata)), e.metadata, struct.pack(">H", len(e.key)), e.key, vh)

    def computed_eh(self) -> bytes:
        return htree_root([self.entry_digest(e) for e in self.entries])

    def header(self) -> bytes:
        n = len(self.entries) if self.nentries is None else self.nentries
        if self.version == 0:
            counts = struct.pack(">H", n)
        else:
            counts = struct.pack(">H", len(self.tx_metadata)) + self.tx_metadata + struct.pack(">I", n)
        eh = self.computed_eh() if self.eh is None else self.eh
        return (struct.pack(">Q", self.id) + self.prev_alh + struct.pack(">QH", self.ts & (2 ** 64 - 1), self.version)
                + counts + eh + struct.pack(">Q", self.bl_tx_id) + self.bl_root + self.header_tail)

    def alh(self) -> bytes:
        h = self.header()
        if self.header_tail:
            h = h[:-len(self.header_tail)]
        return sha(h[:40], sha(h[40:]))

    def bytes(self) -> bytes:
        h = self.header()
        body = b"".join(struct.pack(">H", len(e.key)) + e.key + struct.pack(">H", len(e.metadata)) + e.metadata
                        + struct.pack(">I", len(e.value)) + e.value for e in self.entries)
        tail = b"" if self.truncation is None else struct.pack(">H", len(self.truncation)) + self.truncation
        return struct.pack(">I", len(h)) + h + body + tail


@dataclass
class History:
    """A chain of transactions whose hashes link as immudb links them
    (prevAlh, BlTxID = id - 1, BlRoot over every earlier Alh). `rebuild`
    recomputes every hash after a change: what a consistent forger does."""

    txs: list[Tx] = field(default_factory=list)

    @classmethod
    def of(cls, n: int, start_ts: int = 1_795_000_000, key: str = "k", value: str = "value",
           version: int = 1) -> History:
        h = cls([Tx(i, GENESIS, [Entry(f"{key}{i}".encode(), f"{value} {i}".encode() * i)], ts=start_ts + i,
                    version=version) for i in range(1, n + 1)])
        return h.rebuild()

    def rebuild(self) -> History:
        alhs: list[bytes] = []
        prev = GENESIS
        for tx in self.txs:
            tx.prev_alh = prev
            tx.bl_tx_id = tx.id - 1
            tx.bl_root = ahtree_root(alhs)
            prev = tx.alh()
            alhs.append(prev)
        return self

    def alh(self, tx_id: int) -> bytes:
        return self.txs[tx_id - 1].alh() if tx_id else GENESIS

    def copy(self) -> History:
        return History([replace(t, entries=[replace(e) for e in t.entries]) for t in self.txs])


def segment(database: str, txs: list[Tx], fmt: int = 2, header_changes: dict | None = None,
            signed: dict | None = None, level: int = 3) -> tuple[str, bytes]:
    """A journal segment (name, bytes) holding `txs`, every checksum right
    for what it holds; `header_changes` overrides header fields (the
    checksums are computed after, as a forger would)."""
    import zstandard
    raw = b"".join(struct.pack(">QI", t.id, len(t.bytes())) + t.bytes() for t in txs)
    payload = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    prev = txs[0].prev_alh
    last = txs[-1].alh()
    header = {"format": fmt, "database": database, "first_tx": txs[0].id, "last_tx": txs[-1].id,
              "prev_alh": prev.hex(), "last_alh": last.hex(), "first_ts": txs[0].ts, "last_ts": txs[-1].ts,
              "transactions": len(txs), "payload_bytes": len(raw), "compression": "zstd",
              "sha256": hashlib.sha256(payload).hexdigest()}
    if fmt >= 2:
        header["compressed_bytes"] = len(payload)
    if signed is not None:
        header["signed"] = signed
    header.update(header_changes or {})
    return seal(header, payload)


def seal(header: dict, payload: bytes) -> tuple[str, bytes]:
    """The segment file for `header` and `payload`, its name from the header."""
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = b"IMMUJRNL" + struct.pack(">BI", header["format"], len(h)) + h + payload
    if header["format"] >= 2:
        body += hashlib.sha256(body).digest()
    name = (f"{int(header['first_tx']):020d}-{int(header['last_tx']):020d}-{str(header['prev_alh'])[:8]}-"
            f"{str(header['last_alh'])[:8]}.journal")
    return name, body


def open_segment(blob: bytes) -> tuple[dict, bytes]:
    """(header, decompressed payload) of a segment, checking nothing."""
    import zstandard
    length, = struct.unpack(">I", blob[9:13])
    header = json.loads(blob[13:13 + length])
    payload = blob[13 + length:len(blob) - (32 if header["format"] >= 2 else 0)]
    return header, zstandard.ZstdDecompressor().decompress(payload, max_output_size=header["payload_bytes"])


def reseal(blob: bytes, raw: bytes, **header_changes) -> bytes:
    """Segment `blob` with its payload replaced by `raw` (decompressed) and
    every checksum recomputed: what a forger who changes bytes writes."""
    import zstandard
    header, _ = open_segment(blob)
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    header.update(payload_bytes=len(raw), sha256=hashlib.sha256(payload).hexdigest(), **header_changes)
    if header["format"] >= 2:
        header["compressed_bytes"] = len(payload)
    return seal(header, payload)[1]


def parse(data: bytes) -> Tx:
    """A Tx from exported bytes as immudb writes them (canonical input only:
    the forger's view of a real transaction)."""
    hdr_len, = struct.unpack_from(">I", data)
    h = data[4:4 + hdr_len]
    tx_id, = struct.unpack_from(">Q", h)
    prev = h[8:40]
    ts, version = struct.unpack_from(">QH", h, 40)
    i = 50
    md = b""
    if version == 0:
        n, = struct.unpack_from(">H", h, i)
        i += 2
    else:
        md_len, = struct.unpack_from(">H", h, i)
        md = h[i + 2:i + 2 + md_len]
        i += 2 + md_len
        n, = struct.unpack_from(">I", h, i)
        i += 4
    bl_tx, = struct.unpack_from(">Q", h, i + 32)
    bl_root = h[i + 40:i + 72]
    j = 4 + hdr_len
    entries = []
    for _ in range(n):
        k_len, = struct.unpack_from(">H", data, j)
        key = data[j + 2:j + 2 + k_len]
        j += 2 + k_len
        m_len, = struct.unpack_from(">H", data, j)
        kmd = data[j + 2:j + 2 + m_len]
        j += 2 + m_len
        v_len, = struct.unpack_from(">I", data, j)
        value = data[j + 4:j + 4 + v_len]
        j += 4 + v_len
        entries.append(Entry(key, value, kmd))
    trunc = None
    if j < len(data):
        t_len, = struct.unpack_from(">H", data, j)
        trunc = data[j + 2:j + 2 + t_len]
    return Tx(tx_id, prev, entries, ts=ts, version=version, tx_metadata=md, bl_tx_id=bl_tx, bl_root=bl_root,
              truncation=trunc)


def records(raw: bytes) -> list[Tx]:
    """The transactions of a segment's decompressed payload."""
    out, i = [], 0
    while i < len(raw):
        _, length = struct.unpack_from(">QI", raw, i)
        out.append(parse(raw[i + 12:i + 12 + length]))
        i += 12 + length
    return out


def rewrite(blobs: list[bytes], change, database: str | None = None, keep_signed: bool = False
            ) -> list[tuple[str, bytes]]:
    """The consistent forgery of a whole journal: the transactions of the
    segments `blobs` (in order, from transaction 1), `change(txs)` applied,
    then every Eh, Alh, BlRoot, name, header and checksum recomputed, so
    that the result is a valid journal by itself. (name, bytes) per segment,
    the same ranges as before. The primary's signatures cannot be
    recomputed: they are dropped, or kept as they were (`keep_signed`)."""
    ranges, txs = [], []
    for blob in blobs:
        header, raw = open_segment(blob)
        got = records(raw)
        ranges.append((len(txs), len(txs) + len(got), header))
        txs += got
    change(txs)
    History(txs).rebuild()
    out = []
    for start, end, header in ranges:
        signed = header.get("signed") if keep_signed else None
        out.append(segment(database or header["database"], txs[start:end], fmt=header["format"], signed=signed))
    return out
