"""The journal of one replica database: its transactions exported as they
commit, framed into segments, spooled, uploaded.

Three threads per database:

    feed      admin.follow(): exportTx calls, a window ahead; immudb answers
              each as its transaction commits           -> queue
    builder   closes a segment after segment_max_seconds or segment_max_bytes,
              only of committed transactions, chained to the one before -> spool
    uploader  the spool's oldest segment to the target, then deletes it

Where it starts: the newest segment (on the target or in the spool) whose
last transaction the replica holds with the same Alh; a hole before it (the
target lost segments) is filled again from the replica; no segment at all:
transaction 1 (the journal is then a base by itself). So after a crash, a
restart or a target outage shipping resumes with no gap and no duplicate: a
segment whose upload committed before a crash has the same name when
written again, and is not written twice.

When the spool is full the builder stops taking transactions (state
`spool_full`): the replica keeps them, nothing is lost, shipping resumes
when the target takes segments again.

A transaction the replica sends without its values (immudb truncated that
history) cannot be journaled: the builder waits (state `needs_base`) until a
snapshot archive on the target holds the database at or after it, then goes
on after that base.

A failed export is tried again after a backoff; kick() (the database loaded
again after a snapshot backup) ends the backoff and any waiting call.
"""
from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from reconciler.admin import ImmudbAdmin, ImmudbError
from reconciler.config.model import ContinuousConfig
from reconciler.errors import ReplicatorError
from reconciler.exported import UNBOUNDED
from reconciler.journal.format import (
    ExportedTx,
    JournalError,
    encode_segment,
    parse_tx,
    read_header,
)
from reconciler.journal.resume import resume_point
from reconciler.journal.spool import Spool, SpoolFull
from reconciler.journal.store import JournalStore
from reconciler.log import event
from reconciler.secret import redact
from reconciler.signed import PublicKey, SignedState, TrustError
from reconciler.status import JournalState, JournalStatus
from reconciler.targets import TargetError
from reconciler.trust.checkpoints import Checkpoints

log = logging.getLogger(__name__)

FEED_WAIT = 10.0          # an idle feed asks again this often; a database unloaded meanwhile is seen then
COMMIT_POLL = 0.2         # how often to ask whether held (precommitted) transactions have committed
RETRY_FIRST = 1.0         # a failed export is tried again after this, doubling up to RETRY_MAX
RETRY_MAX = 30.0
PAUSE_TIMEOUT = 15.0      # how long a backup waits for the journal to let go of a database (pause)


class HistoryTruncated(JournalError):
    """The replica sent transaction `tx_id` without its values: immudb
    truncated that history (or the database was restored from such a
    replica). The journal cannot carry it; a snapshot archive at or after
    `tx_id - 1` on the journal's target is a base to go on from."""

    def __init__(self, database: str, tx_id: int, target: str):
        self.tx_id = tx_id
        super().__init__(f"{database}: transaction {tx_id} has been truncated on the replica (its values are gone), "
                         f"so the journal cannot hold it; it goes on from the next snapshot backup to target "
                         f"{target!r} (a base at transaction {tx_id - 1} or later)")


