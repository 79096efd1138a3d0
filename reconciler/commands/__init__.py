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
    given = getattr(args, "identity", None)
    path = Path(given) if given else (cfg.backup.encryption.identity_file if cfg is not None else None)
    return IdentityFile(path) if path is not None else None


def values_prover(args: argparse.Namespace, cfg):
    """restore()'s `prove`: when no local checkpoint vouched for the
    archive's bytes (a new machine, a new state folder), the signed and live
    anchors vouch only for the states it records, and a value rewritten in
    its files (manifest recomputed) would pass them: the extracted files are
    then opened by a throwaway immudb and their whole history checked
    against those states. `--unanchored` takes the archive as it is."""
    from dataclasses import replace

    from reconciler.backup.drill import DrillError, immudb_binary, prove_history
    from reconciler.backup.restore import RestoreError
    from reconciler.config.model import DrillConfig
    drill_cfg = cfg.backup.drill if cfg is not None else DrillConfig()
    if getattr(args, "immudb_binary", None):
        drill_cfg = replace(drill_cfg, immudb_binary=args.immudb_binary)

    def prove(folder, databases, manifest, vouched) -> None:
        if getattr(args, "unanchored", False) or any(v.anchor == "local" and v.vouched for v in vouched or ()):
            return
        try:
            binary = immudb_binary(drill_cfg)
        except DrillError as exc:
            raise RestoreError(f"nothing restored: no local checkpoint vouches for this archive's bytes, and the "
                               f"signed and live anchors vouch for the states it records, not for the values in "
                               f"its files; proving those takes {exc}; or take the archive as it is with "
                               f"--unanchored") from None
        entries = [e for e in manifest.databases if e.name in databases]
        try:
            prove_history(binary, folder, entries, drill_cfg.start_timeout, drill_cfg.scratch_dir)
        except DrillError as exc:
            raise RestoreError(f"nothing restored: its files do not hold the history its anchors vouch for: "
                               f"{exc}") from None
        except OSError as exc:
            raise RestoreError(f"nothing restored: its values could not be proven: {exc.strerror or exc}: "
                               f"{exc.filename}") from None
    return prove
