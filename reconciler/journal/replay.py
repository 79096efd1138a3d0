"""Restore to a point: a database's journal replayed with immudb's
replicateTx up to a transaction (or the last one at or before a time), into
a new or empty database of a running immudb, and the result checked: the
restored database's transaction id and Alh must be the journal's record for
that transaction.

Every transaction is checked before immudb sees it (format.decode_segment:
the segment's checksum, each transaction's entries against its header, the
hash chain from transaction 1), so a tampered journal is refused naming the
transaction, and nothing past it is replayed."""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from reconciler.admin import AlreadyExists, ImmudbAdmin
from reconciler.errors import ReplicatorError
from reconciler.journal.format import GENESIS_ALH, JournalError, SegmentName, check_chain, decode_segment
from reconciler.journal.bases import Base
from reconciler.journal.store import JournalStore, chain_to


class ReplayError(ReplicatorError):
    pass


@dataclass(frozen=True)
class Point:
    """Where to stop: a transaction id, or a time (the last transaction
    committed at or before it), or neither (the journal's end)."""

    tx: int | None = None
    time: float | None = None

    def describe(self) -> str:
        if self.tx is not None:
            return f"transaction {self.tx}"
        if self.time is not None:
            return f"time {_iso(self.time)}"
        return "the journal's last transaction"


def parse_time(text: str) -> float:
    """Seconds since the epoch from ISO 8601 (a time zone is required;
    `Z` for UTC) or a number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReplayError(f"--to-time {text!r}: expected ISO 8601 such as 2026-11-27T14:05:00Z, or epoch seconds") \
            from None
    if when.tzinfo is None:
        raise ReplayError(f"--to-time {text!r}: give a time zone (Z for UTC, or +01:00)")
    return when.timestamp()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ReplayResult:
    database: str          # the journal's database
    restored_as: str
    tx_id: int
    alh: bytes
    tx_time: int
    transactions: int
    bytes: int
    seconds: float
    segments: int


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay: from `base` (a snapshot archive; None: the journal
    from transaction 1), the segments, up to transaction `last`."""

    base: Base | None
    segments: list[SegmentName]
    last: int

    @property
    def first(self) -> int:
        return self.base.tx_id + 1 if self.base else 1


def _last_at(store: JournalStore, segs: list[SegmentName], point: Point, chain_last: int) -> int:
    """The transaction the point names, within the segments `segs`."""
    if point.tx is not None:
        return point.tx
    if point.time is None:
        return chain_last
    # the last segment whose first transaction is at or before the time: binary search on headers
    lo, hi, found = 0, len(segs) - 1, -1
    while lo <= hi:
        mid = (lo + hi) // 2
        if store.header(segs[mid].name).first_ts <= point.time:
            found, lo = mid, mid + 1
        else:
            hi = mid - 1
    if found < 0:
        first_ts = store.header(segs[0].name).first_ts
        raise ReplayError(f"the journal of {store.database} starts at {_iso(first_ts)}, after "
                          f"{_iso(point.time)}")
    last = segs[found].last_tx
    with store.open(segs[found].name) as stream:
        _, txs = decode_segment(stream, segs[found])
        for tx in txs:
            if tx.header.ts > point.time:
                return tx.id - 1
    return last


def plan(store: JournalStore, point: Point, bases: list[Base] = (), snapshots: bool = False) -> ReplayPlan:
    """The newest base at or before the point, and the segments from it.
    Snapshot bases (`bases`) are used only when `snapshots` (the restore
    goes to a data directory: a running server cannot take an archive's
    files); otherwise the journal must reach back to transaction 1. Raises
    ReplayError when nothing can reach the point."""
    segments, tip = store.current_tip()
    if tip is None and not bases:
        raise ReplayError(f"no journal of {store.database} at target {store.name}")
    chain = chain_to(segments, tip) if tip else None
    segs = list(chain.segments) if chain else []
    last = _last_at(store, segs, point, chain.last_tx if chain else 0) if segs else (
        point.tx if point.tx is not None else max(b.tx_id for b in bases))
    if last < 1 or last > max([chain.last_tx if chain else 0] + [b.tx_id for b in bases]):
        held = f"1-{chain.last_tx}" if chain and chain.first_tx == 1 else \
            f"{chain.first_tx}-{chain.last_tx}" if chain else "nothing"
        raise ReplayError(f"transaction {last} is not in the journal of {store.database} (it holds {held})")
    usable = [b for b in bases if b.tx_id <= last and (b.tx_id == last or chain and chain.first_tx <= b.tx_id + 1)]
    if snapshots and usable:
        base = max(usable, key=lambda b: b.tx_id)
    elif chain and chain.first_tx == 1:
        base = None
    elif usable:
        raise ReplayError(f"the journal of {store.database} starts at transaction {chain.first_tx}: older ones are "
                          f"in snapshot archive {usable[-1].archive} at {store.name}, which a running server cannot "
                          f"take: restore into a new folder with --data-dir")
    else:
        first = chain.hole[0] if chain and chain.hole else 1
        raise ReplayError(f"the journal of {store.database} at {store.name} misses transactions {first}-"
                          f"{(chain.first_tx if chain else last + 1) - 1} and no snapshot archive there is a base "
                          f"for transaction {last}")
    start = base.tx_id + 1 if base else 1
    needed = [s for s in segs if s.last_tx >= start and s.first_tx <= last]
    return ReplayPlan(base, needed, last)


