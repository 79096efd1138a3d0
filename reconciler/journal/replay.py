"""Restore to a point: a database's journal proven, then replayed with
immudb's replicateTx up to a transaction (or the last one at or before a
time) into a new or empty database, and the result checked.

Two passes over the segments:

1. prove (`plan`): every segment from the base (a snapshot archive, or
   transaction 1) is read and checked (format.decode_segment: checksums,
   each transaction read exactly as immudb reads it, the hash chain and
   BlRoot, times and Alh against the header, no truncated values). The
   point is chosen from those checked transactions only (a time from their
   own timestamps, never a header's). Reading goes on past the point as far
   as the anchors need (trust/anchors.py): the primary's signed state of a
   segment, the local checkpoint, and the live servers' own Alh of the point
   and of the transaction after it. An anchor that disagrees stops the
   restore; at least one must vouch for the point.
2. replay (`replay`): the same segments read again, each byte for byte the
   one proven (its SHA-256), into the database, which is then checked: its
   transaction id and Alh must be the point's.

Nothing crafted reaches immudb (every transaction is one immudb's own
parser takes, tests/test_exported_differential.py), and a database this
restore created is deleted again when anything fails."""
from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from reconciler.admin import AlreadyExists, ImmudbAdmin, ImmudbError
from reconciler.errors import ReplicatorError
from reconciler.exported import DEFAULT_LIMITS, GENESIS_ALH, Successor, TxLimits
from reconciler.journal.bases import Base
from reconciler.journal.format import JournalError, SegmentName, decode_segment
from reconciler.journal.store import JournalStore, chain_to
from reconciler.signed import TrustError
from reconciler.state import StoreLimits
from reconciler.trust.anchors import Anchors, Verdict, conclude


class ReplayError(ReplicatorError):
    pass


# immudb keeps time as int64 seconds; datetime reaches year 9999
_LATEST = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc).timestamp()


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