class Witnesses:
    """Who vouches for a journal outside its target (reconciler/trust): the
    primary, whose signed state of each segment's last transaction goes into
    the segment (when it signs), and the local checkpoint of the newest
    transaction uploaded. `sign(tx_id)` asks the primary (None: it does not
    sign); `key` checks what it answers; `checkpoints`/`target_cfg` keep the
    checkpoint. A primary that does not answer is asked again after
    SIGN_RETRY seconds: segments closed meanwhile carry no signature (a later
    one's covers them through the hash chain)."""

    SIGN_RETRY = 30.0

    def __init__(self, database: str, sign: Callable[[int], SignedState | None] | None = None,
                 key: PublicKey | None = None, checkpoints: Checkpoints | None = None, target_cfg=None,
                 primary_database: str | None = None):
        self.database, self.sign_with, self.key = database, sign, key
        self.checkpoints, self.target_cfg = checkpoints, target_cfg
        self.primary_database = primary_database or database
        self._quiet_until = 0.0
        self._checkpointed = 0
        self.last_error: str | None = None

    def sign(self, tx_id: int, alh: bytes) -> SignedState | None:
        """The primary's signed state of transaction `tx_id`, checked against
        `alh` (and the key, when configured); None when there is none to have."""
        if self.sign_with is None or time.monotonic() < self._quiet_until:
            return None
        try:
            state = self.sign_with(tx_id)
            if state is None:
                if self.key is not None:
                    raise TrustError(f"the primary returned an unsigned state for {self.primary_database} "
                                     f"transaction {tx_id}, but backup.trust.public_key_file is set: start it with "
                                     f"--signingKey")
                self.sign_with = None  # it does not sign: never ask again
                return None
            if self.key is not None:
                state.check(self.key, self.primary_database, tx_id, alh, f"journal of {self.database}")
            elif (state.database, state.tx_id, state.alh) != (self.primary_database, tx_id, alh):
                raise TrustError(f"the primary signed {state.database} transaction {state.tx_id}, not "
                                 f"{self.primary_database} transaction {tx_id} as the replica holds it")
            self.last_error = None
            return state
        except (ImmudbError, TrustError) as exc:
            self._quiet_until = time.monotonic() + self.SIGN_RETRY
            message = redact(str(exc))
            if message != self.last_error:
                event(log, "journal_unsigned", logging.WARNING, database=self.database, error=message,
                      detail="segments are written without the primary's signature until it answers")
            self.last_error = message
            return None

    def uploaded(self, name: str, last_tx: int, last_alh: bytes) -> None:
        """Segment `name` is on the target: the checkpoint moves to its end."""
        if self.checkpoints is None or last_tx <= self._checkpointed:
            return
        try:
            self.checkpoints.record_journal(self.target_cfg, self.database, last_tx, last_alh, name)
            self._checkpointed = last_tx
        except ReplicatorError as exc:
            event(log, "journal_checkpoint_failed", logging.WARNING, database=self.database, error=str(exc))

    def restarted(self) -> None:
        """A new history of the database starts at transaction 1."""
        self._checkpointed = 0
        if self.checkpoints is not None:
            self.checkpoints.forget_journal(self.target_cfg, self.database)


