"""Where a journal goes on when it starts (reconciler/journal/resume.py):
pure, with a replica made of a table of Alhs and segments made of names.
The real-server journal tests (test_journal.py) drive the same function
through a running journal; these pin each rule of it down."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from reconciler.journal.format import GENESIS_ALH, SegmentName, parse_name, segment_name
from reconciler.journal.resume import confirmed_tip, resume_point


def history(tag: str, n: int = 100) -> dict[int, bytes]:
    """Alhs of transactions 1..n of one database's history (`tag` tells histories apart)."""
    return {i: hashlib.sha256(f"{tag}:{i}".encode()).digest() for i in range(1, n + 1)}


def seg(h: dict[int, bytes], first: int, last: int) -> SegmentName:
    name = parse_name(segment_name(first, last, h.get(first - 1, GENESIS_ALH), h[last]))
    assert name is not None
    return name


@dataclass(frozen=True)
class Base:
    """A base as journal/bases.py's: its whole Alh, or (read from an
    encrypted record's name) its first 4 bytes."""
    tx_id: int
    tx_hash: bytes
    archive: str = "a.tar.gz"

    def confirmed_by(self, alh: bytes) -> bool:
        return len(alh) == 32 and alh.startswith(self.tx_hash)


class Replica:
    """What the replica answers, and how often it was asked."""

    def __init__(self, h: dict[int, bytes], last: int):
        self.h, self.last, self.asked = h, last, []

    def tx(self) -> int:
        self.asked.append("state")
        return self.last

    def alh_of(self, tx_id: int) -> bytes:
        self.asked.append(tx_id)
        if tx_id > self.last:
            raise AssertionError(f"asked for {tx_id}, beyond the replica's {self.last}")
        return self.h[tx_id]


def resume(uploaded, spooled, replica: Replica, bases=(), truncated_at=None):
    return resume_point(uploaded, spooled, replica.tx, replica.alh_of, lambda: list(bases), truncated_at)


H = history("one")


def test_an_empty_journal_starts_at_one_without_asking_the_replica():
    replica = Replica(H, 50)
    point = resume([], [], replica)
    assert (point.next_tx, point.prev_alh, point.fills) == (1, GENESIS_ALH, ())
    assert replica.asked == []


def test_it_goes_on_after_the_newest_segment_the_replica_confirms():
    replica = Replica(H, 50)
    point = resume([seg(H, 1, 10), seg(H, 11, 20)], [seg(H, 21, 30)], replica)
    assert (point.next_tx, point.prev_alh, point.fills, point.gap) == (31, H[30], (), None)
    assert point.shipped_tx == 20  # what is on the target; the spool's segment is not shipped yet
    assert replica.asked == ["state", 30]


def test_a_segment_beyond_the_replica_is_passed_over():
    """The replica lost transactions the journal holds (restored from an
    older copy): the journal goes on from what the replica still has."""
    replica = Replica(H, 25)
    point = resume([seg(H, 1, 10), seg(H, 11, 20), seg(H, 21, 30)], [], replica)
    assert point.next_tx == 21 and point.prev_alh == H[20]
    assert 30 not in replica.asked


def test_a_journal_of_another_history_restarts_at_one():
    """The database was deleted and created again under the same name: no
    segment's Alh matches, so the old journal is not continued."""
    other = history("two")
    replica = Replica(other, 50)
    spooled = [seg(H, 21, 30)]
    point = resume([seg(H, 1, 10), seg(H, 11, 20)], spooled, replica)
    assert (point.next_tx, point.prev_alh) == (1, GENESIS_ALH)
    assert point.diverged_from == spooled[0] and point.replica_tx == 50


def test_segments_of_another_history_are_skipped_for_an_older_one_of_this():
    other = history("two")
    replica = Replica(H, 50)
    point = resume([seg(H, 1, 10), seg(other, 11, 40)], [], replica)
    assert point.next_tx == 11 and point.prev_alh == H[10]


def test_confirmed_tip_asks_each_claimed_ending_once_and_gives_up_after_its_tries():
    other = history("two")
    segments = [seg(other, i, i) for i in range(1, 41)] + [seg(H, 1, 1)]
    replica = Replica(H, 50)
    tip, alh = confirmed_tip(segments, 50, replica.alh_of, tries=16)
    assert tip is None and alh == GENESIS_ALH
    assert len(replica.asked) == 16


def test_a_hole_on_the_target_is_exported_again_first():
    replica = Replica(H, 50)
    point = resume([seg(H, 1, 10), seg(H, 21, 30)], [], replica)
    assert point.next_tx == 31
    assert point.fills == ((11, 20, H[10]),) and point.gap == (11, 20)
    assert point.shipped_tx == 30


