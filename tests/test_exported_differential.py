"""Our reader of exported transactions against immudb's own: every input,
generated or mutated by Hypothesis, goes to reconciler/exported.py
and to ImmuStore.ReplicateTx of the immudb module the test servers are
built from (tests/go/replicatetx, a fresh store each time one is taken).
Both must give the same verdict, and the same Alh for what both take: then
no byte string that immudb would refuse, or panic on, is ever handed to it
by a restore.

The store is fresh, so the transaction that can be taken is number 1
(previous Alh of the empty history, BlTxID 0); the chain across
transactions (ids, prevAlh, BlRoot) is checked by `Successor`, tested
against real histories in test_journal_format.py and test_journal.py.
Limits are small here (key 16, value 64, 4 entries) so that they are met
often; they are the same on both sides."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.exported import GENESIS_ALH, JournalError, Successor, TxLimits, _kv_metadata, parse_tx
from tests.support.exported import Entry, Tx, htree_root, sha
from tests.support.replicatetx import ImmudbVerdicts, build

pytestmark = [pytest.mark.servers, pytest.mark.faults]

LIMITS = TxLimits(max_key_len=16, max_value_len=64, max_tx_entries=4)


@pytest.fixture(scope="module")
def immudb():
    with ImmudbVerdicts(build(), LIMITS.max_key_len, LIMITS.max_value_len, LIMITS.max_tx_entries) as verdicts:
        yield verdicts


def ours(data: bytes) -> tuple[str, str]:
    """Our verdict on `data` as the next transaction of an empty database."""
    try:
        tx = parse_tx(data, LIMITS)
        Successor().take(tx)
    except JournalError as exc:
        return "refused", str(exc)
    return "ok", tx.header.alh.hex()


def agree(immudb, data: bytes) -> None:
    theirs = immudb.verdict(data)
    mine = ours(data)
    if theirs[0] == "ok" or mine[0] == "ok":
        assert mine == theirs, f"immudb: {theirs}, ours: {mine}, input {data.hex()}"


# ---------------------------------------------------------------- generated transactions

def canonical_eh(tx: Tx) -> bytes:
    """Eh as immudb computes it: entry metadata re-serialised in its canonical
    order (where it parses at all; otherwise as written)."""
    digests = []
    for e in tx.entries:
        try:
            md = _kv_metadata(e.metadata, tx.id) if e.metadata else b""
        except JournalError:
            md = e.metadata
        vh = e.value[:32].ljust(32, b"\x00") if tx.truncated_values else sha(e.value)
        if tx.version == 0:
            digests.append(sha(e.key, vh))
        else:
            digests.append(sha(struct.pack(">H", len(md)), md, struct.pack(">H", len(e.key)), e.key, vh))
    return htree_root(digests)


# each part comes valid (in any form immudb takes: metadata out of order or repeated, header bytes after
# BlRoot, a truncation field longer than one byte, truncated values) or, rarely, with one fault of its kind
good_key = st.binary(min_size=1, max_size=6)
bad_key = st.one_of(st.just(b""), st.binary(min_size=17, max_size=20))
good_value = st.one_of(st.binary(max_size=12), st.binary(min_size=60, max_size=64))
bad_value = st.binary(min_size=65, max_size=70)
good_attr = st.one_of(st.just(b"\x00"), st.just(b"\x02"), st.binary(min_size=8, max_size=8).map(lambda b: b"\x01" + b))
bad_attr = st.one_of(st.binary(max_size=7).map(lambda b: b"\x01" + b), st.integers(3, 255).map(lambda c: bytes([c])))
good_kv_md = st.one_of(st.just(b""), st.lists(good_attr, min_size=1, max_size=3).map(b"".join))
bad_kv_md = st.one_of(st.lists(good_attr, min_size=4, max_size=5).map(b"".join),   # longer than 11 bytes
                      st.tuples(good_kv_md, bad_attr).map(b"".join), st.binary(min_size=1, max_size=14))
good_tx_attr = st.one_of(st.integers(0, 2 ** 64 - 1).map(lambda n: b"\x00" + struct.pack(">Q", n)),
                         st.binary(max_size=256).map(lambda b: b"\x01" + struct.pack(">H", len(b)) + b))
bad_tx_attr = st.one_of(st.binary(max_size=7).map(lambda b: b"\x00" + b),
                        st.binary(min_size=257, max_size=262).map(lambda b: b"\x01" + struct.pack(">H", len(b)) + b),
                        st.tuples(st.integers(0, 300), st.binary(max_size=8)).map(
                            lambda p: b"\x01" + struct.pack(">H", p[0]) + p[1]),
                        st.integers(2, 255).map(lambda c: bytes([c])))
good_tx_md = st.one_of(st.just(b""), st.lists(good_tx_attr, min_size=1, max_size=2).map(b"".join))
FAULTS = ["none"] * 12 + ["key", "value", "kv_metadata", "tx_metadata", "duplicate_key", "no_entries", "entries",
                          "count", "id", "prev_alh", "version", "bl_tx_id", "bl_root", "eh", "truncation",
                          "header_cut"]


@st.composite
def transactions(draw) -> bytes:
    fault = draw(st.sampled_from(FAULTS))
    n = 0 if fault == "no_entries" else draw(st.integers(5, 6) if fault == "entries" else st.integers(1, 4))
    entries = []
    for i in range(n):
        key = draw(good_key).ljust(1, b"k") + bytes([i])  # distinct
        entries.append(Entry(key[:16], draw(good_value), draw(good_kv_md)))
    version = draw(st.sampled_from([1, 1, 0]))
    if version == 0:
        for e in entries:
            e.metadata = b""
    trunc = draw(st.sampled_from([b"\x00", b"\x00", None, b"\x01", b"\x00junk", b"\x01\x01"]))
    tx = Tx(1, GENESIS_ALH, entries, ts=draw(st.integers(0, 2 ** 64 - 1)), version=version,
            tx_metadata=draw(good_tx_md) if version == 1 else b"", truncation=trunc,
            truncated_values=trunc is not None and trunc[:1] == b"\x01",
            header_tail=draw(st.sampled_from([b"", b"", b"", b"\x00", b"tail"])))
    if tx.truncated_values:
        for e in tx.entries:
            e.value = draw(st.sampled_from([sha(e.value), sha(e.value)[:20], sha(e.value) + b"xx"]))
    if fault == "key" and entries:
        entries[0].key = draw(bad_key)
    elif fault == "value" and entries and not tx.truncated_values:
        entries[0].value = draw(bad_value)
    elif fault == "kv_metadata" and entries:
        entries[0].metadata = draw(bad_kv_md)
    elif fault == "tx_metadata":
        tx.version, tx.tx_metadata = 1, draw(st.tuples(good_tx_md, bad_tx_attr).map(b"".join))
    elif fault == "duplicate_key" and entries:
        entries.append(Entry(entries[0].key, draw(good_value)))
    elif fault == "count":
        tx.nentries = draw(st.sampled_from([len(entries) + 1, max(0, len(entries) - 1),
                                            0xFFFF if tx.version == 0 else 2 ** 32 - 1]))
    elif fault == "id":
        tx.id = draw(st.sampled_from([0, 2, 1001, 2 ** 64 - 1]))
    elif fault == "prev_alh":
        tx.prev_alh = draw(st.binary(min_size=32, max_size=32))
    elif fault == "version":
        tx.version = draw(st.integers(2, 0xFFFF))
    elif fault == "bl_tx_id":
        tx.bl_tx_id = draw(st.integers(1, 2 ** 64 - 1))
    elif fault == "bl_root":
        tx.bl_root = draw(st.binary(min_size=32, max_size=32).filter(any))
    elif fault == "truncation":
        tx.truncation = draw(st.sampled_from([b"", b"\x02", b"\xff\x01"]))
    tx.eh = canonical_eh(tx) if fault != "eh" else draw(st.binary(min_size=32, max_size=32))
    data = tx.bytes()
    if fault == "truncation" and draw(st.booleans()):
        data += draw(st.binary(min_size=1, max_size=3))  # or bytes after the last field
    if fault == "header_cut":  # the header cut short, its length field saying so
        hdr_len, = struct.unpack_from(">I", data)
        cut = min(draw(st.integers(1, 80)), hdr_len)
        data = struct.pack(">I", hdr_len - cut) + data[4:4 + hdr_len - cut] + data[4 + hdr_len:]
    return data


@st.composite
def mutated(draw) -> bytes:
    """A generated transaction with one byte-level change: a flip, a cut, an
    insertion, or a length field rewritten."""
    data = bytearray(draw(transactions()))
    how = draw(st.sampled_from(["flip", "cut", "insert", "u16", "u32"]))
    at = draw(st.integers(0, max(0, len(data) - 1)))
    if how == "flip" and data:
        data[at] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        del data[at:]
    elif how == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=4))
    elif how == "u16" and len(data) >= at + 2:
        data[at:at + 2] = struct.pack(">H", draw(st.sampled_from([0, 1, 2, 0xFFFF])))
    elif how == "u32" and len(data) >= at + 4:
        data[at:at + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 8, 0xFFFFFFFF])))
    return bytes(data)


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=transactions())
def test_generated_transactions_get_immudbs_verdict(immudb, data):
    agree(immudb, data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated())
def test_mutated_transactions_get_immudbs_verdict(immudb, data):
    agree(immudb, data)


# ---------------------------------------------------------------- the inputs immudb v1.11.1 panics on

def _valid(**fields) -> Tx:
    tx = Tx(1, GENESIS_ALH, [Entry(b"k", b"v")], **fields)
    tx.eh = canonical_eh(tx)
    return tx


def _header_cut_before_bltxid() -> bytes:
    # long enough for immudb's minimum (124 bytes, a version 0 header), too short for this one's BlTxID
    data = _valid(tx_metadata=b"\x01" + struct.pack(">H", 30) + bytes(30)).bytes()
    hdr_len, = struct.unpack_from(">I", data)
    cut = hdr_len - 125
    return struct.pack(">I", hdr_len - cut) + data[4:4 + hdr_len - cut] + data[4 + hdr_len:]


def _value_length_cut_after_metadata() -> bytes:
    # the entry's metadata takes the bytes where its value length should be; immudb reads past the end
    body = struct.pack(">H", 1) + b"k" + struct.pack(">H", 6) + b"\x00\x02\x00\x02\x00\x02"
    tx = _valid()
    header = tx.header()
    return struct.pack(">I", len(header)) + header + body


PANICS = {
    "an empty truncation field": _valid(truncation=b"").bytes(),
    "a truncation field of one byte": _valid(truncation=None).bytes() + b"\x00",
    "transaction metadata whose extra claims more than it has": _valid(tx_metadata=b"\x01\x00\x09abc").bytes(),
    "transaction metadata whose extra is over 256 bytes": _valid(
        tx_metadata=b"\x01" + struct.pack(">H", 260) + bytes(260)).bytes(),
    "a header cut short before BlTxID": _header_cut_before_bltxid(),
    "an entry whose value length is cut after its metadata": _value_length_cut_after_metadata(),
}


@pytest.mark.parametrize("case", sorted(PANICS))
def test_what_immudb_panics_on_is_refused_before_it(immudb, case):
    data = PANICS[case]
    kind, why = immudb.verdict(data)
    assert kind == "panic", (kind, why)  # what a replica server would die of
    assert ours(data)[0] == "refused"


def test_a_valid_transaction_is_taken_by_both_with_the_same_alh(immudb):
    data = _valid().bytes()
    assert immudb.verdict(data) == ours(data) == ("ok", Tx(1, GENESIS_ALH, [Entry(b"k", b"v")]).alh().hex())
