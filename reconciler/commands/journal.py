"""`replicator restore --to-tx/--to-time/--to-end` and `replicator list --journal`."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import tempfile
from pathlib import Path

from reconciler.commands import load_config, size
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
def _destination(cfg, args: argparse.Namespace):
    """The admin client of the immudb to replay into."""
    from reconciler.admin import ImmudbAdmin
    if args.data_dir:
        if args.server:
            raise ReplicatorError("give --server or --data-dir, not both")
        from dataclasses import replace

        from reconciler.backup.drill import immudb_binary, throwaway_immudb
        data_dir = Path(args.data_dir)
        if (data_dir / "systemdb").exists():
            raise ReplicatorError(f"{data_dir} holds an immudb server's own data (systemdb): replay into a running "
                                  f"server with --server, or into a new folder")
        drill_cfg = cfg.backup.drill
        if args.immudb_binary:
            drill_cfg = replace(drill_cfg, immudb_binary=args.immudb_binary)
        binary = immudb_binary(drill_cfg)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="replicator-restore-", dir=drill_cfg.scratch_dir) as scratch:
            with throwaway_immudb(binary, Path(scratch), drill_cfg.start_timeout, data_dir) as admin:
                yield admin
        return
    server = cfg.primary if args.server == "primary" else cfg.replica
    with ImmudbAdmin.from_config(args.server or "replica", server) as admin:
        yield admin


def restore_to_point(args: argparse.Namespace) -> int:
    from reconciler.journal.replay import Point, parse_time, replay
    from reconciler.journal.store import JournalStore
    from reconciler.state import is_database_name
    if args.archive:
        raise ReplicatorError("--to-tx/--to-time/--to-end replay a journal: give --database and --target, "
                              "not an archive")
    if not args.database or len(args.database) != 1:
        raise ReplicatorError("name the journal's database with one --database")
    if args.force:
        raise ReplicatorError("--force is for archives: a journal is replayed into a new or empty database")
    database = args.database[0]
    restore_as = args.restore_as or f"{database}_restored"
    if not is_database_name(restore_as):
        raise ReplicatorError(f"--as {restore_as!r}: not a database name immudb accepts (lowercase letters, digits, _)")
    if args.to_tx is not None and args.to_tx < 1:
        raise ReplicatorError("--to-tx must be 1 or more")
    point = Point(tx=args.to_tx, time=parse_time(args.to_time) if args.to_time else None)
    cfg = load_config(args, setup_logging=False)
    target_cfg = _journal_target(cfg, args.target)
    bar = _Bar()
    with JournalStore(target_cfg, database) as store, _destination(cfg, args) as admin:
        try:
            result = replay(store, point, admin, restore_as, progress=bar.update, planned=bar.start)
        finally:
            bar.close()
    print(f"restored {database} to {point.describe()} as {result.restored_as} on {admin.name}: "
          f"transaction {result.tx_id} of {_when(result.tx_time)}, Alh {result.alh.hex()}")
    print(f"  {result.transactions} transactions from {result.segments} segments, {size(result.bytes)} replayed in "
          f"{result.seconds:.2f}s; its state matches the journal's record of transaction {result.tx_id}.")
    return 0


class _Bar:
    """A progress bar over the transactions replayed (tqdm, on a terminal only)."""

    def __init__(self):
        self.bar = None

    def start(self, transactions: int, segments: int) -> None:
        if sys.stderr.isatty():
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
    from reconciler.journal.store import JournalStore, chain_to, newest
    cfg = load_config(args, setup_logging=False)
    target_cfg = target_named(cfg, args.target)
    databases = _journal_databases(target_cfg)
    if not databases:
        print(f"(no journal at {args.target})")
        return 0
    print(f"{'DATABASE':<24} {'TRANSACTIONS':>14} {'SEGMENTS':>9} {'SIZE':>10}  {'NEWEST TRANSACTION':<21} STATE")
    for database in databases:
        with JournalStore(target_cfg, database) as store:
            infos = {i.name: i for i in store.target.list()}
            segments = store.segments()
            tip = newest(segments)
            if tip is None:
                continue
            chain = chain_to(segments, tip)
            header = store.header(tip.name)
            held = f"{chain.first_tx}-{chain.last_tx}"
            state = "complete from transaction 1" if chain.hole is None else \
                f"GAP: transactions {chain.hole[0]}-{chain.hole[1]} missing"
            total = sum(infos[s.name].size for s in segments if s.name in infos)
            print(f"{database:<24} {held:>14} {len(segments):>9} {size(total):>10}  {_when(header.last_ts):<21} "
                  f"{state}")
    return 0


def _journal_databases(target_cfg) -> list[str]:
    """The databases with a journal folder at the target."""
    from reconciler.backup import targets
    from reconciler.journal.store import journal_root
    from reconciler.state import is_database_name
    with targets.build(journal_root(target_cfg)) as target:
        return [n for n in target.folders() if is_database_name(n)]
