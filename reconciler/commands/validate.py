"""`replicator validate`."""
from __future__ import annotations

import argparse

from reconciler.commands import load_config


def validate(args: argparse.Namespace) -> int:
    from reconciler import targets as target_kinds
    from reconciler.errors import ConfigError
    cfg = load_config(args, setup_logging=False)
    problems = target_kinds.settings_problems(cfg.backup.targets)
    if problems:
        raise ConfigError(problems)
    targets = ", ".join(f"{t.name} ({t.kind})" for t in cfg.backup.targets.values()) or "none"
    print(f"{cfg.source}: valid; primary {cfg.primary.address}, replica {cfg.replica.address}, "
          f"follower '{cfg.follower.username}', every {cfg.reconcile.interval}s, targets: {targets}")
    return 0
