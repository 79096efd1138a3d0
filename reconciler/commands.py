"""What each `replicator` subcommand does; `cli` parses, this acts."""
from __future__ import annotations

import argparse

from reconciler import config
from reconciler.cli import command


def _load(args: argparse.Namespace) -> config.Config:
    return config.load(args.config, args)


@command("validate")
def validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    targets = ", ".join(f"{t.name} ({t.kind})" for t in cfg.backup.targets.values()) or "none"
    print(f"{cfg.source}: valid; primary {cfg.primary.address}, replica {cfg.replica.address}, "
          f"follower '{cfg.follower.username}', every {cfg.reconcile.interval}s, targets: {targets}")
    return 0
