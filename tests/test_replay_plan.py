"""Choosing and proving what a restore replays (journal/replay.plan), on
journals written byte for byte into a real file target here: the point
from checked times only, the chain that holds it, and the local anchor's
verdicts. With servers (live anchors, replay itself) in test_journal.py and
test_tampering.py."""
from __future__ import annotations

import pytest

from reconciler.config.model import TargetConfig
from reconciler.journal.replay import Point, ReplayError, plan
from reconciler.journal.store import JournalStore
from reconciler.signed import TrustError
from reconciler.trust.anchors import Anchors
from tests.support.exported import History, open_segment, reseal, segment

T0 = 1_795_000_000


@pytest.fixture
def journal(tmp_path):
    """make(history, sizes): the history's transactions as segments of the
    given sizes at a file target; the JournalStore."""
    stores = []

    def make(history: History, sizes: list[int]) -> JournalStore:
        cfg = TargetConfig("t", "file", str(tmp_path / "t" / "immudb-{timestamp}.tar.gz"))
        folder = tmp_path / "t" / "journal" / "db"
        folder.mkdir(parents=True, exist_ok=True)
        at = 0
        for n in sizes:
            name, blob = segment("db", history.txs[at:at + n])
            (folder / name).write_bytes(blob)
            at += n
        store = JournalStore(cfg, "db")
        stores.append(store)
        return store
    yield make
    for store in stores:
        store.close()


def trusting(**fields) -> Anchors:
    return Anchors(unanchored=True, **fields)


def test_a_time_is_the_last_transaction_committed_at_or_before_it(journal):
    h = History.of(30, start_ts=T0)          # transaction i committed at T0 + i
    store = journal(h, [10, 10, 10])
    planned = plan(store, Point(time=T0 + 17.5), anchors=trusting())
    assert (planned.last, planned.alh, planned.ts) == (17, h.alh(17), T0 + 17)
    assert [s.first_tx for s in planned.segments] == [1, 11]
    assert plan(store, Point(time=T0 + 30), anchors=trusting()).last == 30
    with pytest.raises(ReplayError, match="starts at"):
        plan(store, Point(time=T0), anchors=trusting())


def test_a_later_segment_whose_header_lies_about_its_time_does_not_move_the_point(journal, tmp_path):
    """The header of segment 21-30 claims it began before T0 + 15 (resealed):
    the headers' times only guide where to start reading."""
    h = History.of(30, start_ts=T0)
    store = journal(h, [10, 10, 10])
    path = next(p for p in (tmp_path / "t" / "journal" / "db").iterdir() if p.name.startswith("0" * 18 + "21"))
    blob = path.read_bytes()
    header, raw = open_segment(blob)
    path.write_bytes(reseal(blob, raw, first_ts=T0 + 1))
    assert plan(store, Point(time=T0 + 15.0), anchors=trusting()).last == 15


def test_a_point_before_a_hole_is_found_in_the_chain_that_holds_it(journal, tmp_path):
    h = History.of(30)
    store = journal(h, [10, 10, 10])
    (next(p for p in (tmp_path / "t" / "journal" / "db").iterdir() if p.name.startswith("0" * 18 + "11"))).unlink()
    planned = plan(store, Point(tx=7), anchors=trusting())
    assert planned.last == 7 and planned.alh == h.alh(7)
    with pytest.raises(ReplayError, match="misses transactions 11-20"):
        plan(store, Point(tx=25), anchors=trusting())


def test_the_local_checkpoint_vouches_links_or_refuses(journal):
    h = History.of(20)
    store = journal(h, [10, 10])
    here = "state /x"
    ok = plan(store, Point(tx=5), anchors=Anchors(checkpoint=(20, h.alh(20), here)))
    assert [v.anchor for v in ok.anchors if v.vouched] == ["local"]
    with pytest.raises(TrustError, match="this replicator wrote"):
        plan(store, Point(tx=5), anchors=Anchors(checkpoint=(20, bytes(32), here)))
    # segments gone from the end: the end is refused, a named point is not vouched for by it
    with pytest.raises(TrustError, match="its newest segments are gone"):
        plan(store, Point(), anchors=Anchors(checkpoint=(25, bytes(32), here)))
    with pytest.raises(TrustError, match="nothing outside the target vouches.*its newest segments are missing"):
        plan(store, Point(tx=5), anchors=Anchors(checkpoint=(25, bytes(32), here)))
    assert plan(store, Point(), anchors=Anchors(checkpoint=(25, bytes(32), here), allow_rollback=True,
                                                unanchored=True)).last == 20


def test_a_transaction_forged_after_the_point_but_before_the_anchor_is_caught(journal, tmp_path):
    """Reading goes on past the point up to the anchor: a change there breaks
    the chain to the checkpoint."""
    h = History.of(20)
    store = journal(h, [10, 10])
    forged = h.copy()
    forged.txs[14].entries[0].value = b"forged"
    forged.rebuild()
    folder = tmp_path / "t" / "journal" / "db"
    for p in folder.iterdir():
        if p.name.startswith("0" * 18 + "11"):
            p.unlink()
    name, blob = segment("db", forged.txs[10:])
    (folder / name).write_bytes(blob)
    with pytest.raises(TrustError, match="transaction 20 has Alh .*this replicator wrote"):
        plan(store, Point(tx=5), anchors=Anchors(checkpoint=(20, h.alh(20), "state")))


def test_a_time_before_a_snapshot_base_the_journal_no_longer_dates_is_refused(journal):
    """Retention removed 1-10; an archive holds the database at 10. A time
    after 10's successors comes from the base and the journal; a time
    before them cannot be placed: the base's own time is not in the journal."""
    from reconciler.journal.bases import Base
    h = History.of(30, start_ts=T0)
    sparse = History(h.txs[10:])
    store = journal(sparse, [10, 10])
    base = Base("db", 10, h.alh(10), "immudb-x.tar.gz", "b1", "r")
    planned = plan(store, Point(time=T0 + 15), bases=[base], snapshots=True, anchors=trusting())
    assert (planned.base, planned.last, planned.alh) == (base, 15, h.alh(15))
    with pytest.raises(ReplayError, match="at or before snapshot base immudb-x.tar.gz"):
        plan(store, Point(time=T0 + 5), bases=[base], snapshots=True, anchors=trusting())
