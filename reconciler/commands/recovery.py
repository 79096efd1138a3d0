"""`replicator restore --all`: every database a target's journal holds,
restored into one new data directory to one point (a time, or the end).

For each database: the newest snapshot base at or before the point (its
archive checked against its anchors, extracted once for every database it
holds), then its journal, replayed by one throwaway immudb on the folder,
databases in parallel (bounded). A database that fails leaves nothing in
the folder; the others go on. Exit 0 only when every database reached its
point. `--if-empty` makes it an init container's step: nothing happens when
the folder already holds databases."""
from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.commands import identities_for, load_config
from reconciler.errors import ReplicatorError

# what a fresh volume may hold and still be empty: ext4's lost+found (a Kubernetes volume has one)
_VOLUME_ENTRIES = frozenset({"lost+found"})
MAX_PARALLEL = 4
# in the folder while a restore runs: a folder that holds it was left by a restore that did not finish (killed,
# evicted, out of memory), and is restored again rather than taken for a restored server (--if-empty)
MARKER = ".replicator-restore-incomplete"


@dataclass
class Outcome:
    """What became of one database."""

    database: str
    planned: object | None = None           # its ReplayPlan
    result: object | None = None            # its ReplayResult, once replayed
    error: str | None = None
    base_verdicts: list = field(default_factory=list)
    archived: tuple[int, bytes, str, str] | None = None  # no journal: (tx, Alh, taken at, archive) restored

    @property
    def ok(self) -> bool:
        return self.error is None and (self.result is not None or self.archived is not None)

    def row(self) -> tuple[str, str, str, str]:
        """(tx, time, Alh, anchors and source) for the closing table."""
        from reconciler.journal.replay import _iso
        anchors = ", ".join(sorted({v.anchor for v in (*getattr(self.result, "anchors", ()), *self.base_verdicts)
                                    if v.vouched})) or "UNANCHORED"
        if self.archived is not None:
            tx, alh, taken, archive = self.archived
            return str(tx), taken, alh.hex()[:16], f"{anchors}; archive {archive} (no journal: its point)"
        r = self.result
        base = getattr(self.planned, "base", None)
        return (str(r.tx_id), _iso(r.tx_time) if r.tx_time else "-", r.alh.hex()[:16],  # type: ignore[union-attr]
                anchors + (f"; base {base.archive}" if base else ""))


def held_entries(data_dir: Path) -> list[str]:
    """What `data_dir` holds that a fresh volume does not."""
    if not data_dir.is_dir():
        return []
    return sorted(e.name for e in data_dir.iterdir() if e.name not in _VOLUME_ENTRIES)


