"""`replicator backup`, `verify`, `restore` and `list`."""
from __future__ import annotations

import argparse
import sys
import time

from reconciler.commands import identities_for, load_config, size, values_prover
from reconciler.errors import ReplicatorError


def _inline_target(args: argparse.Namespace):
    from reconciler import targets
    if not args.path:
        raise ReplicatorError("--type needs --path")
    body = {"type": args.type, "path": args.path}
    for key in ("host", "port", "username"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.password_file:
        from reconciler.secret import Secret
        body["password"] = Secret(file=args.password_file, origin="--password-file").reveal()
    if args.endpoint_url:
        body["endpoint_url"] = args.endpoint_url
    if args.known_hosts_file:
        body["known_hosts_file"] = args.known_hosts_file
    return targets.from_request(body)  # no policy: the command line is trusted


def backup(args: argparse.Namespace) -> int:
    from reconciler.backup.job import Backups
    from reconciler.backup.locate import target_named
    from reconciler.backup.progress import Progress, TerminalBar
    from reconciler.journal.bases import after_archive
    cfg = load_config(args)
    if bool(args.target) == bool(args.type):
        raise ReplicatorError("name a configured target with --target, or give one inline with --type/--path")
    target_cfg = target_named(cfg, args.target) if args.target else _inline_target(args)
    progress = Progress()
    bar = TerminalBar(progress)
    try:
        result = Backups(cfg, on_committed=after_archive).run(target_cfg, progress=progress)
    finally:
        bar.close()
    if not result.ok:
        raise ReplicatorError(f"backup to {target_cfg.name} failed: {result.error}")
    seconds = result.finished_at - result.started_at
    print(f"backup {result.backup_id}: {len(result.databases)} databases, {size(result.bytes_in)} read, "
          f"{size(result.bytes_out)} written in {seconds:.2f}s -> {result.location}")
    if result.verified_by:
        print(f"  proven on the target: {result.verified_by}")
    for name, window in sorted(result.unload_windows.items()):
        print(f"  {name}: unavailable {window:.2f}s")
    for name in result.deleted:
        print(f"  deleted by retention: {name}")
    for name, until in sorted(result.retained.items()):
        print(f"  due for retention, kept by Object Lock until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}: "
              f"{name}")
    return 0


def _optional_config(args: argparse.Namespace):
    if not args.config:
        return None
    return load_config(args, setup_logging=False)


def verify(args: argparse.Namespace) -> int:
    from reconciler.backup import archive
    from reconciler.backup.locate import archive_target, opened_archive
    from reconciler.trust.archives import HashingReader
    from reconciler.trust.sources import vouch_for_archive
    cfg = _optional_config(args)
    target_cfg, name = archive_target(cfg, args.archive, args.target)
    identities = identities_for(args, cfg)
    with opened_archive(cfg, args.archive, args.target) as (stream, location):
        reader = HashingReader(stream)
        result = archive.verify(reader, identities=identities)
        if not result.ok:
            for problem in result.problems:
                print(f"FAIL {problem}", file=sys.stderr)
            raise ReplicatorError(f"{location}: verification failed ({len(result.problems)} problems)")
        m = result.manifest
        assert m is not None  # result.ok
        verdicts = vouch_for_archive(cfg, target_cfg, name, location, m, reader,
                                     live=not args.no_live, unanchored=args.unanchored)
    print(f"{location}: OK: {len(result.files)} files, {size(sum(f.size for f in result.files.values()))}, "
          f"{result.compression}; databases: {', '.join(result.databases)}; taken {m.started_at} "
          f"from {m.replica} (immudb {m.immudb_version or '?'})")
    _print_verdicts(verdicts)
    if not any(v.anchor == "local" and v.vouched for v in verdicts):
        print("  values: not proven here (no local checkpoint of these bytes; the other anchors vouch for the "
              "states it records): `drill`, or `restore`, proves them by opening its files in immudb")
    return 0


def _print_verdicts(verdicts) -> None:
    for verdict in verdicts:
        print(f"  anchor {verdict.line()}")


def restore(args: argparse.Namespace) -> int:
    from pathlib import Path
    if args.all:
        from reconciler.commands.recovery import restore_all
        return restore_all(args)
    if args.if_empty or args.parallel is not None:
        raise ReplicatorError("--if-empty and --parallel are for --all")
    if args.to_tx is not None or args.to_time is not None or args.to_end:
        from reconciler.commands.journal import restore_to_point
        return restore_to_point(args)
    if not args.archive or not args.data_dir:
        raise ReplicatorError("restore needs an archive and --data-dir (or --to-tx/--to-time to replay a journal)")
    for flag, value in (("--as", args.restore_as), ("--server", args.server), ("--allow-rollback", args.allow_rollback)):
        if value:
            raise ReplicatorError(f"{flag} is for replaying a journal (--to-tx, --to-time, --to-end)")
    from reconciler.backup.locate import archive_target, opened_archive
    from reconciler.backup.restore import restore as restore_archive
    from reconciler.signed import TrustError
    from reconciler.trust.archives import HashingReader
    from reconciler.trust.sources import vouch_for_archive
    cfg = _optional_config(args)
    target_cfg, name = archive_target(cfg, args.archive, args.target)
    identities = identities_for(args, cfg)
    with opened_archive(cfg, args.archive, args.target) as (stream, location):
        reader = HashingReader(stream)

        def vouch(manifest):
            try:
                return vouch_for_archive(cfg, target_cfg, name, location, manifest, reader, live=not args.no_live,
                                         unanchored=args.unanchored)
            except TrustError as exc:
                raise TrustError(f"nothing restored: {exc}") from None

        result = restore_archive(reader, Path(args.data_dir), args.database, args.force, vouch=vouch,
                                 identities=identities, prove=values_prover(args, cfg))
    print(f"restored {', '.join(result.databases)} ({result.files} files, {size(result.bytes)}) from {location} "
          f"into {result.data_dir}; every file matched the manifest.")
    _print_verdicts(result.vouched or [])
    if result.added:
        print(f"  added: {', '.join(result.added)}")
    if result.replaced:
        print(f"  replaced (the previous folders are deleted): {', '.join(result.replaced)}")
    print(f"Start immudb on it with:  immudb --dir {result.data_dir}")
    print("The databases come back as ordinary, writable databases with default settings (the archive holds "
          "no systemdb). To make them replicas again, point a replicator at this server with "
          "reconcile.adopt_existing: true.")
    return 0


def _sealing(target, name: str) -> str:
    """"encrypted (age)" or "not encrypted", from the archive's first bytes."""
    from reconciler.encryption import AGE_MAGIC, is_encrypted
    from reconciler.targets import TargetError
    try:
        with target.read(name) as stream:
            head = stream.read(len(AGE_MAGIC))
    except (TargetError, OSError) as exc:
        return f"unreadable: {exc}"
    return "encrypted (age)" if is_encrypted(head) else "not encrypted"


def list_archives(args: argparse.Namespace) -> int:
    import datetime

    from reconciler import targets
    from reconciler.backup.locate import target_named
    if args.journal:
        from reconciler.commands.journal import list_journal
        return list_journal(args)
    from reconciler.backup.pins import pinned
    from reconciler.signed import TrustError
    from reconciler.trust.sources import checkpoints
    cfg = load_config(args)
    target_cfg = target_named(cfg, args.target)
    points = checkpoints(cfg)
    try:
        held = pinned(target_cfg)
    except targets.TargetError:
        held = set()
    with targets.build(target_cfg) as target:
        archives = target.list()
        for a in archives:
            when = datetime.datetime.fromtimestamp(a.modified, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            try:
                mark = points.archive(target_cfg, a.name)
                anchor = ("no local checkpoint" if mark is None else
                          "checkpoint: written here" if mark.size == a.size else
                          f"CHANGED: {a.size} bytes, {mark.size} were written")
            except TrustError as exc:
                anchor = f"CHECKPOINT UNREADABLE: {exc}"
            pin = "; PINNED" if a.name in held else ""
            print(f"{when}  {size(a.size):>10}  {a.location}  ({_sealing(target, a.name)}; {anchor}{pin})")
    if not archives:
        print(f"(no archives at {args.target})")
    present = {a.name for a in archives}
    try:
        gone = [m for m in points.archives(target_cfg) if m.archive not in present]
    except TrustError:
        gone = []
    for mark in gone:
        when = datetime.datetime.fromtimestamp(mark.written_at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"{when}  {size(mark.size):>10}  {mark.archive}  (MISSING: written here, not deleted by retention)")
    return 0


def drill(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from reconciler.backup.drill import drill_archive
    from reconciler.config.model import DrillConfig
    cfg = _optional_config(args)
    drill_cfg = cfg.backup.drill if cfg is not None else DrillConfig()
    if args.immudb_binary:
        drill_cfg = replace(drill_cfg, immudb_binary=args.immudb_binary)
    result = drill_archive(cfg, args.archive, args.target, drill_cfg, say=print, live=not args.no_live,
                           unanchored=args.unanchored, identities=identities_for(args, cfg))
    seconds = result.finished_at - result.started_at
    if not result.ok:
        for problem in result.problems or ["no database was checked"]:
            print(f"FAIL {problem}", file=sys.stderr)
        raise ReplicatorError(f"{result.location}: drill failed ({len(result.problems)} problems)")
    print(f"{result.location}: drill OK in {seconds:.1f}s: {len(result.databases)} databases restored, opened by "
          f"immudb, every transaction chained to the states recorded at backup time, and those states vouched for "
          f"by the anchors above.")
    return 0


def pin(args: argparse.Namespace) -> int:
    from reconciler.backup.locate import target_named
    from reconciler.backup.pins import pin as pin_archive
    target_cfg = target_named(load_config(args, setup_logging=False), args.target)
    done = pin_archive(target_cfg, args.archive)
    print(f"{args.archive} at {args.target}: pinned{'' if done else ' already'}; retention keeps it until "
          f"`replicator unpin`")
    return 0


def unpin(args: argparse.Namespace) -> int:
    from reconciler.backup.locate import target_named
    from reconciler.backup.pins import unpin as unpin_archive
    target_cfg = target_named(load_config(args, setup_logging=False), args.target)
    unpin_archive(target_cfg, args.archive)
    print(f"{args.archive} at {args.target}: no longer pinned; the next backup's retention may delete it")
    return 0