def transactions(store: JournalStore, planned: ReplayPlan, record: dict) -> Iterator[tuple[int, bytes]]:
    """(id, exported bytes) of every transaction after the base up to the
    point, each checked and chained from the base (or from transaction 1).
    `record` gets the last one's Alh and time."""
    base_tx = planned.base.tx_id if planned.base else 0
    prev = planned.base.tx_hash if planned.base else GENESIS_ALH
    for segment in planned.segments:
        with store.open(segment.name) as stream:
            info, txs = decode_segment(stream, segment, until=planned.last)
            if info.database != store.database:
                raise JournalError(f"segment {segment.name} is of database {info.database!r}, not "
                                   f"{store.database!r}")
            if info.first_tx > base_tx and info.prev_alh != prev:
                raise JournalError(f"transaction {info.first_tx}: the hash chain does not match (segment "
                                   f"{segment.name} does not follow "
                                   f"{'the base' if info.first_tx == base_tx + 1 and base_tx else 'the one before'})")
            for tx in txs:
                if tx.id <= base_tx:
                    if tx.id == base_tx and tx.header.alh != prev:
                        raise JournalError(f"transaction {tx.id}: the journal's hash differs from the snapshot "
                                           f"base's ({planned.base.archive})")
                    continue
                prev = check_chain([tx], prev)
                record.update(alh=tx.header.alh, ts=tx.header.ts, tx=tx.id)
                yield tx.id, tx.data


def replay(store: JournalStore, planned: ReplayPlan, admin: ImmudbAdmin, restore_as: str,
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay the planned transactions into database `restore_as` of
    `admin`'s server, check it and make it an ordinary database. Without a
    snapshot base the database is created (or an existing empty one used);
    with one it must already hold the base (restored from its archive).
    `progress(tx_id, bytes)` is called as each transaction is applied."""
    created = False
    if planned.base is not None:
        state = admin.state(restore_as)
        if (state.tx_id, state.tx_hash) != (planned.base.tx_id, planned.base.tx_hash):
            raise ReplayError(f"{restore_as} restored from {planned.base.archive} is at transaction {state.tx_id}, "
                              f"its manifest says {planned.base.tx_id}")
        if planned.last > planned.base.tx_id:
            admin.make_restore_target(restore_as)
    else:
        try:
            admin.create_restore_database(restore_as)
            created = True
        except AlreadyExists:
            state = admin.state(restore_as)
            if state.tx_id != 0:
                raise ReplayError(f"database {restore_as} exists on {admin.name} and holds {state.tx_id} "
                                  f"transactions: restore into a new name (--as) or an empty database") from None
            admin.make_restore_target(restore_as)
    started = time.monotonic()
    record: dict = {"alh": planned.base.tx_hash} if planned.base else {}
    total = {"bytes": 0}

    def done(tx_id: int, size: int) -> None:
        total["bytes"] += size
        if progress is not None:
            progress(tx_id, size)

    try:
        count = admin.replicate(restore_as, transactions(store, planned, record), done=done)
        state = admin.state(restore_as)
        if (count != planned.last - planned.first + 1 or state.tx_id != planned.last
                or state.tx_hash != record.get("alh")):
            raise ReplayError(f"{restore_as} on {admin.name} is at transaction {state.tx_id} "
                              f"({state.tx_hash.hex()[:16]}...) after replay; the journal records transaction "
                              f"{planned.last} ({(record.get('alh') or b'').hex()[:16]}...): NOT restored correctly")
    except BaseException as exc:
        _discard(admin, restore_as, created, exc)
        raise
    seconds = time.monotonic() - started
    if planned.base is None or planned.last > planned.base.tx_id:  # it was made a replica to take the replay
        admin.promote(restore_as)
    return ReplayResult(store.database, restore_as, planned.last, state.tx_hash, record.get("ts", 0), count,
                        total["bytes"], seconds, len(planned.segments))


def _discard(admin: ImmudbAdmin, name: str, created: bool, exc: BaseException) -> None:
    """After a failed replay: a database this restore created is deleted (a
    half-restored database must not pass for a restored one); an existing
    one is left for the operator, and the error says so."""
    if not created:
        exc.args = (f"{exc}; database {name} was left half-restored: delete it before trying again",)
        return
    try:
        admin.unload(name)
        admin.delete(name)
    except ReplicatorError as cleanup:
        exc.args = (f"{exc}; the half-restored database {name} could not be deleted ({cleanup}): delete it",)