def parse_time(text: str | None) -> float:
    """Seconds since the epoch from ISO 8601 with a time zone (`Z` for
    UTC), or a number of seconds. Raises ReplayError for an empty, zone-less,
    NaN, infinite or out-of-range time."""
    given = "" if text is None else str(text).strip()
    if not given:
        raise ReplayError("--to-time is empty (an unset shell variable?): give a time such as 2026-11-27T14:05:00Z")
    try:
        seconds = float(given)
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            when = datetime.datetime.fromisoformat(given.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ReplayError(f"--to-time {given!r}: expected ISO 8601 such as 2026-11-27T14:05:00Z, or epoch "
                              f"seconds") from None
        if when.tzinfo is None:
            raise ReplayError(f"--to-time {given!r}: give a time zone (Z for UTC, or +01:00)")
        try:
            seconds = when.timestamp()
        except (OverflowError, ValueError):
            raise ReplayError(f"--to-time {given!r}: out of range") from None
    if not math.isfinite(seconds):
        raise ReplayError(f"--to-time {given!r}: not a time")
    if not 0 <= seconds <= _LATEST:
        raise ReplayError(f"--to-time {given!r}: out of range (1970 to 9999)")
    return seconds


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
    anchors: list[Verdict] = field(default_factory=list)


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay, proven: from `base` (a snapshot archive; None: the
    journal from transaction 1), the segments (each with the SHA-256 it
    was proven with), up to transaction `last`, whose Alh and time are
    `alh` and `ts`; what vouched for it."""

    base: Base | None
    segments: list[SegmentName]
    last: int
    alh: bytes = GENESIS_ALH
    ts: int = 0
    digests: dict[str, bytes] = field(default_factory=dict)
    anchors: list[Verdict] = field(default_factory=list)
    limits: TxLimits = DEFAULT_LIMITS
    behind: str | None = None          # how far the journal ends behind a live server

    @property
    def first(self) -> int:
        return self.base.tx_id + 1 if self.base else 1


def _runs(segments: list[SegmentName]) -> dict[str, SegmentName]:
    """For each segment, the end of the longest run of segments that
    follow it by name (same range boundary and hash prefix)."""
    following: dict[tuple[int, str], list[SegmentName]] = {}
    for s in segments:
        following.setdefault((s.first_tx - 1, s.prev), []).append(s)
    end: dict[str, SegmentName] = {}
    for s in sorted(segments, key=lambda s: -s.last_tx):
        nxt = [end.get(n.name, n) for n in following.get((s.last_tx, s.last), [])]
        end[s.name] = max(nxt, key=lambda n: n.last_tx) if nxt else s
    return end


def _chain_for(segments: list[SegmentName], tip: SegmentName | None, tx: int | None) -> list[SegmentName]:
    """The segments of the chain that holds transaction `tx` (the current
    history, ending at `tip`, when it does; otherwise the longest older run
    that does: a point before a hole is restored from the chain that holds
    it). tx None: the current history."""
    if tip is None:
        return []
    current = list(chain_to(segments, tip).segments)
    if tx is None or current[0].first_tx <= tx <= current[-1].last_tx or tx > current[-1].last_tx:
        return current
    ends = _runs(segments)
    holding = [s for s in segments if s.first_tx <= tx <= s.last_tx]
    if not holding:
        return current
    best = max(holding, key=lambda s: (ends[s.name].last_tx, s.name))
    return list(chain_to(segments, ends[best.name]).segments)


def _time_hint(store: JournalStore, segs: list[SegmentName], when: float) -> int:
    """The index of the segment that likely holds the last transaction at
    or before `when`, from the headers' first times (a hint only: every
    time that decides anything is read from checked transactions)."""
    lo, hi, found = 0, len(segs) - 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            first_ts = store.header(segs[mid].name).first_ts
        except JournalError:
            return 0  # a header that does not read: start from the oldest, the proof will say what is wrong
        if first_ts <= when:
            found, lo = mid, mid + 1
        else:
            hi = mid - 1
    return found


def plan(store: JournalStore, point: Point, bases: Iterable[Base] = (), snapshots: bool = False,
         anchors: Anchors | None = None, limits: TxLimits = DEFAULT_LIMITS) -> ReplayPlan:
    """Choose the base and segments for `point`, and prove them (see the
    module's docstring). Snapshot bases (`bases`) are used only when
    `snapshots` (the restore goes to a data directory: a running server
    cannot take an archive's files); otherwise the journal must reach back
    to transaction 1. Raises ReplayError when nothing can reach the point,
    JournalError when what was read is not a valid history, TrustError when
    an anchor disagrees or none vouches."""
    anchors = anchors if anchors is not None else Anchors(unanchored=True)
    segments, tip = store.current_tip()
    bases = list(bases)
    if tip is None and not bases:
        raise ReplayError(f"no journal of {store.database} at target {store.name}")
    segs = _chain_for(segments, tip, point.tx)
    chain_first = segs[0].first_tx if segs else 0
    chain_last = segs[-1].last_tx if segs else 0
    newest_base = max((b.tx_id for b in bases), default=0)

    # a first guess of the point, to choose the base; the proof settles it
    if point.tx is not None:
        guess = point.tx
    elif point.time is not None:
        # the point is at or after the first transaction of the segment the headers point to (checked when read)
        guess = segs[_time_hint(store, segs, point.time)].first_tx if segs else newest_base
    else:
        guess = max(chain_last, newest_base if not segs else 0)
    if guess < 1 or guess > max(chain_last, newest_base):
        held = f"{chain_first}-{chain_last}" if segs else "nothing"
        raise ReplayError(f"transaction {guess} is not in the journal of {store.database} (it holds {held})")
    usable = [b for b in bases if b.tx_id <= guess and (b.tx_id == guess or segs and chain_first <= b.tx_id + 1
                                                        and b.tx_id <= chain_last)]
    if snapshots and usable:
        base = max(usable, key=lambda b: b.tx_id)
    elif segs and chain_first == 1:
        base = None
    elif usable:
        raise ReplayError(f"the journal of {store.database} starts at transaction {chain_first}: older ones are "
                          f"in snapshot archive {usable[-1].archive} at {store.name}, which a running server cannot "
                          f"take: restore into a new folder with --data-dir")
    else:
        chain = chain_to(segments, tip) if tip else None
        first = chain.hole[0] if chain and chain.hole else 1
        raise ReplayError(f"the journal of {store.database} at {store.name} misses transactions {first}-"
                          f"{(chain_first or guess + 1) - 1} and no snapshot archive there is a base for "
                          f"transaction {guess}")
    return _prove(store, point, base, segs, anchors, limits, tip.last_tx if tip else 0)


def _prove(store: JournalStore, point: Point, base: Base | None, segs: list[SegmentName], anchors: Anchors,
           limits: TxLimits, tip_tx: int) -> ReplayPlan:
    start = base.tx_id + 1 if base else 1
    segs = [s for s in segs if s.last_tx >= start or (base and s.last_tx == base.tx_id)]
    what = f"journal of {store.database} at {store.name}"
    last = base.tx_id if base else 0
    last_alh, last_ts = (base.tx_hash, 0) if base else (GENESIS_ALH, 0)
    after: tuple[int, bytes, int] | None = None      # the transaction after the point (id, Alh, ts), when read
    decided = point.tx is not None and point.tx <= last  # the point is the base itself
    signed_tx = 0
    local = anchors.checkpoint
    local_alh: bytes | None = None
    digests: dict[str, bytes] = {}
    used: list[SegmentName] = []
    successor: Successor | None = None
    base_ts: int | None = None
    if base is not None and not segs:
        decided = True
    for segment in segs:
        if decided and _covered(after, point, signed_tx, local, local_alh, last, anchors):
            break
        with store.open(segment.name) as stream:
            if successor is None:
                successor = _successor(store, segment, base)
            decoded = decode_segment(stream, segment, limits=limits, successor=successor, database=store.database)
            for tx in decoded.transactions:
                h = tx.header
                if base is not None and h.id == base.tx_id:
                    if h.alh != base.tx_hash:
                        raise JournalError(f"{what}: transaction {h.id}: the journal's hash differs from the "
                                           f"snapshot base's ({base.archive})")
                    base_ts = h.ts
                if local is not None and h.id == local[0]:
                    local_alh = h.alh
                if h.id < start:
                    continue
                if not decided:
                    stop = (point.tx is not None and h.id > point.tx) or (point.time is not None
                                                                           and h.ts > point.time)
                    if not stop:
                        last, last_alh, last_ts = h.id, h.alh, h.ts
                        if point.tx is not None and h.id == point.tx:
                            decided = True
                        continue
                    decided = True
                if after is None and h.id == last + 1:
                    after = (h.id, h.alh, h.ts)
                if point.time is not None and h.ts <= point.time:
                    raise JournalError(f"{what}: transaction {h.id} was committed at {_iso(h.ts)}, before "
                                       f"transaction {last + 1} ({_iso(after[2])}): the journal's times are not in "
                                       f"order around {_iso(point.time)}; restore to a transaction (--to-tx)")
            info = decoded.info
        digests[segment.name] = decoded.digest
        used.append(segment)
        if info.signed is not None and anchors.check_signed(info.signed, info.last_tx, info.last_alh,
                                                            f"segment {segment.name}"):
            signed_tx = max(signed_tx, info.last_tx)
        elif anchors.key is not None and info.signed is None and not decided:
            pass  # written while the primary did not answer: a later segment's signature covers it
    if point.tx is not None and last != point.tx:
        raise ReplayError(f"transaction {point.tx} is not in the {what} (it ends at {last})")
    if point.time is not None and base is not None and last == base.tx_id and (base_ts is None
                                                                               or base_ts > point.time):
        raise ReplayError(f"{_iso(point.time)} is at or before snapshot base {base.archive} (transaction "
                          f"{base.tx_id}), whose time the journal does not "
                          f"{'hold' if base_ts is None else 'put before it'}: restore to a transaction (--to-tx)")
    if last < start and base is None:
        first_ts = store.header(segs[0].name).first_ts if segs else 0
        raise ReplayError(f"the {what} starts at {_iso(first_ts)}, after {_iso(point.time or 0)}")
    used = [s for s in used if s.last_tx >= start and s.first_tx <= last]
    verdicts, behind = _anchor_verdicts(what, point, last, last_alh, after, signed_tx, local, local_alh, anchors,
                                        max(tip_tx, last))
    verdicts = conclude(verdicts, anchors, last, f"restore of {store.database} to transaction {last}")
    return ReplayPlan(base, used, last, last_alh, last_ts, {s.name: digests[s.name] for s in used}, verdicts,
                      limits, behind)


def _successor(store: JournalStore, segment: SegmentName, base: Base | None) -> Successor:
    """What the first segment read must follow: transaction 1's genesis, the
    base's Alh when it starts just after the base, or (a segment that
    overlaps the base) its header's previous Alh, which the base's Alh then
    checks at the base's transaction."""
    if segment.first_tx == 1:
        return Successor()
    if base is not None and segment.first_tx == base.tx_id + 1:
        return Successor(segment.first_tx, base.tx_hash, from_genesis=False)
    return Successor(segment.first_tx, store.header(segment.name).prev_alh, from_genesis=False)


def _covered(after, point: Point, signed_tx: int, local, local_alh, last: int, anchors: Anchors) -> bool:
    """True when reading further can no longer change a verdict."""
    if point.time is not None and after is None:
        return False  # the transaction after the point (its time) is not read yet
    need = last + 1 if point.time is not None else last
    signed_done = anchors.key is None or signed_tx >= need
    local_done = local is None or local[0] < last or local_alh is not None
    return signed_done and local_done


def _anchor_verdicts(what: str, point: Point, last: int, last_alh: bytes, after, signed_tx: int, local,
                     local_alh, anchors: Anchors, journal_end: int) -> tuple[list[Verdict], str | None]:
    """The anchors' verdicts on the point `last` (Alh `last_alh`); raises
    TrustError when one disagrees. `journal_end`: where the journal's
    current history ends (a checkpoint beyond it: segments are missing)."""
    verdicts: list[Verdict] = []
    behind = None
    if anchors.key is not None:
        if signed_tx >= last:
            verdicts.append(Verdict("signed", f"key {anchors.key.path}", last,
                                    f"the primary's signature of transaction {signed_tx} holds, and the hash chain "
                                    f"links it to transaction {last}"))
        else:
            verdicts.append(Verdict("signed", f"key {anchors.key.path}", None,
                                    f"no signed state at or after transaction {last} in the journal"))
    if local is not None:
        tx_id, alh, source = local
        if tx_id < last:
            verdicts.append(Verdict("local", source, None, f"the checkpoint is of transaction {tx_id}, before the point"))
        elif local_alh is None:
            open_ended = point.tx is None and (point.time is None or after is None)  # the end decides the point
            if journal_end < tx_id and open_ended and not anchors.allow_rollback:
                raise TrustError(f"{what}: ends at transaction {journal_end}, but this replicator wrote it up to "
                                 f"transaction {tx_id} (local checkpoint, {source}): its newest segments are gone; "
                                 f"give --allow-rollback to restore from what is left")
            why = (f"the journal ends at {journal_end}: its newest segments are missing" if journal_end < tx_id
                   else "a hole lies between them")
            verdicts.append(Verdict("local", source, None, f"checkpoint of transaction {tx_id} cannot be linked to "
                                                           f"the point ({why})"))
        elif local_alh != alh:
            raise TrustError(f"{what}: transaction {tx_id} has Alh {local_alh.hex()[:16]}..., this replicator wrote "
                             f"{alh.hex()[:16]}... (local checkpoint, {source}): the journal was rewritten")
        else:
            verdicts.append(Verdict("local", source, last, f"checkpoint of transaction {tx_id} matches, linked to "
                                                           f"the point by the hash chain"))
    for server in anchors.live:
        try:
            got = server.header(last)
            newest = server.last()
        except ReplicatorError as exc:
            verdicts.append(Verdict("live", server.label, None, f"not reachable ({exc})"))
            continue
        if got is None:
            verdicts.append(Verdict("live", server.label, None, f"holds only {newest} transactions"))
            continue
        if got[0] != last_alh:
            raise TrustError(f"{what}: {server.label} holds transaction {last} with Alh {got[0].hex()[:16]}..., the "
                             f"journal {last_alh.hex()[:16]}...: the journal was rewritten, or is of another history "
                             f"of {server.database} (give --no-live to restore an older history)")
        note = f"holds transaction {last} with the same Alh"
        if newest > last:
            nxt = server.header(last + 1) if point.time is not None else None
            if after is not None and nxt is not None and nxt[0] != after[1]:
                raise TrustError(f"{what}: {server.label} holds transaction {last + 1} with another Alh than the "
                                 f"journal's: the journal was rewritten after the point")
            if point.time is not None and nxt is not None and nxt[1] <= point.time:
                raise TrustError(f"{what}: ends at transaction {last}, but {server.label} committed transaction "
                                 f"{last + 1} at {_iso(nxt[1])}, at or before {_iso(point.time)}: segments are "
                                 f"missing from the journal's end")
            if point.tx is None and point.time is None:
                behind = f"the journal ends {newest - last} transactions behind {server.label} (at {newest})"
                if not anchors.allow_rollback:
                    raise TrustError(f"{what}: {behind}: restoring to its end would roll back; give --to-tx {last} "
                                     f"or --allow-rollback")
                note += f"; {behind}"
        verdicts.append(Verdict("live", server.label, last, note))
    return verdicts, behind


def transactions(store: JournalStore, planned: ReplayPlan, record: dict) -> Iterator[tuple[int, bytes]]:
    """(id, exported bytes) of every transaction after the base up to the
    point, read again, each segment byte for byte the one proven and every
    transaction checked again. `record` gets the last one's Alh and time."""
    base_tx = planned.base.tx_id if planned.base else 0
    successor: Successor | None = None
    for segment in planned.segments:
        with store.open(segment.name) as stream:
            if successor is None:
                successor = _successor(store, segment, planned.base)
            decoded = decode_segment(stream, segment, until=planned.last, limits=planned.limits, successor=successor,
                                     database=store.database)
            if decoded.digest != planned.digests.get(segment.name):  # the whole file is read and hashed by now
                raise JournalError(f"segment {segment.name} changed on the target since it was checked")
            for tx in decoded.transactions:
                if planned.base is not None and tx.id == base_tx and tx.header.alh != planned.base.tx_hash:
                    raise JournalError(f"transaction {tx.id}: the journal's hash differs from the snapshot base's "
                                       f"({planned.base.archive})")
                if tx.id <= base_tx:
                    continue
                record.update(alh=tx.header.alh, ts=tx.header.ts, tx=tx.id)
                yield tx.id, tx.data
    if record.get("tx", base_tx) != planned.last or (planned.last > base_tx and record.get("alh") != planned.alh):
        raise JournalError(f"the journal of {store.database} changed on the target since it was checked")


def replay(store: JournalStore, planned: ReplayPlan, admin: ImmudbAdmin, restore_as: str,
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay the planned transactions into database `restore_as` of
    `admin`'s server, check it and make it an ordinary database. Without a
    snapshot base the database is created (or an existing empty one used);
    with one it must already hold the base (restored from its archive).
    `progress(tx_id, bytes)` is called as each transaction is applied.
    A database this call created is deleted again when anything fails."""
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
            admin.create_restore_database(restore_as, StoreLimits(
                max_key_len=planned.limits.max_key_len, max_value_len=planned.limits.max_value_len,
                max_tx_entries=planned.limits.max_tx_entries))
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
                or state.tx_hash != planned.alh and planned.last >= planned.first
                or planned.base is not None and planned.last == planned.base.tx_id
                and state.tx_hash != planned.base.tx_hash):
            raise ReplayError(f"{restore_as} on {admin.name} is at transaction {state.tx_id} "
                              f"({state.tx_hash.hex()[:16]}...) after replay; the journal records transaction "
                              f"{planned.last} ({planned.alh.hex()[:16]}...): NOT restored correctly")
        seconds = time.monotonic() - started
        if planned.base is None or planned.last > planned.base.tx_id:  # it was made a replica to take the replay
            admin.promote(restore_as)
    except BaseException as exc:
        _discard(admin, restore_as, created, exc)
        raise
    return ReplayResult(store.database, restore_as, planned.last, state.tx_hash, record.get("ts", planned.ts), count,
                        total["bytes"], seconds, len(planned.segments), planned.anchors)


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
    except (ReplicatorError, ImmudbError) as cleanup:
        exc.args = (f"{exc}; the half-restored database {name} could not be deleted ({cleanup}): delete it",)
