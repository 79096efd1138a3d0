"""`replicator restore --to-tx/--to-time/--to-end` and `replicator list --journal`."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import tempfile
from pathlib import Path

from reconciler.commands import identities_for, load_config, size, values_prover
from reconciler.errors import ReplicatorError


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _journal_target(cfg, name: str | None):
    from reconciler.backup.locate import target_named
    if name:
        return target_named(cfg, name)
    if cfg.backup.continuous is None:
        raise ReplicatorError("name the target holding the journal with --target (backup.continuous is off)")
    return target_named(cfg, cfg.backup.continuous.target)


@contextlib.contextmanager
def _server(cfg, args: argparse.Namespace):
    """The admin client of the running server to replay into."""
    from reconciler.admin import ImmudbAdmin
    server = cfg.primary if args.server == "primary" else cfg.replica
    with ImmudbAdmin.from_config(args.server or "replica", server) as admin:
        yield admin


@contextlib.contextmanager
def _throwaway(cfg, args: argparse.Namespace, data_dir: Path, keep: frozenset[str] = frozenset()):
    """A throwaway immudb on `data_dir`; what it created for itself
    (systemdb with its random admin password, defaultdb, its identifier and
    log folder) is removed when it stops, so that the operator's immudb
    makes its own and serves the restored database; `keep`: databases
    restored there (one may be called immulog)."""
    import shutil
    from dataclasses import replace

    from reconciler.backup.drill import immudb_binary, throwaway_immudb
    from reconciler.state import SERVER_DATABASES
    drill_cfg = cfg.backup.drill
    if args.immudb_binary:
        drill_cfg = replace(drill_cfg, immudb_binary=args.immudb_binary)
    binary = immudb_binary(drill_cfg)
    if drill_cfg.scratch_dir is not None:
        drill_cfg.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    before = {p.name for p in data_dir.iterdir()}
    try:
        with tempfile.TemporaryDirectory(prefix="replicator-restore-", dir=drill_cfg.scratch_dir) as scratch:
            with throwaway_immudb(binary, Path(scratch), drill_cfg.start_timeout, data_dir) as admin:
                yield admin
    finally:
        for entry in data_dir.iterdir():
            if entry.name not in before and entry.name not in keep and \
                    entry.name in SERVER_DATABASES | {"immudb.identifier", "immulog"}:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def restore_to_point(args: argparse.Namespace) -> int:
    from reconciler.journal.bases import bases
    from reconciler.journal.replay import Point, parse_time, plan, replay
    from reconciler.journal.store import JournalStore
    from reconciler.state import is_database_name
    from reconciler.trust.sources import journal_anchors
    if args.archive:
        raise ReplicatorError("--to-tx/--to-time/--to-end replay a journal: give --database and --target, "
                              "not an archive")
    if not args.database or len(args.database) != 1:
        raise ReplicatorError("name the journal's database with one --database")
    if args.force:
        raise ReplicatorError("--force is for archives: a journal is replayed into a new or empty database")
    if args.data_dir and args.server:
        raise ReplicatorError("give --server or --data-dir, not both")
    if not args.data_dir and not args.server:
        raise ReplicatorError("give --data-dir DIR (a new folder: a throwaway immudb replays the journal there, "
                              "nothing running is touched), or name a running server to replay into with "
                              "--server replica|primary")
    database = args.database[0]
    restore_as = args.restore_as or f"{database}_restored"
    if not is_database_name(restore_as):
        raise ReplicatorError(f"--as {restore_as!r}: not a database name immudb accepts (lowercase letters, digits, _)")
    if args.to_tx is not None and args.to_tx < 1:
        raise ReplicatorError("--to-tx must be 1 or more")
    point = Point(tx=args.to_tx, time=parse_time(args.to_time) if args.to_time is not None else None)
    cfg = load_config(args, setup_logging=False)
    target_cfg = _journal_target(cfg, args.target)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is not None and (data_dir.is_symlink() or data_dir.exists() and (
            not data_dir.is_dir() or any(data_dir.iterdir()))):
        raise ReplicatorError(f"{data_dir} is not an empty folder: a journal is restored into a new one")
    from reconciler.encryption import Sealing
    bar = _Bar()
    base_verdicts: list = []
    with JournalStore(target_cfg, database, Sealing(identities=identities_for(args, cfg))) as store, journal_anchors(
            cfg, target_cfg, database, live=not args.no_live, unanchored=args.unanchored,
            allow_rollback=args.allow_rollback) as anchors:
        limits = _limits(anchors, cfg, database)
        planned = plan(store, point, bases(target_cfg, database, store.archives(), store.sealing, complete=True),
                       snapshots=data_dir is not None,
                       anchors=anchors, limits=limits)
        bar.start(planned.last - planned.first + 1, len(planned.segments))
        try:
            if data_dir is None:
                with _server(cfg, args) as admin:
                    result = replay(store, planned, admin, restore_as, progress=bar.update)
                where = f"on {admin.name}"
            else:
                with _new_folder(data_dir):
                    if planned.base is not None:
                        base_verdicts = _restore_base(cfg, target_cfg, [planned.base], data_dir, args,
                                                      store.sealing.identities)
                        if restore_as != planned.base.database:
                            (data_dir / planned.base.database).rename(data_dir / restore_as)
                    with _throwaway(cfg, args, data_dir, keep=frozenset({restore_as})) as admin:
                        result = replay(store, planned, admin, restore_as, progress=bar.update)
                where = f"in {data_dir} (start immudb with --dir {data_dir})"
        finally:
            bar.close()
    base = f"snapshot {planned.base.archive} (transaction {planned.base.tx_id}) + " if planned.base else ""
    when = f" of {_when(result.tx_time)}" if result.tx_time else ""
    print(f"restored {database} to {point.describe()} as {result.restored_as} {where}: transaction "
          f"{result.tx_id}{when}, Alh {result.alh.hex()}")
    print(f"  {base}{result.transactions} transactions from {result.segments} segments, {size(result.bytes)} "
          f"replayed in {result.seconds:.2f}s; the restored state is the proven state of transaction {result.tx_id}.")
    for verdict in result.anchors:
        print(f"  anchor {verdict.line()}")
    for verdict in base_verdicts:
        print(f"  snapshot anchor {verdict.line()}")
    return 0


def _limits(anchors, cfg, database: str):
    """The limits the original database was created with (from the live
    replica when it answers), which the restored one gets too; immudb's
    defaults otherwise."""
    from reconciler.admin import ImmudbAdmin, ImmudbError
    from reconciler.exported import DEFAULT_LIMITS, TxLimits
    if not anchors.live:
        return DEFAULT_LIMITS
    try:
        with ImmudbAdmin.from_config("replica", cfg.replica) as admin:
            found = admin.limits(database)
    except ImmudbError:
        return DEFAULT_LIMITS
    return TxLimits(found.max_key_len or DEFAULT_LIMITS.max_key_len,
                    found.max_value_len or DEFAULT_LIMITS.max_value_len,
                    found.max_tx_entries or DEFAULT_LIMITS.max_tx_entries)


@contextlib.contextmanager
def _new_folder(data_dir: Path):
    """`data_dir` made (0700) if missing; when anything fails inside,
    everything in it is removed again (and the folder, when made here): a
    half-restored folder must not pass for a restored one."""
    import shutil
    made = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        yield
    except BaseException as exc:
        try:
            if made:
                shutil.rmtree(data_dir)
            else:
                for entry in data_dir.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            exc.args = (f"{exc}; nothing was left in {data_dir}",) if exc.args else exc.args
        except OSError as cleanup:
            exc.args = (f"{exc}; {data_dir} holds a half-restored copy that could not be removed ({cleanup}): "
                        f"delete it",)
        raise


def _restore_base(cfg, target_cfg, bases: list, data_dir: Path, args: argparse.Namespace, identities,
                  beside_others: bool = False) -> list:
    """The snapshot bases' databases (all of one archive), extracted into
    `data_dir` (restore_checked). `data_dir` is empty, or with
    `beside_others` holds other databases (none of these). Its verdicts."""
    [archive] = {b.archive for b in bases}
    result = restore_checked(cfg, target_cfg, archive, data_dir, args, identities, "snapshot base ",
                             databases=[b.database for b in bases], force=beside_others)
    return list(result.vouched or [])


def restore_checked(cfg, target_cfg, archive: str, data_dir: Path, args: argparse.Namespace, identities,
                    what: str = "", **options):
    """Archive `archive` of target `target_cfg` restored into `data_dir`
    (backup.restore.restore's `options`): every file checked against the
    manifest, the manifest against the archive's anchors (as `restore
    ARCHIVE` does: whoever can write to the target could rebuild an archive
    consistently, hashes and base record included), and its values proven
    where no local checkpoint vouches for its bytes. Its RestoreResult."""
    from reconciler import targets
    from reconciler.backup.restore import restore as restore_archive
    from reconciler.signed import TrustError
    from reconciler.trust.archives import HashingReader
    from reconciler.trust.sources import vouch_for_archive
    with targets.build(target_cfg) as target, target.read(archive) as stream:
        location, reader = target.location(archive), HashingReader(stream)

        def vouch(manifest):
            try:
                return vouch_for_archive(cfg, target_cfg, archive, location, manifest, reader,
                                         live=not args.no_live, unanchored=args.unanchored)
            except TrustError as exc:
                raise TrustError(f"nothing restored: {what}{exc}") from None

        return restore_archive(reader, data_dir, vouch=vouch, identities=identities, prove=values_prover(args, cfg),
                               **options)


class _Bar:
    """A progress bar over the transactions replayed (tqdm, on a terminal only)."""

    def __init__(self):
        self.bar = None

    def start(self, transactions: int, segments: int) -> None:
        if sys.stderr.isatty() and transactions > 0:
            from tqdm import tqdm
            self.bar = tqdm(total=transactions, unit="tx", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                            desc=f"replaying ({segments} segments)")

    def update(self, tx_id: int, _size: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def list_journal(args: argparse.Namespace) -> int:
    from reconciler.backup.locate import target_named
    from reconciler.encryption import EncryptionError
    from reconciler.journal.bases import bases
    from reconciler.journal.store import JournalStore, chain_to
    from reconciler.signed import TrustError
    from reconciler.trust.sources import checkpoints
    cfg = load_config(args, setup_logging=False)
    target_cfg = target_named(cfg, args.target)
    databases = _journal_databases(target_cfg)
    if not databases:
        print(f"(no journal at {args.target})")
        return 0
    points = checkpoints(cfg)
    print(f"{'DATABASE':<24} {'TRANSACTIONS':>14} {'SEGMENTS':>9} {'SIZE':>10}  {'NEWEST TRANSACTION':<21} STATE")
    for database in databases:
        with JournalStore(target_cfg, database) as store:
            infos = {i.name: i for i in store.target.list()}
            segments, tip = store.current_tip()
            if tip is None:
                continue
            chain = chain_to(segments, tip)
            try:
                header = store.header(tip.name)
            except EncryptionError:  # listing needs no identity: the names say the rest
                header = None
            held = f"{chain.first_tx}-{chain.last_tx}"
            archives = store.archives()
            if chain.hole is None:
                state = "complete from transaction 1: any point"
            else:
                based = [b for b in bases(target_cfg, database, archives)
                         if chain.first_tx - 1 <= b.tx_id <= chain.last_tx]
                older = sorted(a for a in archives if based and _archive_time(a) < _archive_time(based[0].archive))
                state = (f"from snapshot base {based[0].archive} (transaction {based[0].tx_id}): any point since "
                         f"{_when(_archive_time(based[0].archive))}"
                         + (f", then {len(older)} archived points back to {_when(_archive_time(older[0]))}"
                            if older else "") + "; older transactions removed by retention" if based else
                         f"GAP: transactions {chain.hole[0]}-{chain.hole[1]} missing")
            try:
                mark = points.journal(target_cfg, database)
            except TrustError as exc:
                state += f"; CHECKPOINT UNREADABLE: {exc}"
                mark = None
            if mark is not None:
                if mark.tx_id > chain.last_tx:
                    state += (f"; BEHIND the local checkpoint (transaction {mark.tx_id} was written): newest "
                              f"segments missing")
                elif mark.tx_id == chain.last_tx and mark.alh.hex()[:8] != tip.last:
                    state += "; DIFFERS from the local checkpoint (its newest segment was replaced)"
                elif mark.tx_id == chain.last_tx:
                    state += "; matches the local checkpoint"
                else:
                    state += f"; local checkpoint at transaction {mark.tx_id}"
            total = sum(infos[s.name].size for s in segments if s.name in infos)
            when = _when(header.last_ts) if header is not None else "(encrypted)"
            print(f"{database:<24} {held:>14} {len(segments):>9} {size(total):>10}  {when:<21} {state}")
    return 0


def _archive_time(name: str) -> float:
    from reconciler.targets.base import ArchiveInfo, sort_key
    return sort_key(ArchiveInfo(name, 0, 0.0, ""))[0]


def _journal_databases(target_cfg) -> list[str]:
    """The databases with a journal folder at the target."""
    from reconciler import targets
    from reconciler.journal.store import journal_root
    from reconciler.state import is_database_name
    with targets.build(journal_root(target_cfg)) as target:
        return [n for n in target.folders() if is_database_name(n)]
