"""`replicator run`: the long-running process.

One process: the reconcile loop and the scheduled backups in an APScheduler
BackgroundScheduler (one instance of each job at a time, missed runs
coalesced), the HTTP API in its own thread (waitress), and the main thread
waiting for signals:
- SIGHUP, or a change of the config file's content (its hash is polled, as a
  Kubernetes ConfigMap update swaps a symlink that mtime and inotify miss):
  reload. An invalid new config is refused and the old one stays in force.
- SIGTERM/SIGINT: stop accepting requests, stop the scheduler, cancel a
  running backup at a safe point (databases loaded, partial output removed)
  within `daemon.shutdown_grace`, exit 0.
Under systemd (Type=notify) it sends READY=1 once the API listens, and
WATCHDOG=1 from the main loop while the scheduler is alive.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from reconciler import config as config_module
from reconciler import targets as target_kinds
from reconciler.admin import AlreadyLoaded, ImmudbError
from reconciler.backup.job import BackupAlreadyRunning, BackupResult, Backups
from reconciler.config.model import Config, TargetConfig
from reconciler.errors import ConfigError
from reconciler.journal.bases import after_archive
from reconciler.journal.manager import Journals
from reconciler.log import event
from reconciler.notify import Notifier
from reconciler.reconcile import Reconciler
from reconciler.status import (
    BackupStatus,
    BackupSummary,
    ConfigStatus,
    DatabaseStatus,
    PassStatus,
    ServiceStats,
    ServiceStatus,
    TargetInfo,
)

if TYPE_CHECKING:
    from reconciler.api import ApiServer

log = logging.getLogger(__name__)

JOURNAL_SYNC = 30  # seconds


class Service:
    def __init__(self, cfg: Config, config_path: str | None = None, args: argparse.Namespace | None = None,
                 notifier: Notifier | None = None):
        self.cfg = cfg
        self.config_path, self.args = config_path, args
        self.config_hash = _file_hash(config_path)
        self.config_loaded_at = time.time()
        self.last_reload_error: str | None = None
        self.reconciler = Reconciler.from_config(cfg)
        self.journals = Journals(cfg)
        self.backups = Backups(cfg, holder=_BackupHolds(self.reconciler, self.journals), on_committed=after_archive)
        self.notifier = notifier or Notifier()
        self.scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults={
            "coalesce": True, "max_instances": 1,
            # a pass that could not start on time runs as soon as possible rather than being dropped
            "misfire_grace_time": None,
        })
        self.api: ApiServer | None = None
        self.stopping = threading.Event()
        self._recovered = False  # leftovers of a killed backup removed (first reconcile job)
        self._reload_requested = threading.Event()
        self._state_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.stats = ServiceStats()
        for name in cfg.backup.targets:  # every configured target's counters exist from the start
            self.stats.target(name)
        self.drills: dict = {}  # target -> the last drill's result (DrillResult)

    # ------------------------------------------------------------------ jobs

    def _reconcile_job(self) -> None:
        if not self._recovered:
            # before the first pass: that pass loads what a killed backup left unloaded, and it
            # would leave them alone while recovery holds the backup lock
            self._recovered = True
            try:
                self.backups.recover()
            except Exception as exc:  # noqa: BLE001 - never keeps the daemon from reconciling
                event(log, "recovery_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        try:
            result = self.reconciler.run_pass()
        except Exception as exc:  # noqa: BLE001 - a pass must never kill the scheduler thread
            if self.reconciler.closed:  # stopping: its connections were closed under it
                event(log, "pass_interrupted", reason="stopping")
                return
            event(log, "pass_crashed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            with self._state_lock:
                self.stats.record_pass(ok=False)
            return
        with self._state_lock:
            self.stats.record_pass(result.ok, result.started, result.finished, [o.result for o in result.outcomes])
        self._sync_journals()
        if result.plan and result.plan.waiting:
            # replica databases wait to be created in batches: the next batch soon, not after `interval`
            self.scheduler.add_job(self._reconcile_job, "date", id="reconcile-batch", name="reconcile (next batch)",
                                   replace_existing=True, misfire_grace_time=None,
                                   run_date=datetime.now(timezone.utc) + timedelta(
                                       seconds=self.reconciler.next_pass_in(result)))

    def _sync_journals(self, cfg: Config | None = None) -> None:
        """Journals for the replica databases backup.continuous selects (new
        replicas appear with passes)."""
        try:
            self.journals.sync(cfg)
        except Exception as exc:  # noqa: BLE001 - never keeps the daemon from reconciling
            event(log, "journal_sync_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")

    def _scheduled_backup(self, target_name: str) -> None:
        target_cfg = self.cfg.backup.targets.get(target_name)
        if target_cfg is None:
            return  # removed by a reload; its job goes with the next reschedule
        try:
            self.backups.run(target_cfg)
            self._backup_done(self.backups.history[-1])
        except BackupAlreadyRunning as exc:
            now = time.time()
            skipped = BackupResult("skipped-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                                   target_name, now, now, ok=False, error=f"skipped: {exc}")
            self.backups.record(skipped)
            self._backup_done(skipped)
            event(log, "scheduled_backup_skipped", logging.WARNING, target=target_name, reason=str(exc))

    def _scheduled_drill(self, target_name: str) -> None:
        """Restore the target's newest archive into a throwaway immudb and
        check it; the verdict goes to /status, /metrics and the log."""
        from reconciler.backup.drill import DrillResult, drill_archive
        from reconciler.errors import ReplicatorError
        if target_name not in self.cfg.backup.targets:
            return  # removed by a reload
        event(log, "drill_started", target=target_name)
        try:
            result = drill_archive(self.cfg, target_name=target_name)
        except Exception as exc:  # noqa: BLE001 - a drill that cannot run is a failed drill, recorded
            result = DrillResult(f"target {target_name}", time.time(), time.time())
            result.problems.append(str(exc) if isinstance(exc, ReplicatorError) else f"internal error "
                                   f"({type(exc).__name__}): {exc}")
        with self._state_lock:
            self.drills[target_name] = result
            self.stats.record_drill(target_name, result.ok, result.finished_at)
        if result.ok:
            event(log, "drill_done", target=target_name, archive=result.location, databases=len(result.databases),
                  seconds=round(result.finished_at - result.started_at, 1))
        else:
            event(log, "drill_failed", logging.ERROR, target=target_name, archive=result.location,
                  error="; ".join(result.problems[:3]) or "no database checked")

    def _backup_done(self, result: BackupResult) -> None:
        with self._state_lock:
            self.stats.record_backup(result.target, result.ok, result.started_at, result.finished_at,
                                     result.bytes_in, result.bytes_out)

    def start_backup(self, target_cfg: TargetConfig, source: str = "api") -> str:
        """Start a backup in the background; its id. Raises BackupAlreadyRunning."""
        backup_id = self.backups.start(target_cfg, on_done=self._backup_done)
        event(log, "backup_started", backup=backup_id, target=target_cfg.name, source=source)
        return backup_id

    def _check_config(self) -> None:
        """Scheduler job; SIGHUP is handled by the main loop."""
        if self.config_path and _file_hash(self.config_path) != self.config_hash:
            self.reload("file changed")

    # ------------------------------------------------------------------ scheduling

    def _schedule(self) -> None:
        self.scheduler.add_job(self._reconcile_job, "interval", seconds=self.cfg.reconcile.interval,
                               id="reconcile", name="reconcile", replace_existing=True,
                               next_run_time=datetime.now(timezone.utc))
        self.scheduler.add_job(self._check_config, "interval", seconds=self.cfg.daemon.config_check_interval,
                               id="config", name="config", replace_existing=True)
        # journals also follow replica databases between passes (a replica server that was down at start,
        # databases created by hand): one list call every JOURNAL_SYNC seconds while continuous backup is on
        if self.cfg.backup.continuous is not None:
            self.scheduler.add_job(self._sync_journals, "interval", seconds=JOURNAL_SYNC, id="journals",
                                   name="journals", replace_existing=True)
        elif self.scheduler.get_job("journals"):
            self.scheduler.remove_job("journals")
        for job in self.scheduler.get_jobs():
            if job.id.startswith(("backup:", "drill:")):
                job.remove()
        for i, schedule in enumerate(self.cfg.backup.schedules):
            work, what = ((self._scheduled_drill, "drill of") if schedule.action == "drill"
                          else (self._scheduled_backup, "backup to"))
            self.scheduler.add_job(
                work, CronTrigger.from_crontab(schedule.cron, timezone=schedule.timezone or None),
                args=[schedule.target], id=f"{schedule.action}:{i}:{schedule.target}",
                name=f"{what} {schedule.target}",
                misfire_grace_time=self.cfg.daemon.backup_misfire_grace, replace_existing=True)

    def reload(self, reason: str) -> bool:
        """Load the config again; keep the old one if the new one is invalid.
        Called from the scheduler (file changed) and the main thread (SIGHUP)."""
        with self._reload_lock:
            return self._reload(reason)

    def _reload(self, reason: str) -> bool:
        new_hash = _file_hash(self.config_path)
        try:
            new = config_module.load(self.config_path, self.args)
            problems = target_kinds.settings_problems(new.backup.targets)  # as at the start: object_lock, say
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            self.config_hash = new_hash  # do not retry the same broken content every few seconds
            self.last_reload_error = "; ".join(exc.problems)
            with self._state_lock:
                self.stats.reloads_failed += 1
            event(log, "config_rejected", logging.ERROR, reason=reason, error=self.last_reload_error,
                  note="the previous configuration stays in force")
            return False
        self.config_hash, self.last_reload_error = new_hash, None
        with self._state_lock:
            self.stats.reloads_ok += 1
            for name in new.backup.targets:
                self.stats.target(name)
        if new.digest == self.cfg.digest:
            return True
        old = self.cfg
        if (new.primary, new.replica) != (old.primary, old.replica):
            stale = (self.reconciler.primary, self.reconciler.replica)
            fresh = Reconciler.from_config(new)
            self.reconciler.primary, self.reconciler.replica = fresh.primary, fresh.replica
            for admin in stale:
                admin.close()
        if new.replica != old.replica:
            from reconciler.admin import ImmudbAdmin
            self.backups.replica = ImmudbAdmin.from_config("replica", new.replica)
        self.cfg = self.reconciler.cfg = self.backups.cfg = new
        self.config_loaded_at = time.time()
        if new.api.listen != old.api.listen:
            event(log, "config_needs_restart", logging.WARNING, key="api.listen", note="takes effect on restart")
        self._schedule()
        self._sync_journals(new)
        event(log, "config_reloaded", reason=reason, digest=new.digest[:12])
        return True

    # ------------------------------------------------------------------ state for the API

    def backup_status(self) -> dict:
        p = self.backups.progress
        last = next((r for r in reversed(self.backups.history)), None)
        return BackupStatus.of(p.snapshot() if p else {}, self.backups.running, _result_summary(last)).as_dict()

    def status(self) -> dict:
        last = self.reconciler.last_result
        return ServiceStatus(
            config=ConfigStatus(self.cfg.source, self.cfg.digest, self.config_loaded_at, self.last_reload_error),
            primary=self.cfg.primary.address, replica=self.cfg.replica.address,
            last_pass=None if last is None else PassStatus(last.started, last.finished, last.ok, last.error),
            databases=self.databases(), backup_running=self.backups.running,
            drills={target: r.as_dict() for target, r in sorted(self.drills.items())},
            journal=self.journal_statuses(), targets=self.targets()).as_dict()

    def targets(self) -> dict[str, TargetInfo]:
        """Every configured target: its kind and whether its archives are encrypted."""
        encrypted = self.cfg.backup.encryption.enabled
        return {name: TargetInfo(t.kind, encrypted, (t.options.get("object_lock") or {}).get("mode"))
                for name, t in self.cfg.backup.targets.items()}

    def journal_statuses(self) -> list[dict]:
        """Continuous backup, per database (empty when it is off)."""
        return self.journals.statuses()

    def backup_history(self) -> list[dict]:
        """Recent backups, newest first."""
        return [r.as_dict() for r in reversed(self.backups.history)]

    def databases(self) -> list[DatabaseStatus]:
        """Every replica database as the last pass left it."""
        return self.reconciler.statuses()

    @property
    def backup_running(self) -> bool:
        return self.backups.running

    def liveness_problems(self) -> list[str]:
        problems = []
        if not self.scheduler.running:
            problems.append("scheduler stopped")
        if self.api is not None and not self.api.alive():
            problems.append("API thread stopped")
        return problems

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._state_folder()
        problems = target_kinds.settings_problems(self.cfg.backup.targets)  # e.g. object_lock on a bucket without it
        if problems:
            raise ConfigError(problems)
        self._schedule()
        self.scheduler.start()
        if self.cfg.api.enabled:
            from reconciler.api import ApiServer
            self.api = ApiServer(self)
            self.api.start()
            if self.cfg.api.token is None:
                event(log, "api_without_token", logging.WARNING, listen=self.api.address,
                      note="anyone who can reach it may start backups: set api.token")
        event(log, "started", config=self.cfg.source, primary=self.cfg.primary.address,
              replica=self.cfg.replica.address, interval=self.cfg.reconcile.interval,
              api=self.api.address if self.api else "off", schedules=len(self.cfg.backup.schedules))
        self.notifier.ready(f"following {self.cfg.primary.address}")

    def _state_folder(self) -> None:
        """The local checkpoints' folder exists and is this process's (0700),
        or the daemon does not start: backups it could not anchor would be
        taken silently weaker (backup.trust.state_dir)."""
        from reconciler.trust.checkpoints import ensure_folder
        ensure_folder(self.cfg.backup.trust.state_folder)

    def stop(self) -> None:
        self.notifier.stopping()
        if self.api is not None:
            self.api.stop()
        self.scheduler.shutdown(wait=False)
        if self.backups.running:
            event(log, "backup_cancelling", grace=self.cfg.daemon.shutdown_grace)
            self.backups.cancel.set()
            deadline = time.monotonic() + self.cfg.daemon.shutdown_grace
            while self.backups.running and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.backups.running:
                # stuck (a frozen target): load what it holds ourselves rather than leave it unavailable
                held = sorted(self.reconciler.busy)
                event(log, "backup_still_running", logging.ERROR, holding=",".join(held) or None,
                      note="loading its databases and exiting")
                for name in held:
                    try:
                        self.reconciler.replica.load(name)
                    except AlreadyLoaded:
                        pass
                    except ImmudbError as exc:
                        event(log, "load_failed", logging.ERROR, database=name, error=str(exc),
                              note="the next reconcile pass loads it")
        self.journals.stop()
        self.reconciler.close(wait=min(5.0, self.cfg.daemon.shutdown_grace))
        event(log, "stopped")

    def run_until_signalled(self) -> int:
        def on_stop(signum, _frame):
            event(log, "signal", name=signal.Signals(signum).name)
            self.stopping.set()

        def on_hup(_signum, _frame):
            self._reload_requested.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        self.start()
        next_ping = 0.0
        try:
            while not self.stopping.wait(0.5):
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self.reload("SIGHUP")
                if self.notifier.watchdog_seconds and time.monotonic() >= next_ping and not self.liveness_problems():
                    self.notifier.watchdog()
                    next_ping = time.monotonic() + self.notifier.watchdog_seconds / 3
        finally:
            self.stop()
        return 0


class _BackupHolds:
    """What a backup holds: passes leave the database alone (the
    reconciler's holds) and its journal lets go of it before it is
    unloaded (Journal.pause: immudb defers the close of a database in use);
    when released (loaded again) its journal follows again at once."""

    def __init__(self, reconciler: Reconciler, journals: Journals):
        self.reconciler, self.journals = reconciler, journals

    def hold(self, database: str) -> None:
        self.reconciler.hold(database)
        if not self.journals.pause(database):
            event(log, "journal_not_paused", logging.WARNING, database=database,
                  note="its journal did not let go of the database in time: immudb closes it when the journal's "
                       "call returns")

    def release(self, database: str) -> None:
        self.reconciler.release(database)
        self.journals.resume(database)


def _file_hash(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # follows the ConfigMap's symlinks
    except OSError:
        return None


def _result_summary(r: BackupResult | None) -> BackupSummary | None:
    if r is None:
        return None
    return BackupSummary(id=r.backup_id, target=r.target, result="ok" if r.ok else "error", error=r.error,
                         started_at=r.started_at, finished_at=r.finished_at, location=r.location,
                         databases=r.databases, bytes_in=r.bytes_in, bytes_out=r.bytes_out)
