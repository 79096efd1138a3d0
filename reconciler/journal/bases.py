"""Snapshot archives as the journal's bases, and the journal's retention.

A journal that starts at transaction 1 is a base by itself. A snapshot
archive on the journal's target is one too: its manifest records each
database's transaction id and Alh when it was copied, and replaying the
journal from the next transaction on top of it reaches any later point.
When such a backup completes, a small record per database goes next to the
segments (`journal/<database>/<tx:020d>-<alh 8 hex>.base`, naming the
archive), so that finding bases never means reading archives.

Retention follows the archives': on a target with a retention policy, a
base whose archive is gone (deleted by that policy) no longer counts, and
segments that end before the oldest remaining base are deleted, since no
base can use them. Without a retention policy, or without any snapshot
base, nothing is deleted: the journal from transaction 1 stays a base.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from reconciler import targets
from reconciler.config.model import Config, TargetConfig
from reconciler.journal.store import JournalStore, under
from reconciler.log import event
from reconciler.manifest import Manifest
from reconciler.targets import TargetError

log = logging.getLogger(__name__)

BASE_TEMPLATE = "{base}.base"
targets.register_placeholder("{base}", r"\d{20}-[0-9a-f]{8}")  # the base's transaction and a short hash


@dataclass(frozen=True)
class Base:
    database: str
    tx_id: int
    tx_hash: bytes
    archive: str          # its name at the target
    backup_id: str
    name: str             # the record's name


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
        recorded = record(target_cfg, archive, manifest)
        if target_cfg.retention is not None:  # archives are deleted: segments only their bases needed may go
            prune(target_cfg)
    except (TargetError, OSError) as exc:
        event(log, "journal_bases_failed", logging.WARNING, target=target_cfg.name, archive=archive,
              error=str(exc))
        return
    event(log, "journal_bases_recorded", target=target_cfg.name, archive=archive, databases=len(recorded))


def record(cfg: TargetConfig, archive: str, manifest: Manifest) -> list[str]:
    """Records for every database of a completed archive at target `cfg`;
    the databases recorded."""
    done = []
    for entry in manifest.databases:
        if entry.state is None:
            continue
        tx_id, tx_hash = entry.state
        name = f"{tx_id:020d}-{tx_hash.hex()[:8]}.base"
        body = json.dumps({"database": entry.name, "tx_id": tx_id, "tx_hash": tx_hash.hex(),
                           "archive": archive, "backup_id": manifest.backup_id}).encode()
        with _base_target(cfg, entry.name) as target:
            try:
                upload = target.open(name, size_hint=len(body))
            except targets.ArchiveExists:
                continue  # an archive of the same state recorded already
            try:
                upload.write(body)
                upload.commit()
            except BaseException:
                upload.abort()
                raise
        done.append(entry.name)
    return done


def bases(cfg: TargetConfig, database: str, archives: set[str]) -> list[Base]:
    """The bases of `database` at target `cfg` whose archive is among
    `archives` (the target's archives now), oldest first. Records of
    archives that are gone are deleted."""
    found = []
    with _base_target(cfg, database) as target:
        for info in target.list():
            try:
                with target.read(info.name) as stream:
                    d = json.loads(stream.read(64 * 1024))
                base = Base(d["database"], int(d["tx_id"]), bytes.fromhex(d["tx_hash"]), str(d["archive"]),
                            str(d.get("backup_id", "")), info.name)
            except (ValueError, KeyError, TypeError, TargetError, OSError):
                event(log, "journal_base_unreadable", logging.WARNING, database=database, record=info.name)
                continue
            if base.database != database or len(base.tx_hash) != 32:
                continue
            if base.archive not in archives:
                try:
                    target.delete(info.name)
                except TargetError:
                    pass
                continue
            found.append(base)
    return sorted(found, key=lambda b: (b.tx_id, b.name))


def prune(cfg: TargetConfig) -> dict[str, list[str]]:
    """Retention: per database with a journal at `cfg`, delete the segments
    that end before its oldest base whose archive is still there. The
    segments deleted, by database."""
    from reconciler.journal.store import journal_root
    from reconciler.state import is_database_name
    with targets.build(cfg) as target:
        archives = {a.name for a in target.list()}
    with targets.build(journal_root(cfg)) as root:
        databases = [n for n in root.folders() if is_database_name(n)]
    deleted: dict[str, list[str]] = {}
    for database in databases:
        kept = bases(cfg, database, archives)
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