def restore_all(args: argparse.Namespace) -> int:
    from reconciler.commands.journal import _journal_databases, _journal_target
    from reconciler.journal.replay import Point, parse_time
    from reconciler.state import SERVER_DATABASES, is_database_name
    for flag, value in (("an archive", args.archive), ("--to-tx", args.to_tx), ("--as", args.restore_as),
                        ("--server", args.server), ("--force", args.force)):
        if value:
            raise ReplicatorError(f"--all restores every database into a new --data-dir: not with {flag}")
    if not args.data_dir:
        raise ReplicatorError("--all needs --data-dir DIR: a new folder (or an empty volume) for every database")
    if args.to_time is None and not args.to_end:
        raise ReplicatorError("--all needs the point: --to-time TIME or --to-end")
    parallel = MAX_PARALLEL if args.parallel is None else args.parallel
    if parallel < 1:
        raise ReplicatorError("--parallel must be 1 or more")
    data_dir = Path(args.data_dir)
    if data_dir.is_symlink() or data_dir.exists() and not data_dir.is_dir():
        raise ReplicatorError(f"{data_dir} is not a folder")
    held = held_entries(data_dir)
    if MARKER in held:
        if not args.if_empty:
            raise ReplicatorError(f"{data_dir} holds what a restore that did not finish left ({MARKER}): empty it, "
                                  f"or run with --if-empty, which restores it again")
        print(f"{data_dir}: an earlier restore did not finish ({MARKER}): restoring again")
        _empty(data_dir, made=False)
        held = []
    if held and args.if_empty:
        print(f"{data_dir} holds {', '.join(held[:5])}{' ...' if len(held) > 5 else ''} already: nothing restored "
              f"(--if-empty)")
        return 0
    if held:
        raise ReplicatorError(f"{data_dir} is not empty (it holds {', '.join(held[:5])}): --all restores into a new "
                              f"folder; add --if-empty to leave a folder that holds databases as it is")
    point = Point(time=parse_time(args.to_time) if args.to_time is not None else None)
    named = list(dict.fromkeys(args.database or []))
    odd = [n for n in named if not is_database_name(n)]
    if odd:
        raise ReplicatorError(f"--database {odd[0]!r}: not a database name immudb accepts (lowercase letters, digits, "
                              f"_; an unset shell variable?)")
    cfg = load_config(args, setup_logging=False)
    target_cfg = _journal_target(cfg, args.target)
    journaled = [d for d in _journal_databases(target_cfg) if _has_segments(target_cfg, d)]
    newest = _newest_archive(target_cfg, point)
    if not journaled and newest is None and args.if_empty:  # a new deployment: no backup yet, immudb starts empty
        print(f"no journal or archive at target {target_cfg.name}: nothing restored, {data_dir} stays empty "
              f"(--if-empty)")
        return 0
    wanted = [d for d in named if d in journaled] if named else list(journaled)
    archived_only = [d for d in named if d not in journaled] if named else None  # None: whatever the archive holds
    if archived_only and newest is None:
        raise ReplicatorError(f"no journal or archive of {', '.join(archived_only)} at target {target_cfg.name} "
                              f"(its journals: {', '.join(journaled) or 'none'}; no archive "
                              f"{'at or before that time' if point.time is not None else 'there'})")
    skipped = sorted(set(wanted) & SERVER_DATABASES | set(archived_only or ()) & SERVER_DATABASES)
    wanted = [d for d in wanted if d not in SERVER_DATABASES]
    if archived_only is not None:
        archived_only = [d for d in archived_only if d not in SERVER_DATABASES]
    if not wanted and newest is None or not wanted and archived_only == []:
        raise ReplicatorError(f"nothing to restore: target {target_cfg.name} holds no journal or archive of a "
                              f"database but {', '.join(skipped) or 'none'}")
    identities = identities_for(args, cfg)
    started = time.monotonic()
    outcomes = [Outcome(d) for d in wanted]
    made = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("a restore --all is running or did not finish: this folder is not restored\n")
    try:
        _plan_all(cfg, target_cfg, outcomes, point, args, identities)
        _restore_bases(cfg, target_cfg, outcomes, data_dir, args, identities)
        if newest is not None and archived_only != []:
            outcomes += _restore_archived(cfg, target_cfg, newest.name, archived_only, data_dir, args, identities,
                                          exclude=set(journaled) | SERVER_DATABASES)
        _replay_all(cfg, target_cfg, outcomes, data_dir, args, identities, parallel)
    except BaseException:
        _empty(data_dir, made)
        raise
    for outcome in outcomes:
        if not outcome.ok:
            _remove(data_dir / outcome.database)
    if not outcomes:
        raise ReplicatorError(f"nothing to restore: the newest archive at target {target_cfg.name} holds no database "
                              f"without a journal, and there is no journal")
    if not any(o.ok for o in outcomes) and made:
        _empty(data_dir, made)
    if data_dir.exists():
        (data_dir / MARKER).unlink(missing_ok=True)  # finished: what is there is what the table says
    _report(outcomes, skipped, point, data_dir, time.monotonic() - started)
    return 0 if all(o.ok for o in outcomes) else 1


def _has_segments(target_cfg, database: str) -> bool:
    """Whether the journal folder of `database` holds a segment (a folder
    with base records only, or emptied by retention, is no journal)."""
    from reconciler.journal.store import JournalStore
    with JournalStore(target_cfg, database) as store:
        return bool(store.segments())


def _plan_all(cfg, target_cfg, outcomes: list[Outcome], point, args, identities) -> None:
    """Each database's plan to the point: base and segments, proven
    against the journal's anchors. A database whose plan fails is marked."""
    from reconciler.commands.journal import _limits
    from reconciler.encryption import Sealing
    from reconciler.journal.bases import bases
    from reconciler.journal.replay import plan
    from reconciler.journal.store import JournalStore
    from reconciler.trust.sources import journal_anchors
    for outcome in outcomes:
        try:
            with JournalStore(target_cfg, outcome.database, Sealing(identities=identities)) as store, \
                    journal_anchors(cfg, target_cfg, outcome.database, live=not args.no_live,
                                    unanchored=args.unanchored, allow_rollback=args.allow_rollback) as anchors:
                outcome.planned = plan(store, point, bases(target_cfg, outcome.database, store.archives(),
                                                           store.sealing, complete=True),
                                       snapshots=True, anchors=anchors, limits=_limits(anchors, cfg, outcome.database))
        except ReplicatorError as exc:
            outcome.error = str(exc)


def _newest_archive(target_cfg, point):
    """The target's newest archive (written at or before the point's time)."""
    from reconciler import targets
    from reconciler.targets.base import sort_key
    with targets.build(target_cfg) as target:
        archives = [a for a in target.list() if point.time is None or sort_key(a)[0] <= point.time]
    return max(archives, key=sort_key, default=None)


def _restore_archived(cfg, target_cfg, archive: str, names: list[str] | None, data_dir: Path, args, identities,
                      exclude: set[str]) -> list[Outcome]:
    """The databases without a journal, from archive `archive` as it holds
    them (`names`, or every one not in `exclude`), checked against its
    anchors: their point is the archive's."""
    from reconciler.commands.journal import restore_checked
    try:
        result = restore_checked(cfg, target_cfg, archive, data_dir, args, identities, databases=names, force=True,
                                 exclude=sorted(exclude))
    except ReplicatorError as exc:
        return [Outcome(name, error=str(exc)) for name in (names or [f"(archive {archive})"])]
    assert result.manifest is not None
    states = {e.name: e for e in result.manifest.databases}
    outcomes = []
    for name in result.databases:
        entry = states[name]
        outcome = Outcome(name, base_verdicts=list(result.vouched or []))
        outcome.archived = (entry.tx_id or 0, entry.tx_hash or b"", result.manifest.started_at, archive)
        outcomes.append(outcome)
    return outcomes


