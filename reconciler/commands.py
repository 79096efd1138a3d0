"""What each `replicator` subcommand does; `cli` parses, this acts."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from reconciler import config, log
from reconciler.cli import command
from reconciler.errors import ReplicatorError
from reconciler.plan import Plan
from reconciler.reconcile import DONE, Reconciler


def _load(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config, args)
    log.setup(cfg.logging.level, cfg.logging.format)
    return cfg


@command("validate")
def validate(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, args)
    targets = ", ".join(f"{t.name} ({t.kind})" for t in cfg.backup.targets.values()) or "none"
    print(f"{cfg.source}: valid; primary {cfg.primary.address}, replica {cfg.replica.address}, "
          f"follower '{cfg.follower.username}', every {cfg.reconcile.interval}s, targets: {targets}")
    return 0


def _summary(the_plan: Plan) -> str:
    kinds = Counter(a.description[0] for a in the_plan.actions)
    text = f"Plan: {kinds['+']} to add, {kinds['~']} to change, {kinds['-']} to remove"
    if the_plan.findings:
        text += f"; {len(the_plan.findings)} to look at"
    return text + "."


@command("plan")
def plan_command(args: argparse.Namespace) -> int:
    cfg = _load(args)
    reconciler = Reconciler.from_config(cfg)
    try:
        observed, the_plan = reconciler.plan()
    finally:
        reconciler.close()
    print(f"primary {cfg.primary.address}: {len(observed.primary)} databases; "
          f"replica {cfg.replica.address}: {len(observed.replica)} databases")
    for line in the_plan.lines():
        print(line)
    if the_plan.in_sync:
        print(f"In sync: {len(the_plan.databases)} replica databases, nothing to change.")
        return 0
    print(_summary(the_plan))
    return 2


@command("reconcile")
def reconcile_command(args: argparse.Namespace) -> int:
    cfg = _load(args)
    reconciler = Reconciler.from_config(cfg)
    try:
        while True:
            result = reconciler.run_pass()
            if result.error:
                raise ReplicatorError(f"pass failed: {result.error}")
            for outcome in result.outcomes:
                print(outcome.line())
            for finding in result.plan.findings:
                print(finding.description)
            done = sum(1 for o in result.outcomes if o.result == DONE)
            print(f"Pass: {done} changed, {len(result.failed)} failed, "
                  f"{len(result.outcomes) - done - len(result.failed)} skipped or deferred; "
                  f"{len(result.plan.databases)} replica databases.")
            if result.plan.waiting:
                print(f"Next batch of {min(len(result.plan.waiting), cfg.reconcile.max_new_replicas)} "
                      f"in {cfg.reconcile.batch_interval}s.", flush=True)
                time.sleep(cfg.reconcile.batch_interval)
                continue
            if args.once:
                return 0 if result.ok else 1
            time.sleep(cfg.reconcile.interval)
    finally:
        reconciler.close()


@command("status")
def status_command(args: argparse.Namespace) -> int:
    cfg = _load(args)
    reconciler = Reconciler.from_config(cfg)
    try:
        _, the_plan = reconciler.plan()
        lagging = [d for d in the_plan.databases if d.lag]
        progress: dict[str, bool | None] = {d.name: (True if d.lag == 0 else None) for d in the_plan.databases}
        if lagging:  # a second look tells whether lagging replicas move
            time.sleep(1.0)
            now = {d.name: d.tx_count for d in reconciler.replica.list_databases()}
            for d in lagging:
                progress[d.name] = now.get(d.name, 0) > (d.replica_tx or 0)
    finally:
        reconciler.close()
    findings = {f.database: f.description for f in the_plan.findings}
    pending = {a.database: a.description for a in the_plan.actions if a.database}
    rows = []
    for d in the_plan.databases:
        rows.append({"database": d.name, "primary_database": d.primary_database, "state": d.state,
                     "primary_tx": d.primary_tx, "replica_tx": d.replica_tx, "lag": d.lag,
                     "progressing": progress.get(d.name), "note": findings.get(d.name) or pending.get(d.name)})
    if args.json:
        json.dump({"primary": cfg.primary.address, "replica": cfg.replica.address, "databases": rows},
                  sys.stdout, indent=2)
        print()
    else:
        _print_table(rows)
    return 0 if all(r["state"] == "in_sync" for r in rows) else 2


def _print_table(rows: list[dict]) -> None:
    def cell(v):
        return "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))
    header = ["DATABASE", "PRIMARY DB", "STATE", "PRIMARY TX", "REPLICA TX", "LAG", "MOVING", "NOTE"]
    keys = ["database", "primary_database", "state", "primary_tx", "replica_tx", "lag", "progressing", "note"]
    table = [header] + [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    if not rows:
        print("(no replica databases)")


@command("run")
def run_command(args: argparse.Namespace) -> int:
    from reconciler.daemon import Service
    cfg = _load(args)
    return Service(cfg, args.config, args).run_until_signalled()


# --------------------------------------------------------------------------- backups

def _inline_target(args: argparse.Namespace):
    from reconciler.backup import targets
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
    if args.type == "sftp" and not (args.host and args.username):
        raise ReplicatorError("an sftp target needs --host and --username")
    return targets.from_request(body)


@command("backup")
def backup_command(args: argparse.Namespace) -> int:
    from reconciler.backup.job import Backups
    from reconciler.backup.locate import target_named
    from reconciler.backup.progress import Progress, TerminalBar
    cfg = _load(args)
    if bool(args.target) == bool(args.type):
        raise ReplicatorError("name a configured target with --target, or give one inline with --type/--path")
    target_cfg = target_named(cfg, args.target) if args.target else _inline_target(args)
    progress = Progress()
    bar = TerminalBar(progress)
    try:
        result = Backups(cfg).run(target_cfg, progress=progress)
    finally:
        bar.close()
    if not result.ok:
        raise ReplicatorError(f"backup to {target_cfg.name} failed: {result.error}")
    seconds = result.finished_at - result.started_at
    print(f"backup {result.backup_id}: {len(result.databases)} databases, {_size(result.bytes_in)} read, "
          f"{_size(result.bytes_out)} written in {seconds:.1f}s -> {result.location}")
    for name, window in sorted(result.unload_windows.items()):
        print(f"  {name}: unavailable {window:.2f}s")
    for name in result.deleted:
        print(f"  deleted by retention: {name}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _optional_config(args: argparse.Namespace):
    if not args.config:
        return None
    return config.load(args.config, None)


@command("verify")
def verify_command(args: argparse.Namespace) -> int:
    from reconciler.backup import archive
    from reconciler.backup.locate import opened_archive
    with opened_archive(_optional_config(args), args.archive, args.target) as (stream, location):
        result = archive.verify(stream)
    if not result.ok:
        for problem in result.problems:
            print(f"FAIL {problem}", file=sys.stderr)
        raise ReplicatorError(f"{location}: verification failed ({len(result.problems)} problems)")
    m = result.manifest
    print(f"{location}: OK: {len(result.files)} files, {_size(sum(f.size for f in result.files.values()))}, "
          f"{result.compression}; databases: {', '.join(result.databases)}; taken {m.get('started_at')} "
          f"from {m.get('replica')} (immudb {m.get('immudb_version') or '?'})")
    return 0


@command("restore")
def restore_command(args: argparse.Namespace) -> int:
    from pathlib import Path
    from reconciler.backup.locate import opened_archive
    from reconciler.backup.restore import restore
    with opened_archive(_optional_config(args), args.archive, args.target) as (stream, location):
        result = restore(stream, Path(args.data_dir), args.database, args.force)
    print(f"restored {', '.join(result.databases)} ({result.files} files, {_size(result.bytes)}) from {location} "
          f"into {result.data_dir}; every file matched the manifest.")
    print(f"Start immudb on it with:  immudb --dir {result.data_dir}")
    print("The databases come back as ordinary, writable databases with default settings (the archive holds "
          "no systemdb). To make them replicas again, point a replicator at this server with "
          "reconcile.adopt_existing: true.")
    return 0


@command("list")
def list_command(args: argparse.Namespace) -> int:
    import datetime
    from reconciler.backup import targets
    from reconciler.backup.locate import target_named
    cfg = _load(args)
    with targets.build(target_named(cfg, args.target)) as target:
        archives = target.list()
    for a in archives:
        when = datetime.datetime.fromtimestamp(a.modified, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"{when}  {_size(a.size):>10}  {a.location}")
    if not archives:
        print(f"(no archives at {args.target})")
    return 0
