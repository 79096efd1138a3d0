"""Replica databases seeded from a backup (`reconcile.seed_from`).

immudb follows a primary from the next transaction after what a replica
database's files hold (docs/experiments/seeding-replicas.md): files copied
consistently at transaction N, opened as a replica of the same primary
database, replicate from N+1 and reach the primary's tip with its Alh. So a
new replica of a large database need not fetch its whole history over the
network when a recent archive holds most of it.

immudb checks nothing of the files' history against the primary's: a copy
of another history ahead of the primary sits there silently. So the
archive is checked first, as a restore checks it: its bytes against the
local checkpoint (or its values proven by opening them), and its recorded
state against the live servers, which must hold transaction N with the
same Alh (the replica does not have the database: the primary answers).
Only then are the files put under their name in the replica's data
directory, for the replica's creation to open.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

from reconciler import targets
from reconciler.config.model import Config
from reconciler.errors import ReplicatorError
from reconciler.log import event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seeded:
    database: str
    archive: str
    tx_id: int


def seed(cfg: Config, database: str) -> Seeded | None:
    """The replica database `database`'s files, from the newest archive at
    target `reconcile.seed_from` that is usable, in the replica's data
    directory; None (logged) when there is none to use: the replica then
    replicates from transaction 1, as without seeding. Never raises for a
    refused archive; leaves nothing behind when it does not seed."""
    from reconciler.backup.drill import values_prover
    from reconciler.backup.restore import restore
    from reconciler.encryption import IdentityFile
    from reconciler.signed import TrustError
    from reconciler.targets.base import sort_key
    from reconciler.trust.archives import HashingReader
    from reconciler.trust.sources import vouch_for_archive
    name = cfg.reconcile.seed_from
    if name is None:
        return None
    target_cfg = cfg.backup.targets[name]
    folder = cfg.replica.data_dir / database
    if folder.exists() or folder.is_symlink():
        event(log, "replica_not_seeded", logging.WARNING, database=database, target=name,
              reason=f"{folder} exists already: immudb would open it as it is")
        return None
    identity = cfg.backup.encryption.identity_file
    try:
        with targets.build(target_cfg) as target:
            newest = max(target.list(), key=sort_key, default=None)
            if newest is None:
                event(log, "replica_not_seeded", database=database, target=name, reason="no archive there")
                return None
            with target.read(newest.name) as stream:
                location, reader = target.location(newest.name), HashingReader(stream)

                def vouch(manifest):
                    entry = next((e for e in manifest.databases if e.name == database), None)
                    if entry is not None and entry.state is None:
                        raise ReplicatorError(f"{newest.name} recorded no state of {database} (it was unloaded "
                                              f"when backed up): nothing to check its history against")
                    verdicts = vouch_for_archive(cfg, target_cfg, newest.name, location, manifest, reader, live=True)
                    if not any(v.anchor == "live" and v.vouched for v in verdicts):
                        # any one anchor vouches for a restore; a replica must also be of the primary's history now
                        raise ReplicatorError(f"the primary does not hold {database}'s state of {newest.name} "
                                              f"(transaction {entry.tx_id if entry else '?'}): a replica seeded "
                                              f"from it would not be of the primary's history")
                    return verdicts

                result = restore(reader, cfg.replica.data_dir, [database], force=True, vouch=vouch,
                                 identities=IdentityFile(identity) if identity else None,
                                 prove=values_prover(cfg.backup.drill))
    except (ReplicatorError, TrustError, OSError) as exc:
        if folder.exists() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        event(log, "replica_not_seeded", logging.WARNING, database=database, target=name,
              reason=str(exc), detail="it replicates its whole history from the primary instead")
        return None
    assert result.manifest is not None
    entry = next(e for e in result.manifest.databases if e.name == database)
    seeded = Seeded(database, newest.name, entry.tx_id or 0)
    event(log, "replica_seeded", database=database, target=name, archive=newest.name, tx_id=seeded.tx_id,
          detail="the replica follows the primary from the next transaction")
    return seeded


def discard(cfg: Config, seeded: Seeded, replica) -> None:
    """The seeded files removed again (the replica's creation failed),
    unless the replica has the database after all (a reply lost, say)."""
    try:
        if seeded.database in {d.name for d in replica.list_databases()}:
            return
    except ReplicatorError:
        return  # cannot tell: leave the files; the next pass will not seed over an existing folder
    folder = cfg.replica.data_dir / seeded.database
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)
