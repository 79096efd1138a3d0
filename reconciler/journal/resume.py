"""Where a journal goes on when it starts (journal/shipper.py's builder):
pure, given a way to ask the replica.

The builder knows the segments on the target and in its spool (by name:
first and last transaction, 8 hex of the Alh before and of the last), and
can ask the replica for its last committed transaction and for the Alh of
any transaction. From these, `resume_point` decides:

- an empty journal starts at transaction 1;
- otherwise it goes on after the newest segment whose last Alh the replica
  confirms (segments of another history of the same name, a database
  created again, are passed over); when the replica confirms none, the
  journal is of another history: a new one starts at 1 (`diverged_from`);
- transactions missing on the target before that chain (a lost or deleted
  segment) are exported again first (`fills`), unless a snapshot base
  covers them (retention dropped them on purpose);
- after immudb truncated the replica's history (`truncated_at`), it goes on
  from the oldest snapshot base at or after the truncation whose Alh the
  replica confirms (`rebased_on`), or as above while there is none.

Nothing here trusts a segment's name beyond what the replica confirms: a
name is a claim, the replica's Alh is the check.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from reconciler.journal.format import GENESIS_ALH, SegmentName
from reconciler.journal.store import chain_to, newest


class BaseRecord(Protocol):
    """A snapshot base (journal/bases.py's Base): an archive at the target
    holds the database at `tx_id`, whose Alh `confirmed_by` recognises
    (the record may hold only a short prefix of it)."""

    @property
    def tx_id(self) -> int: ...

    @property
    def archive(self) -> str: ...

    def confirmed_by(self, alh: bytes) -> bool: ...


B = TypeVar("B", bound=BaseRecord)
T = TypeVar("T")


@dataclass(frozen=True)
class ResumePoint:
    next_tx: int                                     # the next transaction to export
    prev_alh: bytes                                  # the Alh of the one before it
    fills: tuple[tuple[int, int, bytes], ...] = ()   # ranges to export first: (first, last, Alh before first)
    shipped_tx: int = 0                              # the last transaction of the chain already on the target
    diverged_from: SegmentName | None = None         # the journal's tip, of another history: restarted at 1
    gap: tuple[int, int] | None = None               # transactions missing on the target, exported again
    rebased_on: BaseRecord | None = None             # the base a truncated history goes on from
    replica_tx: int | None = None                    # the replica's last transaction, when it was asked


def resume_point(uploaded: Sequence[SegmentName], spooled: Sequence[SegmentName], replica_tx: Callable[[], int],
                 alh_of: Callable[[int], bytes], bases: Callable[[], Sequence[B]],
                 truncated_at: int | None = None) -> ResumePoint:
    """Where to go on (see the module's doc). `replica_tx`, `alh_of` and
    `bases` are asked only when needed, each of the first and last once."""
    replica_tx, bases = _once(replica_tx), _once(bases)
    every = [*uploaded, *spooled]
    if truncated_at is not None:
        rebased = _rebase(every, truncated_at, replica_tx, alh_of, bases)
        if rebased is not None:
            return rebased
    if not every:
        return ResumePoint(1, GENESIS_ALH)
    tip, tip_alh = confirmed_tip(every, replica_tx(), alh_of)
    if tip is None:
        return ResumePoint(1, GENESIS_ALH, diverged_from=newest(every), replica_tx=replica_tx())
    chain = chain_to(every, tip)
    fills: list[tuple[int, int, bytes]] = []
    gap = None
    if chain.hole is not None and not any(b.tx_id >= chain.first_tx - 1 for b in bases()):
        first, last = chain.hole
        prev = GENESIS_ALH
        if chain.before_hole is not None and first > 1:
            prev = alh_of(first - 1)
            if prev.hex()[:8] != chain.before_hole.last:  # what ends before the hole is of another history
                first, prev = 1, GENESIS_ALH
        if first <= last:
            fills.append((first, last, prev))
            gap = (first, last)
    shipped = max((s.last_tx for s in uploaded if s in chain.segments), default=0)
    return ResumePoint(tip.last_tx + 1, tip_alh, tuple(fills), shipped, gap=gap, replica_tx=replica_tx())


def confirmed_tip(segments: Sequence[SegmentName], replica_tx: int, alh_of: Callable[[int], bytes],
                  tries: int = 16) -> tuple[SegmentName | None, bytes]:
    """The newest segment whose last transaction the replica holds with
    the same hash, and that hash. Segments of another history (a database
    of the same name created again) are passed over: up to `tries`
    candidates are asked, newest first."""
    seen = set()
    for candidate in sorted(segments, key=lambda s: (s.last_tx, s.name), reverse=True):
        if candidate.last_tx > replica_tx or (candidate.last_tx, candidate.last) in seen:
            continue
        seen.add((candidate.last_tx, candidate.last))
        alh = alh_of(candidate.last_tx)
        if alh.hex()[:8] == candidate.last:
            return candidate, alh
        if len(seen) >= tries:
            break
    return None, GENESIS_ALH


def _rebase(segments: Sequence[SegmentName], truncated_at: int, replica_tx: Callable[[], int],
            alh_of: Callable[[int], bytes], bases: Callable[[], Sequence[B]]) -> ResumePoint | None:
    """Just after the oldest snapshot base at or after `truncated_at - 1`
    (and not behind what the journal holds) whose Alh the replica
    confirms; None while there is no such base."""
    held = max((s.last_tx for s in segments), default=0)
    for base in sorted(bases(), key=lambda b: b.tx_id):
        if base.tx_id < max(truncated_at - 1, held) or base.tx_id > replica_tx():
            continue
        alh = alh_of(base.tx_id)
        if not base.confirmed_by(alh):
            continue  # a base of another history of this name
        return ResumePoint(base.tx_id + 1, alh, shipped_tx=base.tx_id, rebased_on=base,
                           replica_tx=replica_tx())
    return None


def _once(ask: Callable[[], T]) -> Callable[[], T]:
    answers: list[T] = []

    def once() -> T:
        if not answers:
            answers.append(ask())
        return answers[0]
    return once
