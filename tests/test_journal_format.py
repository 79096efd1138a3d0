"""The journal's bytes (reconciler/journal/format.py) and how segments chain
(store.chain_to), on transactions built here byte for byte as immudb
exports them. The same checks on transactions a real immudb exported are in
tests/test_journal.py."""
from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import replace

import pytest

from reconciler.exported import Successor
from reconciler.journal import format as jf
from reconciler.journal.replay import ReplayError, parse_time
from reconciler.journal.store import chain_to, newest
from tests.support.exported import GENESIS, Entry, History, Tx, open_segment, seal, segment


def exported(tx_id: int, prev_alh: bytes, entries: list[tuple[bytes, bytes]], ts: int = 1_795_000_000,
             version: int = 1) -> bytes:
    """A transaction as immudb's ExportTx writes it (header version 0 or 1)."""
    return Tx(tx_id, prev_alh, [Entry(k, v) for k, v in entries], ts=ts, version=version,
              bl_tx_id=max(0, tx_id - 1)).bytes()


def history(n: int, version: int = 1, start_ts: int = 1_795_000_000) -> list[jf.ExportedTx]:
    return [jf.parse_tx(t.bytes()) for t in History.of(n, start_ts=start_ts, version=version).txs]


def test_alh_and_entries_hash_follow_immudb():
    """Known values: the hash tree of one leaf is sha256(0x00 + digest); an
    odd node is carried up; Alh = sha256(id + prevAlh + sha256(inner))."""
    d = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    leaf = [hashlib.sha256(b"\x00" + x).digest() for x in d]
    assert jf.entries_hash(d[:1]) == leaf[0]
    assert jf.entries_hash(d) == hashlib.sha256(b"\x01" + hashlib.sha256(b"\x01" + leaf[0] + leaf[1]).digest()
                                                + leaf[2]).digest()
    tx = history(1)[0]
    raw_header = tx.data[4:4 + struct.unpack(">I", tx.data[:4])[0]]
    assert tx.header.alh == hashlib.sha256(raw_header[:40] + hashlib.sha256(raw_header[40:]).digest()).digest()
    assert tx.header.prev_alh == hashlib.sha256(b"").digest()


def test_blroot_is_the_root_of_every_earlier_alh():
    """Successor keeps immudb's accumulated tree: a history whose BlRoots
    are right passes, one BlRoot changed (and its Alh chain recomputed) is
    refused naming the transaction."""
    h = History.of(37)
    successor = Successor()
    for t in h.txs:
        successor.take(jf.parse_tx(t.bytes()))
    forged = h.copy()
    forged.txs[20].bl_root = bytes(32)
    prev = forged.txs[20].alh()
    for t in forged.txs[21:]:
        t.prev_alh = prev
        prev = t.alh()
    successor = Successor()
    with pytest.raises(jf.JournalError, match="transaction 21: its BlRoot"):
        for t in forged.txs:
            successor.take(jf.parse_tx(t.bytes()))


@pytest.mark.parametrize("version", [0, 1])
def test_segment_round_trip(version):
    txs = history(5, version)
    info, blob = jf.encode_segment("db1", txs, jf.GENESIS_ALH)
    assert (info.first_tx, info.last_tx, info.transactions, info.format) == (1, 5, 5, 2)
    assert info.last_alh == txs[-1].header.alh and info.first_ts == txs[0].header.ts
    assert jf.parse_name(info.name) == jf.SegmentName(1, 5, jf.GENESIS_ALH.hex()[:8], info.last_alh.hex()[:8],
                                                      info.name)
    decoded = jf.decode_segment(io.BytesIO(blob), jf.parse_name(info.name), database="db1")
    assert decoded.info == info and decoded.digest == hashlib.sha256(blob).digest()
    assert [t.data for t in decoded.transactions] == [t.data for t in txs]


def test_format_1_segments_are_still_read():
    h = History.of(3)
    name, blob = segment("db1", h.txs, fmt=1)
    info, txs = jf.decode_segment(io.BytesIO(blob), jf.parse_name(name))
    assert info.format == 1 and [t.id for t in txs] == [1, 2, 3]


def test_a_changed_value_is_refused_naming_the_transaction():
    """The attacker rewrites a value and the segment's checksums too: the
    entries no longer hash to the header's Eh."""
    h = History.of(4)
    txs = [replace(t) for t in h.txs]
    forged = replace(txs[2], entries=[Entry(b"k3", b"VALUE 3" * 3)], eh=txs[2].computed_eh())
    name, blob = segment("db1", txs[:2] + [forged] + txs[3:])
    _, got = jf.decode_segment(io.BytesIO(blob))
    with pytest.raises(jf.JournalError, match="transaction 3: .*entries do not match"):
        list(got)


def test_a_changed_byte_without_a_new_checksum_is_refused_before_any_transaction():
    info, blob = jf.encode_segment("db1", history(3), jf.GENESIS_ALH)
    damaged = blob[:-40] + bytes([blob[-40] ^ 1]) + blob[-39:]
    with pytest.raises(jf.JournalError, match="checksum does not match"):
        jf.decode_segment(io.BytesIO(damaged))