def _restore_bases(cfg, target_cfg, outcomes: list[Outcome], data_dir: Path, args, identities) -> None:
    """Every snapshot base extracted, each archive read once for all the
    databases it is the base of, checked against its anchors."""
    from reconciler.commands.journal import _restore_base
    by_archive: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        base = getattr(outcome.planned, "base", None)
        if outcome.error is None and base is not None:
            by_archive.setdefault(base.archive, []).append(outcome)
    for _archive, group in sorted(by_archive.items()):
        bases = [o.planned.base for o in group]  # type: ignore[attr-defined]
        try:
            verdicts = _restore_base(cfg, target_cfg, bases, data_dir, args, identities, beside_others=True)
        except ReplicatorError as exc:
            for outcome in group:
                outcome.error = str(exc)
                _remove(data_dir / outcome.database)
            continue
        for outcome in group:
            outcome.base_verdicts = verdicts


def _replay_all(cfg, target_cfg, outcomes: list[Outcome], data_dir: Path, args, identities, parallel: int) -> None:
    """One throwaway immudb on the folder; every planned journal replayed
    into it, `--parallel` at a time."""
    from reconciler.commands.journal import _throwaway
    from reconciler.encryption import Sealing
    from reconciler.journal.replay import replay
    from reconciler.journal.store import JournalStore
    todo = [o for o in outcomes if o.error is None and o.planned is not None]
    if not todo:
        return
    bar = _Bar(sum(o.planned.last - o.planned.first + 1 for o in todo), len(todo))  # type: ignore[attr-defined]

    def one(outcome: Outcome) -> None:
        try:
            with JournalStore(target_cfg, outcome.database, Sealing(identities=identities)) as store:
                outcome.result = replay(store, outcome.planned, admin, outcome.database,  # type: ignore[arg-type]
                                        progress=bar.update)
        except ReplicatorError as exc:
            outcome.error = str(exc)
        finally:
            bar.database_done()

    try:
        with _throwaway(cfg, args, data_dir, keep=frozenset(o.database for o in outcomes)) as admin:
            with ThreadPoolExecutor(max_workers=min(parallel, len(todo)),
                                    thread_name_prefix="restore") as pool:
                list(pool.map(one, todo))
    finally:
        bar.close()


def _report(outcomes: list[Outcome], skipped: list[str], point, data_dir: Path, seconds: float) -> None:
    rows = [(o.database, *(o.row() if o.ok else ("-", "-", "-", f"FAILED: {o.error}"))) for o in outcomes]
    rows += [(name, "-", "-", "-", f"skipped: immudb makes its own {name}; restore its journal with --database "
                                   f"{name} --as NAME") for name in skipped]
    width = max(len("DATABASE"), *(len(r[0]) for r in rows))
    print(f"{'DATABASE':<{width}}  {'TX':>10}  {'TIME':<20}  {'ALH':<16}  ANCHORS / ERROR")
    for name, tx, when, alh, rest in rows:
        print(f"{name:<{width}}  {tx:>10}  {when:<20}  {alh:<16}  {rest}")
    done = [o for o in outcomes if o.ok]
    print(f"{len(done)} of {len(outcomes)} databases restored to {point.describe()} in {data_dir} in {seconds:.1f}s"
          + (f"; start immudb with --dir {data_dir}" if done else ""))
    if len(done) != len(outcomes):
        print(f"NOT every database reached its point: {', '.join(o.database for o in outcomes if not o.ok)} failed "
              f"(nothing of them was left in {data_dir})", file=sys.stderr)


def _remove(path: Path) -> None:
    from reconciler.state import is_database_name
    if is_database_name(path.name) and path.is_dir() and not path.is_symlink():  # a database's folder, nothing else
        shutil.rmtree(path, ignore_errors=True)


def _empty(data_dir: Path, made: bool) -> None:
    """`data_dir` as it was: removed when made here, else emptied (a volume's
    own entries kept)."""
    if made:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for entry in data_dir.iterdir():
        if entry.name in _VOLUME_ENTRIES:
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


class _Bar:
    """One progress bar over every database's transactions (tqdm, on a
    terminal only); updated from the replaying threads."""

    def __init__(self, transactions: int, databases: int):
        self.bar = None
        self.lock = threading.Lock()
        self.databases, self.done = databases, 0
        if sys.stderr.isatty() and transactions > 0:
            from tqdm import tqdm
            self.bar = tqdm(total=transactions, unit="tx", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                            desc=f"replaying [0/{databases} databases]")

    def update(self, tx_id: int, _size: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(1)

    def database_done(self) -> None:
        with self.lock:
            self.done += 1
            if self.bar is not None:
                self.bar.set_description_str(f"replaying [{self.done}/{self.databases} databases]", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