def test_a_hole_from_the_start_is_filled_from_transaction_one():
    replica = Replica(H, 50)
    point = resume([seg(H, 21, 30)], [], replica)
    assert point.fills == ((1, 20, GENESIS_ALH),)


def test_a_hole_after_a_segment_of_another_history_is_filled_from_one():
    """What ends before the hole does not chain to the replica's history:
    everything before the chain is exported again."""
    other = history("two")
    replica = Replica(H, 50)
    point = resume([seg(other, 1, 10), seg(H, 21, 30)], [], replica)
    assert point.fills == ((1, 20, GENESIS_ALH),)


def test_a_hole_a_snapshot_base_covers_is_not_filled():
    """Retention deleted segments that a snapshot archive holds: that is on
    purpose, nothing to export again."""
    replica = Replica(H, 50)
    point = resume([seg(H, 21, 30)], [], replica, bases=[Base(20, H[20])])
    assert point.fills == () and point.gap is None and point.next_tx == 31


def test_after_truncation_it_goes_on_from_the_oldest_confirmed_base_at_or_after_it():
    replica = Replica(H, 60)
    bases = [Base(45, H[45]), Base(40, history("two")[40]), Base(55, H[55])]
    point = resume([seg(H, 1, 30)], [], replica, bases=bases, truncated_at=41)
    assert (point.next_tx, point.prev_alh, point.fills) == (46, H[45], ())
    assert point.rebased_on == bases[0] and point.shipped_tx == 45


def test_a_base_known_by_its_short_hash_goes_on_from_the_replicas_whole_alh():
    """An encrypted record is read by its name (4 bytes of the Alh): the
    replica's Alh confirms it and is the one the journal chains from; a
    short hash of another history is passed over."""
    replica = Replica(H, 60)
    bases = [Base(42, history("two")[42][:4]), Base(45, H[45][:4])]
    point = resume([seg(H, 1, 30)], [], replica, bases=bases, truncated_at=41)
    assert (point.next_tx, point.prev_alh, point.rebased_on) == (46, H[45], bases[1])


def test_after_truncation_without_a_base_it_resumes_as_before():
    """No base yet: the builder goes on as usual and meets the truncated
    transaction again (state needs_base), until a backup records one."""
    replica = Replica(H, 60)
    point = resume([seg(H, 1, 30)], [], replica, bases=[Base(20, H[20])], truncated_at=41)
    assert point.rebased_on is None and point.next_tx == 31


@pytest.mark.parametrize("base_tx", [61, 29])
def test_a_base_beyond_the_replica_or_behind_the_journal_is_no_rebase(base_tx):
    replica = Replica(H | {61: b"x" * 32}, 60)
    point = resume([seg(H, 1, 30)], [], replica, bases=[Base(base_tx, replica.h[base_tx])], truncated_at=25)
    assert point.rebased_on is None


def test_the_replica_is_asked_its_last_transaction_once():
    replica = Replica(H, 60)
    resume([seg(H, 1, 30)], [], replica, bases=[Base(20, H[20])], truncated_at=41)
    assert replica.asked.count("state") == 1


@pytest.mark.faults
def test_retention_deletes_segments_only_on_the_strength_of_bases_it_can_vouch_for(tmp_path):
    """A base record's name is anyone's word (whoever can write the
    target): one naming a late transaction and an archive that is there
    would let retention delete every segment before it. prune counts only
    the bases its `vouched` check (the local checkpoint of the archive)
    confirms."""
    from reconciler.journal.bases import prune, record_name
    from reconciler.journal.format import segment_name
    from reconciler.targets.base import Retention, TargetConfig
    root = tmp_path / "t"
    (root / "journal" / "db").mkdir(parents=True)
    archive = "immudb-20261203T000000Z.tar.gz"
    (root / archive).write_bytes(b"an archive")
    for first, last in ((1, 10), (11, 20), (21, 30)):
        (root / "journal" / "db" / segment_name(first, last, H[first - 1] if first > 1 else GENESIS_ALH,
                                                H[last])).write_bytes(b"segment")
    (root / "journal" / "db" / record_name(25, H[25], archive)).write_bytes(b"{}")  # forged: no body needed
    cfg = TargetConfig("t", "file", str(root / "immudb-{timestamp}.tar.gz"), retention=Retention(keep_last=1))
    assert prune(cfg, lambda base: False) == {}
    assert len(list((root / "journal" / "db").glob("*.journal"))) == 3
    seen: list = []
    deleted = prune(cfg, lambda base: seen.append(base) or True)
    assert [b.tx_id for b in seen] == [25] and seen[0].archive == archive
    assert len(deleted["db"]) == 2  # those that end before the base
    [left] = (root / "journal" / "db").glob("*.journal")
    assert left.name.startswith(f"{21:020d}-{30:020d}-")
