"""`replicator run`: the daemon (reconciler/daemon.py)."""
from __future__ import annotations

import argparse

from reconciler.commands import load_config


def run(args: argparse.Namespace) -> int:
    from reconciler.daemon import Service
    cfg = load_config(args)
    return Service(cfg, args.config, args).run_until_signalled()
