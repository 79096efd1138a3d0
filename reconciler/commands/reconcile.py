"""`replicator plan`, `reconcile` and `status`: one look at both servers,
what a pass would do, and passes run now."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from reconciler.commands import load_config
from reconciler.errors import ReplicatorError
from reconciler.plan import Plan
from reconciler.reconcile import DONE, Reconciler
from reconciler.status import IN_SYNC, DatabaseStatus, moved


def _summary(the_plan: Plan) -> str:
    changes = Counter(a.change for a in the_plan.actions)
    text = f"Plan: {changes['add']} to add, {changes['change']} to change, {changes['remove']} to remove"
    if the_plan.findings:
        text += f"; {len(the_plan.findings)} to look at"
    return text + "."


def plan(args: argparse.Namespace) -> int:
    cfg = load_config(args)
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


def reconcile(args: argparse.Namespace) -> int:
    cfg = load_config(args)
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
                      f"in {reconciler.next_pass_in(result)}s.", flush=True)
            elif args.once:
                return 0 if result.ok else 1
            time.sleep(reconciler.next_pass_in(result))
    finally:
        reconciler.close()


def status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    reconciler = Reconciler.from_config(cfg)
    try:
        _, the_plan = reconciler.plan()
        lagging = [d for d in the_plan.databases if d.lag]
        moving: dict[str, bool | None] = {}
        if lagging:  # a second look, a second later, tells whether lagging replicas move
            time.sleep(1.0)
            now = {d.name: d.tx_count for d in reconciler.replica.list_databases()}
            moving = {d.name: moved(d.replica_tx, now.get(d.name)) for d in lagging}
    finally:
        reconciler.close()
    databases = [d.with_(progressing=moving.get(d.name)) for d in the_plan.databases]
    if args.json:
        json.dump({"primary": cfg.primary.address, "replica": cfg.replica.address,
                   "databases": [d.as_dict() for d in databases]}, sys.stdout, indent=2)
        print()
    else:
        _print_table(databases)
    return 0 if all(d.state == IN_SYNC for d in databases) else 2


def _print_table(databases: list[DatabaseStatus]) -> None:
    def cell(v):
        return "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))
    header = ["DATABASE", "PRIMARY DB", "STATE", "PRIMARY TX", "REPLICA TX", "LAG", "MOVING", "NOTE"]
    table = [header] + [[cell(v) for v in (d.name, d.primary_database, d.state, d.primary_tx, d.replica_tx, d.lag,
                                            d.progressing, d.note)] for d in databases]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if not databases:
        print("(no replica databases)")