@pytest.mark.parametrize("field,value", [("database", "other"), ("first_ts", 1_700_000_000),
                                         ("last_ts", 1_900_000_000)])
def test_a_header_field_changed_alone_breaks_the_trailing_checksum(field, value):
    info, blob = jf.encode_segment("db1", history(3), jf.GENESIS_ALH)
    header, _ = open_segment(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    changed = json.dumps(dict(header, **{field: value}), sort_keys=True, separators=(",", ":")).encode()
    forged = blob.replace(struct.pack(">I", len(text)) + text, struct.pack(">I", len(changed)) + changed)
    with pytest.raises(jf.JournalError, match="checksum does not match"):
        list(jf.decode_segment(io.BytesIO(forged)).transactions)


@pytest.mark.parametrize("field,value,complaint", [
    ("first_ts", 1_795_000_000 - 600, "was committed at"),     # an earlier time: restore an earlier point
    ("last_ts", 1_795_000_000 + 3600, "end at 3"),
    ("database", "other", "names database 'other'"),
])
def test_header_claims_are_checked_against_the_transactions_even_when_resealed(field, value, complaint):
    """A forger who recomputes the trailing checksum still cannot make a
    header say another time or database than its transactions."""
    name, blob = segment("db1", History.of(3).txs, header_changes={field: value})
    with pytest.raises(jf.JournalError, match=complaint):
        list(jf.decode_segment(io.BytesIO(blob), jf.parse_name(name), database="db1").transactions)


def test_a_segment_with_a_truncated_transaction_is_refused_naming_it():
    h = History.of(3)
    t = h.txs[1]
    t.truncated_values, t.truncation = True, b"\x01"
    t.entries = [Entry(e.key, hashlib.sha256(e.value).digest()) for e in t.entries]
    assert t.computed_eh() == History.of(3).txs[1].computed_eh()  # Eh (and Alh) do not change
    name, blob = segment("db1", h.txs)
    with pytest.raises(jf.JournalError, match="transaction 2: its values were truncated"):
        list(jf.decode_segment(io.BytesIO(blob)).transactions)


def test_a_compression_bomb_is_refused_before_anything_is_allocated():
    """33 KB whose zstd frame declares 1 GiB: the header must say the same,
    and even then the payload is read as a stream, record by record."""
    import tracemalloc

    import zstandard
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(bytes(1 << 30))
    assert len(bomb) < 64 * 1024
    h = History.of(1)
    header = {"format": 2, "database": "db1", "first_tx": 1, "last_tx": 1, "prev_alh": GENESIS.hex(),
              "last_alh": h.txs[0].alh().hex(), "first_ts": h.txs[0].ts, "last_ts": h.txs[0].ts,
              "transactions": 1, "payload_bytes": 1000, "compression": "zstd",
              "sha256": hashlib.sha256(bomb).hexdigest(), "compressed_bytes": len(bomb)}
    tracemalloc.start()
    try:
        _, blob = seal(header, bomb)
        with pytest.raises(jf.JournalError, match="declares 1073741824 bytes, its header 1000"):
            jf.decode_segment(io.BytesIO(blob))
        _, blob = seal(dict(header, payload_bytes=1 << 30), bomb)
        with pytest.raises(jf.JournalError, match="transaction 0 where 1 was expected"):
            list(jf.decode_segment(io.BytesIO(blob)).transactions)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes allocated"


def test_a_record_claiming_more_than_its_entries_allow_is_refused_unread():
    """A record's length is bounded by its (parsed) header's entry count and
    the database's limits before its bytes are read."""
    t = History.of(1).txs[0]
    data = t.bytes()
    raw = struct.pack(">QI", 1, 900 << 20) + data
    import zstandard
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(raw + bytes((900 << 20) - len(data)))
    header = {"format": 2, "database": "db1", "first_tx": 1, "last_tx": 1, "prev_alh": GENESIS.hex(),
              "last_alh": t.alh().hex(), "first_ts": t.ts, "last_ts": t.ts, "transactions": 1,
              "payload_bytes": len(raw) + (900 << 20) - len(data), "compression": "zstd",
              "sha256": hashlib.sha256(payload).hexdigest(), "compressed_bytes": len(payload)}
    _, blob = seal(header, payload)
    with pytest.raises(jf.JournalError, match="a record of 943718400 bytes for 1 entries"):
        list(jf.decode_segment(io.BytesIO(blob)).transactions)


def test_a_transaction_out_of_its_chain_is_refused():
    a, b = history(3), history(3, start_ts=1_700_000_000)  # two histories
    with pytest.raises(jf.JournalError, match="transaction 2: the hash chain does not match"):
        jf.check_chain([a[0], b[1]], jf.GENESIS_ALH)
    with pytest.raises(jf.JournalError, match="transaction 3 where 2 was expected"):
        jf.check_chain([a[0], a[2]], jf.GENESIS_ALH)
    with pytest.raises(jf.JournalError):
        jf.encode_segment("db1", a[1:], jf.GENESIS_ALH)  # does not follow the Alh given


def test_a_segment_renamed_to_another_range_is_refused():
    info, blob = jf.encode_segment("db1", history(3), jf.GENESIS_ALH)
    other = jf.parse_name(jf.segment_name(1, 3, jf.GENESIS_ALH, bytes(32)))
    with pytest.raises(jf.JournalError, match="its header says"):
        jf.decode_segment(io.BytesIO(blob), other)


@pytest.mark.parametrize("blob", [b"", b"IMMUJRNL", b"NOTJOURNAL" + bytes(20),
                                  b"IMMUJRNL\x01\x00\x00\x00\x05[1,2]", b"IMMUJRNL\x09\x00\x00\x00\x02{}",
                                  b"IMMUJRNL\x01\xff\xff\xff\xff", b"IMMUJRNL\x02\x00\x00\x00\x02{}"])
def test_garbage_is_a_journal_error(blob):
    with pytest.raises(jf.JournalError):
        jf.decode_segment(io.BytesIO(blob))


@pytest.mark.parametrize("field,value", [("first_tx", True), ("first_tx", 1.0), ("first_tx", "1"),
                                         ("payload_bytes", -1), ("sha256", "zz"), ("signed", {"x": 1})])
def test_header_fields_of_the_wrong_type_are_refused(field, value):
    name, blob = segment("db1", History.of(2).txs, header_changes={field: value})
    with pytest.raises(jf.JournalError, match="segment header is not"):
        jf.decode_segment(io.BytesIO(blob))


def test_truncated_transactions_are_recognised():
    data = bytearray(exported(1, jf.GENESIS_ALH, [(b"k", b"v")]))
    # the values replaced by their hashes, the flag set: as immudb exports truncated history
    tx = jf.parse_tx(bytes(data))
    assert not tx.truncated
    value_hash = hashlib.sha256(b"v").digest()
    truncated = bytes(data).replace(struct.pack(">I", 1) + b"v", struct.pack(">I", 32) + value_hash)[:-1] + b"\x01"
    assert jf.parse_tx(truncated).truncated


def names(*ranges, history_id="a"):
    """Segment names for (first, last) ranges of one history, chained."""
    out, prev = [], jf.GENESIS_ALH
    for first, last in ranges:
        alh = hashlib.sha256(f"{history_id}{last}".encode()).digest()
        if out and out[-1].last_tx != first - 1:
            prev = hashlib.sha256(f"{history_id}{first - 1}".encode()).digest()
        out.append(jf.parse_name(jf.segment_name(first, last, prev, alh)))
        prev = alh
    return out


def test_chains_and_holes():
    whole = names((1, 10), (11, 20), (21, 30))
    chain = chain_to(whole, newest(whole))
    assert (chain.first_tx, chain.last_tx, chain.hole) == (1, 30, None)

    lost = [whole[0], whole[2]]
    chain = chain_to(lost, newest(lost))
    assert chain.hole == (11, 20) and chain.before_hole == whole[0] and chain.segments == (whole[2],)

    other = names((1, 25), history_id="b")  # another history of the same name, ending earlier
    chain = chain_to(whole + other, newest(whole + other))
    assert (chain.first_tx, chain.last_tx, chain.hole) == (1, 30, None)


def test_parse_time():
    assert parse_time("2026-11-27T14:05:00Z") == 1795788300.0
    assert parse_time("2026-11-27T15:05:00+01:00") == 1795788300.0
    assert parse_time("1795788300") == 1795788300.0
    with pytest.raises(ReplayError, match="time zone"):
        parse_time("2026-11-27T14:05:00")
    with pytest.raises(ReplayError, match="ISO 8601"):
        parse_time("yesterday")


def test_the_spool_is_bounded_and_private(tmp_path):
    from reconciler.errors import ReplicatorError
    from reconciler.journal.spool import Spool, SpoolFull
    spool = Spool(tmp_path / "spool" / "db1", max_bytes=100)
    spool.put(jf.segment_name(1, 2, jf.GENESIS_ALH, bytes(32)), b"x" * 150)  # an empty spool takes any one segment
    with pytest.raises(SpoolFull):
        spool.put(jf.segment_name(3, 3, bytes(32), bytes(32)), b"y")
    [waiting] = spool.names()
    assert (waiting.first_tx, spool.bytes) == (1, 150)
    assert oct((tmp_path / "spool" / "db1").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "spool" / "db1" / waiting.name).stat().st_mode & 0o777) == "0o600"
    spool.remove(waiting.name)
    spool.put(jf.segment_name(3, 3, bytes(32), bytes(32)), b"y")
    assert spool.bytes == 1

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ReplicatorError, match="not a folder of this user"):
        Spool(tmp_path / "linked" / "db1", max_bytes=100)


def test_a_header_claiming_a_huge_payload_is_refused_before_allocating_it():
    name, blob = segment("db1", History.of(2).txs, header_changes={"payload_bytes": 1 << 40})
    with pytest.raises(jf.JournalError, match="claims"):
        jf.decode_segment(io.BytesIO(blob))
