"""The journal's bytes (reconciler/journal/format.py) and how segments chain
(store.chain_to), on transactions built here byte for byte as immudb
exports them. The same checks on transactions a real immudb exported are in
tests/test_journal.py."""
from __future__ import annotations

import hashlib
import io
import struct

import pytest

from reconciler.journal import format as jf
from reconciler.journal.replay import ReplayError, parse_time
from reconciler.journal.store import chain_to, newest


def exported(tx_id: int, prev_alh: bytes, entries: list[tuple[bytes, bytes]], ts: int = 1_795_000_000,
             version: int = 1) -> bytes:
    """A transaction as immudb's ExportTx writes it (header version 0 or 1)."""
    digests = []
    body = b""
    for key, value in entries:
        value_hash = hashlib.sha256(value).digest()
        if version == 0:
            digests.append(hashlib.sha256(key + value_hash).digest())
        else:
            digests.append(hashlib.sha256(struct.pack(">H", 0) + struct.pack(">H", len(key)) + key
                                          + value_hash).digest())
        body += struct.pack(">H", len(key)) + key + struct.pack(">H", 0) + struct.pack(">I", len(value)) + value
    counts = struct.pack(">H", len(entries)) if version == 0 else struct.pack(">HI", 0, len(entries))
    header = (struct.pack(">Q", tx_id) + prev_alh + struct.pack(">QH", ts, version) + counts
              + jf.entries_hash(digests) + struct.pack(">Q", 0) + bytes(32))
    return struct.pack(">I", len(header)) + header + body + struct.pack(">H", 1) + b"\x00"


def history(n: int, version: int = 1, start_ts: int = 1_795_000_000) -> list[jf.ExportedTx]:
    txs, prev = [], jf.GENESIS_ALH
    for i in range(1, n + 1):
        tx = jf.parse_tx(exported(i, prev, [(f"k{i}".encode(), f"value {i}".encode() * i)], ts=start_ts + i,
                                  version=version))
        txs.append(tx)
        prev = tx.header.alh
    return txs


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


@pytest.mark.parametrize("version", [0, 1])
def test_segment_round_trip(version):
    txs = history(5, version)
    info, blob = jf.encode_segment("db1", txs, jf.GENESIS_ALH)
    assert (info.first_tx, info.last_tx, info.transactions) == (1, 5, 5)
    assert info.last_alh == txs[-1].header.alh and info.first_ts == txs[0].header.ts
    assert jf.parse_name(info.name) == jf.SegmentName(1, 5, jf.GENESIS_ALH.hex()[:8], info.last_alh.hex()[:8],
                                                      info.name)
    got_info, got = jf.decode_segment(io.BytesIO(blob), jf.parse_name(info.name))
    assert got_info == info
    assert [t.data for t in got] == [t.data for t in txs]


def test_a_changed_value_is_refused_naming_the_transaction():
    """The attacker rewrites a value and the segment's checksum too: the
    entries no longer hash to the header's Eh."""
    txs = history(4)
    info, blob = jf.encode_segment("db1", txs, jf.GENESIS_ALH)
    import zstandard
    head_len = len(jf.MAGIC) + 5 + struct.unpack(">I", blob[len(jf.MAGIC) + 1:len(jf.MAGIC) + 5])[0]
    raw = zstandard.ZstdDecompressor().decompress(blob[head_len:], max_output_size=info.payload_bytes)
    raw = raw.replace(b"value 3", b"VALUE 3", 1)
    payload = zstandard.ZstdCompressor().compress(raw)
    header = dict(info.as_dict(), sha256=hashlib.sha256(payload).hexdigest())
    import json
    h = json.dumps(header).encode()
    forged = jf.MAGIC + struct.pack(">BI", 1, len(h)) + h + payload
    _, got = jf.decode_segment(io.BytesIO(forged))
    with pytest.raises(jf.JournalError, match="transaction 3: .*entries do not match"):
        list(got)


def test_a_changed_byte_without_a_new_checksum_is_refused_before_any_transaction():
    info, blob = jf.encode_segment("db1", history(3), jf.GENESIS_ALH)
    damaged = blob[:-3] + bytes([blob[-3] ^ 1]) + blob[-2:]
    with pytest.raises(jf.JournalError, match="checksum does not match"):
        jf.decode_segment(io.BytesIO(damaged))


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
                                  b"IMMUJRNL\x01\xff\xff\xff\xff"])
def test_garbage_is_a_journal_error(blob):
    with pytest.raises(jf.JournalError):
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
    from reconciler.journal.shipper import Spool, SpoolFull
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
    info, blob = jf.encode_segment("db1", history(2), jf.GENESIS_ALH)
    import json
    header = json.dumps(dict(info.as_dict(), payload_bytes=1 << 40)).encode()
    head_len = len(jf.MAGIC) + 5 + struct.unpack(">I", blob[len(jf.MAGIC) + 1:len(jf.MAGIC) + 5])[0]
    forged = jf.MAGIC + struct.pack(">BI", 1, len(header)) + header + blob[head_len:]
    with pytest.raises(jf.JournalError, match="claims"):
        jf.decode_segment(io.BytesIO(forged))
