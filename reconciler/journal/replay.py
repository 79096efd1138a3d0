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
from reconciler.journal.store import JournalStore, chain_to, newest


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


def plan(store: JournalStore, point: Point) -> tuple[list[SegmentName], int]:
    """The segments to replay (oldest first) and the last transaction to
    replay. Raises ReplayError when the journal cannot reach the point."""
    segments = store.segments()
    tip = newest(segments)
    if tip is None:
        raise ReplayError(f"no journal of {store.database} at target {store.name}")
    chain = chain_to(segments, tip)
    if chain.first_tx != 1:
        first, last = chain.hole
        raise ReplayError(f"the journal of {store.database} at {store.name} misses transactions {first}-{last} "
                          f"(its newest chain starts at {chain.first_tx}): no base to replay from")
    segs = list(chain.segments)
    if point.tx is not None:
        if point.tx < 1 or point.tx > chain.last_tx:
            raise ReplayError(f"transaction {point.tx} is not in the journal of {store.database} "
                              f"(it holds 1-{chain.last_tx})")
        return [s for s in segs if s.first_tx <= point.tx], point.tx
    if point.time is None:
        return segs, chain.last_tx
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
                last = tx.id - 1
                break
    return segs[:found + 1], last


def transactions(store: JournalStore, segments: list[SegmentName], last: int,
                 record: dict) -> Iterator[tuple[int, bytes]]:
    """(id, exported bytes) of every transaction up to `last`, each checked,
    chained from transaction 1. `record` gets the last one's Alh and time."""
    prev = GENESIS_ALH
    for segment in segments:
        with store.open(segment.name) as stream:
            info, txs = decode_segment(stream, segment, until=last)
            if info.database != store.database:
                raise JournalError(f"segment {segment.name} is of database {info.database!r}, not "
                                   f"{store.database!r}")
            if info.prev_alh != prev:
                raise JournalError(f"transaction {info.first_tx}: the hash chain does not match (segment "
                                   f"{segment.name} does not follow the one before)")
            for tx in txs:
                prev = check_chain([tx], prev)
                record.update(alh=tx.header.alh, ts=tx.header.ts, tx=tx.id)
                yield tx.id, tx.data


def replay(store: JournalStore, point: Point, admin: ImmudbAdmin, restore_as: str,
           progress: Callable[[int, int], None] | None = None,
           planned: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay `store`'s journal up to `point` into database `restore_as` of
    `admin`'s server (created; or an existing empty one), check it and make
    it an ordinary database. `planned(transactions, segments)` is called
    before replaying; `progress(tx_id, bytes)` as each transaction is
    applied."""
    segments, last = plan(store, point)
    if planned is not None:
        planned(last, len(segments))
    created = True
    try:
        admin.create_restore_database(restore_as)
    except AlreadyExists:
        created = False
        state = admin.state(restore_as)
        if state.tx_id != 0:
            raise ReplayError(f"database {restore_as} exists on {admin.name} and holds {state.tx_id} transactions: "
                              f"restore into a new name (--as) or an empty database") from None
        admin.make_restore_target(restore_as)
    started = time.monotonic()
    record: dict = {}
    total = {"bytes": 0}

    def done(tx_id: int, size: int) -> None:
        total["bytes"] += size
        if progress is not None:
            progress(tx_id, size)

    try:
        count = admin.replicate(restore_as, transactions(store, segments, last, record), done=done)
        state = admin.state(restore_as)
        if count != last or state.tx_id != last or state.tx_hash != record.get("alh"):
            raise ReplayError(f"{restore_as} on {admin.name} is at transaction {state.tx_id} "
                              f"({state.tx_hash.hex()[:16]}...) after replay; the journal records transaction "
                              f"{last} ({(record.get('alh') or b'').hex()[:16]}...): NOT restored correctly")
    except BaseException as exc:
        _discard(admin, restore_as, created, exc)
        raise
    seconds = time.monotonic() - started
    admin.promote(restore_as)
    return ReplayResult(store.database, restore_as, last, state.tx_hash, record.get("ts", 0), count,
                        total["bytes"], seconds, len(segments))


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
