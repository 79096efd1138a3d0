"""What each `replicator` subcommand does, one module per group of commands.

`cli` parses the command line and calls `run(name, args)`, which imports only
the module that command needs: `--help` and `validate` never load gRPC, boto3
or paramiko, and a backup to a file target loads neither of the last two.
"""
from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Sequence

from reconciler.config import go_flags
from reconciler.errors import ConfigError

# command -> (module in this package, function)
HANDLERS = {
    "validate": ("validate", "validate"),
    "plan": ("reconcile", "plan"),
    "reconcile": ("reconcile", "reconcile"),
    "status": ("reconcile", "status"),
    "run": ("daemon", "run"),
    "backup": ("backups", "backup"),
    "verify": ("backups", "verify"),
    "restore": ("backups", "restore"),
    "list": ("backups", "list_archives"),
    "drill": ("backups", "drill"),
    "pin": ("backups", "pin"),
    "unpin": ("backups", "unpin"),
    "config": ("configuration", "run"),
}

CONFIG_REQUIRED = ("-c/--config FILE or $REPLICATOR_CONFIG is required (without a file, the Go tool's flags and "
                   "environment variables work too: --master-addr or MASTER_ADDRESS, ...)")


def run(name: str, args: argparse.Namespace) -> int:
    module, function = HANDLERS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)(args)


def load_config(args: argparse.Namespace, setup_logging: bool = True):
    """The configuration the command line names: `-c` (or $REPLICATOR_CONFIG),
    else the Go tool's flags and environment alone. Raises ConfigError, also
    when neither is given."""
    from reconciler import config, log
    if not args.config and not go_flags.given(args, os.environ):
        raise ConfigError(CONFIG_REQUIRED)
    cfg = config.load(args.config or None, args)
    if setup_logging:
        log.setup(cfg.logging.level, cfg.logging.format)
    return cfg


def size(n: float) -> str:
    """A byte count for people: 512 B, 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def identities_for(args: argparse.Namespace, cfg) -> Sequence | None:
    """The age identities an encrypted archive or segment is read with:
    --identity, else the configuration's backup.encryption.identity_file;
    None without either. The file is read only when an encrypted archive or
    segment needs it (encryption.IdentityFile): a plain archive restores
    without the private key."""
    from pathlib import Path

    from reconciler.encryption import IdentityFile
    given = getattr(args, "identity", None) or []
    if isinstance(given, str):
        given = [given]
    if given:
        return IdentityFile(*(Path(g) for g in given))
    path = cfg.backup.encryption.identity_file if cfg is not None else None
    return IdentityFile(path) if path is not None else None


def values_prover(args: argparse.Namespace, cfg):
    """restore()'s `prove` for this command line (backup.drill.values_prover):
    the configured drill settings, --immudb-binary and --unanchored."""
    from dataclasses import replace

    from reconciler.backup.drill import values_prover as prover
    from reconciler.config.model import DrillConfig
    drill_cfg = cfg.backup.drill if cfg is not None else DrillConfig()
    if getattr(args, "immudb_binary", None):
        drill_cfg = replace(drill_cfg, immudb_binary=args.immudb_binary)
    return prover(drill_cfg, unanchored=getattr(args, "unanchored", False))
