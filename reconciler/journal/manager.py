"""The daemon's journals: one per replica database that backup.continuous
selects, started when the database appears, stopped when it goes or the
configuration no longer asks for it (reloads included)."""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

from reconciler.admin import ImmudbAdmin, ImmudbError
from reconciler.config.model import Config, ContinuousConfig
from reconciler.encryption import EncryptionError, Sealing
from reconciler.journal.shipper import Journal, Witnesses
from reconciler.journal.store import JournalStore, writing_sealing
from reconciler.log import event

log = logging.getLogger(__name__)

SIGN_TIMEOUT = 3.0  # seconds a segment may wait for the primary's signature


def spool_root(settings: ContinuousConfig) -> Path:
    if settings.spool_dir is not None:
        return settings.spool_dir
    return Path(tempfile.gettempdir()) / f"immudb-replicator-journal-{os.getuid()}"


class Journals:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._journals: dict[str, Journal] = {}
        self._lock = threading.Lock()
        self._replica: ImmudbAdmin | None = None
        self._primary: ImmudbAdmin | None = None   # asked for signed states
        self._key = None  # what the running journals were started with

    @property
    def settings(self) -> ContinuousConfig | None:
        return self.cfg.backup.continuous

    def _settings_key(self, cfg: Config):
        c = cfg.backup.continuous
        if c is None:
            return None
        return (c, cfg.backup.targets.get(c.target), cfg.replica, cfg.primary, cfg.backup.trust,
                cfg.reconcile.rename, cfg.backup.encryption, _digest(cfg.backup.encryption.recipients_file))

    def sync(self, cfg: Config | None = None) -> None:
        """Start and stop journals to match the configuration and the
        replica's databases (one RPC). Called after each reconcile pass and
        on reloads; a replica that does not answer changes nothing."""
        with self._lock:
            if cfg is not None:
                self.cfg = cfg
            key = self._settings_key(self.cfg)
            if key != self._key:
                self._stop_all()
                self._key = key
            settings = self.settings
            if settings is None:
                return
            if self._replica is None:
                self._replica = ImmudbAdmin.from_config("replica", self.cfg.replica)
            home = (self.cfg.reconcile.replication.primary_host, self.cfg.reconcile.replication.primary_port)
            try:
                # replicas of our primary (not a database being restored, which is a replica of nothing)
                wanted = {d.name for d in self._replica.list_databases()
                          if d.replication.replica and d.name in settings.databases
                          and (d.replication.primary_host, d.replication.primary_port) == home}
            except ImmudbError as exc:
                event(log, "journal_sync_skipped", logging.DEBUG, error=str(exc))
                return
            for name in sorted(set(self._journals) - wanted):
                self._journals.pop(name).stop()
                event(log, "journal_stopped", database=name, reason="no longer a selected replica database")
            target_cfg = self.cfg.backup.targets[settings.target]
            starting = sorted(wanted - set(self._journals))
            sealing = self._sealing() if starting else None
            if sealing is None:
                return  # nothing to start, or encryption configured and not applicable (logged): none in the clear
            for name in starting:
                journal = Journal(name, self._replica, lambda n=name: JournalStore(target_cfg, n, sealing), settings,
                                  spool_root(settings), settings.target, self._witnesses(name, target_cfg))
                self._journals[name] = journal
                journal.start()
                event(log, "journal_started", database=name, target=settings.target,
                      segment_max_seconds=settings.segment_max_seconds)

    def _sealing(self) -> Sealing | None:
        """The segments' encryption (backup.encryption's recipients, read
        now): a Sealing, one that leaves them as they are when encryption is
        off, or None (logged) when it is on and cannot be applied."""
        try:
            return writing_sealing(self.cfg.backup.encryption)
        except EncryptionError as exc:
            event(log, "journal_not_started", logging.ERROR, error=str(exc),
                  detail="backup.encryption cannot be applied: no segment is shipped in the clear")
            return None

    def _witnesses(self, database: str, target_cfg) -> Witnesses:
        """The primary's signatures (asked with a short timeout: a primary
        that does not answer must not hold segments back) and the local
        checkpoint, for the journal of `database`."""
        from dataclasses import replace

        from reconciler.trust.sources import checkpoints, public_key
        if self._primary is None:
            self._primary = ImmudbAdmin.from_config(
                "primary", replace(self.cfg.primary, timeout=min(self.cfg.primary.timeout, SIGN_TIMEOUT)))
        primary, primary_name = self._primary, self.cfg.reconcile.primary_name(database)
        return Witnesses(database, lambda tx_id: primary.signed_state(primary_name, tx_id), public_key(self.cfg),
                         checkpoints(self.cfg), target_cfg, primary_name)

    def _journal(self, database: str) -> Journal | None:
        with self._lock:
            return self._journals.get(database)

    def pause(self, database: str) -> bool:
        """A backup is about to unload `database`: its journal lets go of it
        (Journal.pause). True when it has, or when it has no journal."""
        journal = self._journal(database)
        return journal is None or journal.pause()

    def resume(self, database: str) -> None:
        """`database` was loaded again: its journal follows it again at once."""
        journal = self._journal(database)
        if journal is not None:
            journal.resume()

    def _stop_all(self) -> None:
        journals, self._journals = list(self._journals.values()), {}
        for journal in journals:
            journal.request_stop()
        for journal in journals:
            journal.stop()
        for admin in (self._replica, self._primary):
            if admin is not None:
                admin.close()
        self._replica = self._primary = None

    def stop(self) -> None:
        with self._lock:
            self._stop_all()
            self._key = None

    def statuses(self) -> list[dict]:
        with self._lock:
            journals = list(self._journals.values())
        return [j.snapshot() for j in sorted(journals, key=lambda j: j.database)]


def _digest(path) -> str | None:
    """What a recipients file holds now (a change restarts the journals, which
    then encrypt to the new recipients); None when there is none or it
    cannot be read (the journals' start says why)."""
    if path is None:
        return None
    import hashlib
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