class Journal:
    """The journal of one database (see the module's docstring)."""

    def __init__(self, database: str, replica: ImmudbAdmin, store_factory: Callable[[], JournalStore],
                 settings: ContinuousConfig, spool_root: Path, target_name: str,
                 witnesses: Witnesses | None = None):
        self.database, self.replica, self.settings = database, replica, settings
        self.witnesses = witnesses or Witnesses(database)
        self._store_factory = store_factory
        self.spool = Spool(spool_root / database, settings.spool_max_bytes)
        self.status = JournalStatus(database, target_name)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by kick(): a builder waiting to retry tries again now
        self._pause = threading.Event()   # set by pause(): let go of the replica's database
        self._parked = threading.Event()  # set by the builder: paused, no call to the database in flight
        self._lock = threading.Lock()
        self._target_failed = False  # the last failure recorded was the target's (TargetError)
        self._feed = None
        self._threads: list[threading.Thread] = []
        self._builder: threading.Thread | None = None
        self._arrivals: dict[int, float] = {}   # first tx of each segment not yet shipped -> when it arrived
        self._open_since: float | None = None
        self._unshipped_since: float | None = None  # when the oldest committed tx not on the target was seen
        self._truncated_at: int | None = None  # the first transaction the replica sent without values

    # -- life
    def start(self) -> None:
        for name, run in (("builder", self._build_loop), ("uploader", self._upload_loop)):
            thread = threading.Thread(target=run, name=f"journal-{name}-{self.database}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._builder = self._threads[0]

    def request_stop(self) -> None:
        """Ask the threads to stop (at once: a feed waiting on immudb is cancelled)."""
        self._stop.set()
        self._wake.set()
        feed = self._feed
        if feed is not None:
            feed.cancel()
        with self.spool._changed:
            self.spool._changed.notify_all()

    def kick(self) -> None:
        """Follow again now: the database was unloaded and loaded again (a
        snapshot backup): the calls waiting on the closed one would only give
        up after FEED_WAIT, and a builder that failed meanwhile would wait out
        its backoff."""
        self._wake.set()
        feed = self._feed
        if feed is not None:
            feed.cancel()

    def pause(self, timeout: float = PAUSE_TIMEOUT) -> bool:
        """Let go of the replica's database: a snapshot backup is about to
        unload it. immudb 1.11.1 defers the close of an unloaded database
        until the last call using it returns, and a waiting export call
        returns only after FEED_WAIT: the backup would copy the files of a
        store still open, and the load after it would open a second store
        on them (found as "ahtree: data log is corrupted" and a database
        that answers "unable to get state" until immudb restarts). The
        builder cancels its feed and parks outside any call; True once it
        has (a builder that is not running counts as parked)."""
        self._pause.set()
        self.kick()
        if self._builder is None or not self._builder.is_alive():
            return True
        return self._parked.wait(timeout)

    def resume(self) -> None:
        """The database is loaded again: follow it again at once."""
        self._pause.clear()
        self.kick()

    def _park_while_paused(self) -> None:
        if not self._pause.is_set():
            return
        self._parked.set()
        try:
            while self._pause.is_set() and not self._stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
        finally:
            self._parked.clear()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._set(state=JournalState.STOPPED)

    def snapshot(self) -> dict:
        with self._lock:
            self._update_lag()
            return self.status.as_dict()

    def _set(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.status, key, value)

    def _update_lag(self) -> None:
        s = self.status
        if s.shipped_tx >= s.replica_tx:
            self._unshipped_since = None
        s.lag_seconds = max(0.0, time.time() - self._unshipped_since) if self._unshipped_since else 0.0

    def _fail(self, state: JournalState, exc: Exception, what: str) -> None:
        message = redact(str(exc))
        with self._lock:
            # which side failed, as state: an upload that succeeds clears a failure of the target only
            self._target_failed = isinstance(exc, TargetError)
            if state is JournalState.TARGET_DOWN and self.status.state is JournalState.SPOOL_FULL:
                state = JournalState.SPOOL_FULL  # the journal has stopped: that says more than why
            changed = self.status.error != message or self.status.state != state
            self.status.state, self.status.error = state, message
        if changed:
            event(log, "journal_error", logging.WARNING, database=self.database, target=self.status.target,
                  state=state, during=what, error=message)

    # -- where to start
    def _resume_point(self, store: JournalStore) -> tuple[int, bytes, list[tuple[int, int, bytes]]]:
        """(next transaction to export, Alh before it, ranges to fill first
        as (first, last, Alh before first)): journal/resume.py decides, this
        logs it and acts on it."""
        from reconciler.journal.bases import bases
        spooled, truncated = self.spool.names(), self._truncated_at
        point = resume_point(store.segments(), spooled, lambda: self.replica.state(self.database).tx_id,
                             self._alh_of, lambda: bases(store.origin, self.database, store.archives()),
                             truncated)
        target = self.status.target
        if point.rebased_on is not None:
            self._truncated_at = None
            base = point.rebased_on
            event(log, "journal_rebased", database=self.database, target=target, base_tx=base.tx_id,
                  archive=base.archive, truncated_tx=truncated,
                  detail="the replica's history is truncated: the journal goes on from a snapshot base")
        if point.diverged_from is not None:
            with self._lock:
                self.status.diverged += 1
            event(log, "journal_diverged", logging.WARNING, database=self.database, target=target,
                  segment=point.diverged_from.name, replica_tx=point.replica_tx,
                  detail="the replica does not hold the journal's newest transactions with the same hash; "
                         "a new journal starts at transaction 1")
            for segment in spooled:  # of the other history, never uploaded: not worth keeping
                self.spool.remove(segment.name)
            self.witnesses.restarted()
        if point.gap is not None:
            with self._lock:
                self.status.gaps_filled += 1
            event(log, "journal_gap", logging.WARNING, database=self.database, target=target,
                  first_tx=point.gap[0], last_tx=point.gap[1],
                  detail="segments missing on the target: exported again from the replica")
        with self._lock:
            self.status.shipped_tx = max(self.status.shipped_tx, point.shipped_tx)
        return point.next_tx, point.prev_alh, list(point.fills)

    def _alh_of(self, tx_id: int) -> bytes:
        """The Alh of transaction `tx_id` of the replica's database."""
        with self.replica.follow(self.database, tx_id, wait=10.0) as feed:
            for exported in feed:
                return parse_tx(exported.data, UNBOUNDED).header.alh
        raise JournalError(f"{self.database}: the replica did not export transaction {tx_id}")

    # -- the builder
    def _build_loop(self) -> None:
        delay = RETRY_FIRST
        cleaned = False
        while not self._stop.is_set():
            self._park_while_paused()
            if self._stop.is_set():
                break
            try:
                with self._store_factory() as store:
                    if not cleaned:  # what an upload killed with us left (a partial file, a multipart upload)
                        store.cleanup_partial()
                        cleaned = True
                    next_tx, prev_alh, fills = self._resume_point(store)
                for first, last, before in fills:
                    self._ship(first, before, last)
                self._set(state=JournalState.SHIPPING, error=None, exported_tx=next_tx - 1)
                while not self._stop.is_set() and not self._pause.is_set():
                    next_tx, prev_alh = self._ship(next_tx, prev_alh, None)
                delay = RETRY_FIRST
            except HistoryTruncated as exc:  # until a snapshot backup gives a base after it
                self._truncated_at = exc.tx_id
                self._fail(JournalState.NEEDS_BASE, exc, "exporting")
                self._wake.wait(RETRY_MAX)
                self._wake.clear()
            except SpoolFull as exc:
                self._fail(JournalState.SPOOL_FULL, exc, "spooling")
                while (not self._stop.is_set() and not self._pause.is_set()
                       and self.spool.bytes > self.settings.spool_max_bytes // 2):
                    self.spool.wait(1.0)
            except (ImmudbError, TargetError, JournalError, OSError) as exc:
                self._fail(JournalState.ERROR, exc, "exporting")
                if self._wake.wait(delay):  # kicked: the database is back, try again at once
                    delay = RETRY_FIRST
                else:
                    delay = min(RETRY_MAX, delay * 2)
                self._wake.clear()
            except Exception as exc:  # a bug: say so, keep the daemon up, try again later
                log.exception("journal of %s", self.database)
                self._fail(JournalState.ERROR, exc, "exporting")
                self._stop.wait(RETRY_MAX)

    def _ship(self, next_tx: int, prev_alh: bytes, last: int | None) -> tuple[int, bytes]:
        """Export from `next_tx` into segments until `last` (None: until the
        feed has been idle FEED_WAIT seconds). Returns where it got to."""
        arrived: queue.SimpleQueue = queue.SimpleQueue()
        feed = self.replica.follow(self.database, next_tx, wait=FEED_WAIT)
        self._feed = feed
        done = object()

        def pump() -> None:
            try:
                for exported in feed:
                    arrived.put(exported)
                    if last is not None and exported.tx_id >= last:
                        break
                arrived.put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the builder
                arrived.put(exc)

        pumper = threading.Thread(target=pump, name=f"journal-feed-{self.database}", daemon=True)
        pumper.start()
        pending: list[ExportedTx] = []
        held: list[tuple[ExportedTx, int]] = []
        size, committed = 0, 0
        try:
            while True:
                timeout = COMMIT_POLL if held else FEED_WAIT
                if pending:
                    timeout = min(timeout, max(0.0, self._open_since + self.settings.segment_max_seconds
                                               - time.time()))
                try:
                    item = arrived.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is done or self._stop.is_set():
                    break
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    tx = parse_tx(item.data, UNBOUNDED)
                    if tx.id != item.tx_id:
                        raise JournalError(f"{self.database}: asked for transaction {item.tx_id}, got {tx.id}")
                    if tx.truncated:
                        raise HistoryTruncated(self.database, tx.id, self.status.target)
                    committed = max(committed, item.committed)
                    held.append((tx, len(item.data)))
                    self._note_replica(committed)
                if held and held[-1][0].id > committed:
                    committed = max(committed, self.replica.state(self.database).tx_id)
                    self._note_replica(committed)
                while held and held[0][0].id <= committed:
                    tx, n = held.pop(0)
                    if not pending:
                        self._open_since = time.time()
                    pending.append(tx)
                    size += n
                if pending and (size >= self.settings.segment_max_bytes or last is not None and pending[-1].id >= last
                                or time.time() - self._open_since >= self.settings.segment_max_seconds):
                    prev_alh = self._close(pending, prev_alh)
                    next_tx = pending[-1].id + 1
                    pending, size = [], 0
                    if last is not None and next_tx > last:
                        break
            if pending:
                prev_alh = self._close(pending, prev_alh)
                next_tx = pending[-1].id + 1
        finally:
            feed.cancel()
            self._feed = None
            self._open_since = None
        return next_tx, prev_alh

    def _note_replica(self, committed: int) -> None:
        with self._lock:
            self.status.replica_tx = max(self.status.replica_tx, committed)
            if committed > self.status.shipped_tx and self._unshipped_since is None:
                self._unshipped_since = time.time()

    def _close(self, txs: list[ExportedTx], prev_alh: bytes) -> bytes:
        signed = self.witnesses.sign(txs[-1].id, txs[-1].header.alh)
        info, blob = encode_segment(self.database, txs, prev_alh, signed=signed)
        self.spool.put(info.name, blob)
        with self._lock:
            self._arrivals[info.first_tx] = self._open_since or time.time()
            self._open_since = None
            self.status.exported_tx = info.last_tx
            self.status.spool_bytes = self.spool.bytes
        return info.last_alh

    # -- the uploader
    def _upload_loop(self) -> None:
        delay = 1.0
        store = None
        while not self._stop.is_set():
            waiting = self.spool.names()
            if not waiting:
                self.spool.wait(1.0)
                continue
            segment = waiting[0]
            try:
                if store is None:
                    store = self._store_factory()
                blob = self.spool.read(segment.name)
                store.put(segment.name, blob)
                self.witnesses.uploaded(segment.name, segment.last_tx, read_header(io.BytesIO(blob)).last_alh)
                self.spool.remove(segment.name)
                now = time.time()
                with self._lock:
                    s = self.status
                    s.shipped_tx = max(s.shipped_tx, segment.last_tx)
                    s.shipped_bytes += len(blob)
                    s.shipped_transactions += segment.last_tx - segment.first_tx + 1
                    s.shipped_segments += 1
                    s.last_upload_at = now
                    s.spool_bytes = self.spool.bytes
                    self._arrivals.pop(segment.first_tx, None)
                    if s.shipped_tx >= s.replica_tx:
                        self._unshipped_since = None
                    else:  # the oldest still waiting arrived then (or is still on the replica: now)
                        waiting_since = [t for t in (self._open_since, *self._arrivals.values()) if t]
                        self._unshipped_since = min(waiting_since, default=now)
                    if (s.state in (JournalState.TARGET_DOWN, JournalState.SPOOL_FULL)
                            or (s.state is JournalState.ERROR and self._target_failed)):
                        s.state, s.error = JournalState.SHIPPING, None
                        self._target_failed = False
                delay = 1.0
            except FileNotFoundError:
                continue  # removed meanwhile (another history)
            except (TargetError, OSError) as exc:
                self._fail(JournalState.TARGET_DOWN, exc, "uploading")
                if store is not None:
                    store.close()
                    store = None
                self._stop.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
            except Exception as exc:
                log.exception("journal upload of %s", self.database)
                self._fail(JournalState.TARGET_DOWN, exc, "uploading")
                self._stop.wait(RETRY_MAX)
        if store is not None:
            store.close()
