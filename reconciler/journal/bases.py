"""Snapshot archives as the journal's bases, and the journal's retention.

A journal that starts at transaction 1 is a base by itself. A snapshot
archive on the journal's target is one too: its manifest records each
database's transaction id and Alh when it was copied, and replaying the
journal from the next transaction on top of it reaches any later point.
When such a backup completes, a small record per database goes next to the
segments, so that finding bases never means reading archives:
`journal/<database>/<tx:020d>-<alh 8 hex>-<archive 16 hex>.base`, whose body
(JSON: the database, the whole Alh, the archive's name and backup id) is
encrypted like the segments when `backup.encryption` is set. Its name holds
what the journal itself needs (the transaction, a short hash the replica
confirms, and the first 16 hex of the SHA-256 of the archive's name), so
the daemon, which holds no identity, never reads a body; a restore reads
them, decrypted with its identity. Records of earlier versions
(`<tx>-<alh 8 hex>.base`, clear) are read by their body.

Retention follows the archives': on a target with a retention policy, a
base whose archive is gone (deleted by that policy) no longer counts, and
segments that end before the oldest remaining base are deleted, since no
base can use them. Without a retention policy, or without any snapshot
base, nothing is deleted: the journal from transaction 1 stays a base.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from reconciler import targets
from reconciler.config.model import Config, TargetConfig
from reconciler.encryption import EncryptionError, Sealing
from reconciler.journal.store import JournalStore, under, writing_sealing
from reconciler.log import event
from reconciler.manifest import Manifest
from reconciler.targets import TargetError

log = logging.getLogger(__name__)

BASE_TEMPLATE = "{base}.base"
# the base's transaction, a short hash of its Alh and (since records may be encrypted) of its archive's name
targets.register_placeholder("{base}", r"\d{20}-[0-9a-f]{8}(?:-[0-9a-f]{16})?")
_NAME = re.compile(r"(\d{20})-([0-9a-f]{8})(?:-([0-9a-f]{16}))?\.base")
_BODY_MAX = 64 * 1024


@dataclass(frozen=True)
class Base:
    database: str
    tx_id: int
    tx_hash: bytes        # its Alh; only the first 4 bytes when read from the record's name (`complete`: all 32)
    archive: str          # its name at the target
    backup_id: str
    name: str             # the record's name

    @property
    def complete(self) -> bool:
        return len(self.tx_hash) == 32

    def confirmed_by(self, alh: bytes) -> bool:
        """Whether `alh` (the replica's, of transaction tx_id) is this base's."""
        return len(alh) == 32 and alh.startswith(self.tx_hash)


def record_name(tx_id: int, tx_hash: bytes, archive: str) -> str:
    return f"{tx_id:020d}-{tx_hash.hex()[:8]}-{archive_digest(archive)}.base"


def archive_digest(archive: str) -> str:
    return hashlib.sha256(archive.encode()).hexdigest()[:16]


def _base_target(cfg: TargetConfig, database: str):
    return targets.build(under(cfg, f"journal/{database}/{BASE_TEMPLATE}"))


def after_archive(cfg: Config, target_cfg: TargetConfig, archive: str, manifest: Manifest) -> None:
    """Backups' archive-committed hook: an archive at the journal's own
    target is a base of the journal: record it, then let the journal's
    retention drop what no base needs. A failure here leaves the archive as
    good as it is: logged, not raised."""
    continuous = cfg.backup.continuous
    if continuous is None or continuous.target != target_cfg.name:
        return
    try:
        journaled = [e.name for e in manifest.databases if e.name in continuous.databases]
        recorded = record(target_cfg, archive, manifest, writing_sealing(cfg.backup.encryption), journaled)
        if target_cfg.retention is not None:  # archives are deleted: segments only their bases needed may go
            prune(target_cfg, _written_here(cfg, target_cfg))
    except (TargetError, OSError, EncryptionError) as exc:  # EncryptionError: no record in the clear either
        event(log, "journal_bases_failed", logging.WARNING, target=target_cfg.name, archive=archive,
              error=str(exc))
        return
    event(log, "journal_bases_recorded", target=target_cfg.name, archive=archive, databases=len(recorded))


def record(cfg: TargetConfig, archive: str, manifest: Manifest, sealing: Sealing | None = None,
           databases: list[str] | None = None) -> list[str]:
    """Records for every database of a completed archive at target `cfg`
    (or those of `databases`: the journaled ones), their bodies encrypted
    to `sealing`'s recipients; the databases recorded."""
    sealing = sealing or Sealing()
    done = []
    for entry in manifest.databases:
        if entry.state is None or databases is not None and entry.name not in databases:
            continue
        tx_id, tx_hash = entry.state
        name = record_name(tx_id, tx_hash, archive)
        body = sealing.seal(json.dumps({"database": entry.name, "tx_id": tx_id, "tx_hash": tx_hash.hex(),
                                        "archive": archive, "backup_id": manifest.backup_id}).encode())
        with _base_target(cfg, entry.name) as target:
            if not targets.put_new(target, name, body):
                continue  # recorded already (the hook ran again for this archive)
        done.append(entry.name)
    return done


def bases(cfg: TargetConfig, database: str, archives: set[str], sealing: Sealing | None = None,
          complete: bool = False) -> list[Base]:
    """The bases of `database` at target `cfg` whose archive is among
    `archives` (the target's archives now), oldest first. Records of
    archives that are gone are deleted.

    A record's name says enough for the journal (transaction, short Alh,
    archive); `complete` reads every body instead (whole Alh, for a
    replay), decrypted with `sealing`'s identities: a record that cannot be
    read then is left out (logged), and an encrypted one without any
    identity raises EncryptionError (the restore needs --identity)."""
    sealing = sealing or Sealing()
    by_digest = {archive_digest(a): a for a in archives}
    found = []
    with _base_target(cfg, database) as target:
        for info in target.list():
            named = _NAME.fullmatch(info.name)
            if named is None:
                continue
            tx_id, short, digest = int(named[1]), bytes.fromhex(named[2]), named[3]
            if digest is not None and digest not in by_digest:
                _forget(target, info.name)  # its archive is gone
                continue
            if digest is not None and not complete:
                found.append(Base(database, tx_id, short, by_digest[digest], "", info.name))
                continue
            base = _read(target, info.name, database, sealing)
            if base is None:
                continue
            if base.tx_id != tx_id or not base.tx_hash.startswith(short) or (
                    digest is not None and archive_digest(base.archive) != digest):
                event(log, "journal_base_unreadable", logging.WARNING, database=database, record=info.name,
                      reason="its body does not match its name")
                continue
            if base.archive not in archives:
                _forget(target, info.name)
                continue
            found.append(base)
    return sorted(found, key=lambda b: (b.tx_id, b.name))


def _read(target, name: str, database: str, sealing: Sealing) -> Base | None:
    """Record `name`'s body as a Base of `database`, or None (logged)."""
    try:
        with target.read(name) as raw, sealing.opened(raw, f"base record {name}") as stream:
            d = json.loads(stream.read(_BODY_MAX))
        base = Base(d["database"], int(d["tx_id"]), bytes.fromhex(d["tx_hash"]), str(d["archive"]),
                    str(d.get("backup_id", "")), name)
    except EncryptionError as exc:
        if not sealing.identities:  # a restore without any identity: say so, not "no base" further on
            raise
        event(log, "journal_base_unreadable", logging.WARNING, database=database, record=name, reason=str(exc))
        return None
    except (ValueError, KeyError, TypeError, TargetError, OSError) as exc:
        event(log, "journal_base_unreadable", logging.WARNING, database=database, record=name,
              reason=type(exc).__name__)
        return None
    if base.database != database or not base.complete:
        return None
    return base


def _forget(target, name: str) -> None:
    try:
        target.delete(name)
    except TargetError:  # Retained (Object Lock) among them: it goes at a later prune
        pass


def _written_here(cfg: Config, target_cfg: TargetConfig) -> Callable[[Base], bool]:
    """Whether a base is one this replicator wrote: its archive's local
    checkpoint records the database at that transaction and Alh. A record's
    name is anyone's word (whoever can write the target); segments are
    deleted only on the strength of bases this checks."""
    from reconciler.signed import TrustError
    from reconciler.trust.sources import checkpoints
    points = checkpoints(cfg)

    def vouched(base: Base) -> bool:
        try:
            mark = points.archive(target_cfg, base.archive)
        except (TrustError, OSError):
            return False
        state = mark.databases.get(base.database) if mark is not None else None
        return state is not None and state[0] == base.tx_id and base.confirmed_by(state[1])
    return vouched


def prune(cfg: TargetConfig, vouched: Callable[[Base], bool]) -> dict[str, list[str]]:
    """Retention: per database with a journal at `cfg`, delete the segments
    that end before its oldest base whose archive is still there and that
    `vouched` (the local checkpoint: _written_here) confirms. The segments
    deleted, by database."""
    from reconciler.journal.store import journal_root
    from reconciler.state import is_database_name
    with targets.build(cfg) as target:
        archives = {a.name for a in target.list()}
    with targets.build(journal_root(cfg)) as root:
        databases = [n for n in root.folders() if is_database_name(n)]
    deleted: dict[str, list[str]] = {}
    for database in databases:
        kept = [b for b in bases(cfg, database, archives) if vouched(b)]
        if not kept:
            continue
        oldest = kept[0].tx_id
        with JournalStore(cfg, database) as store:
            for segment in store.segments():
                if segment.last_tx <= oldest:
                    try:
                        store.delete(segment.name)
                    except targets.Retained as exc:  # S3 Object Lock: kept until its date, deleted by a later prune
                        event(log, "segment_retained", database=database, target=cfg.name, segment=segment.name,
                              until=exc.until)
                        continue
                    deleted.setdefault(database, []).append(segment.name)
        if database in deleted:
            event(log, "journal_retention", database=database, target=cfg.name, deleted=len(deleted[database]),
                  oldest_base_tx=oldest, archive=kept[0].archive)
    return deleted
