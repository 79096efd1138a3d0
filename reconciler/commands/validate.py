"""`replicator validate`."""
from __future__ import annotations

import argparse

from reconciler.commands import load_config


def validate(args: argparse.Namespace) -> int:
    cfg = load_config(args, setup_logging=False)
    targets = ", ".join(f"{t.name} ({t.kind})" for t in cfg.backup.targets.values()) or "none"
    print(f"{cfg.source}: valid; primary {cfg.primary.address}, replica {cfg.replica.address}, "
          f"follower '{cfg.follower.username}', every {cfg.reconcile.interval}s, targets: {targets}")
    return 0
