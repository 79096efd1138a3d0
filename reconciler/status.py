"""What the tool reports, as typed records, built in one place: the command
line (`status`, `status --json`), the HTTP API (`GET /status`) and the
Prometheus metrics render these same objects, with the same field names.

Pure: no I/O, nothing imported from the rest of the program but plain values.
"""
from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class Word(str, enum.Enum):  # noqa: UP042 - enum.StrEnum is 3.11+, and requires-python is >=3.10
    """A word of the tool's vocabulary: compares, prints, formats and
    serialises as its plain string (what logs, JSON and metrics carry), yet
    is a closed set that the type checker and tests can see whole."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

class JournalState(Word):
    """Where one database's journal is (journal/shipper.py sets it; /status,
    /metrics and the OpenAPI file list exactly these)."""

    STARTING = "starting"
    SHIPPING = "shipping"
    SPOOL_FULL = "spool_full"        # the spool is full: the journal has stopped taking transactions
    TARGET_DOWN = "target_down"      # uploads fail; the spool holds what is not shipped
    NEEDS_BASE = "needs_base"        # the replica's history is truncated: a snapshot backup to the target must follow
    ERROR = "error"
    STOPPED = "stopped"


# per replica database, as `status` shows them
IN_SYNC, MISSING, DRIFT, UNLOADED, CONFLICT, ORPHAN, BUSY, ERROR = (
    "in_sync", "missing", "drift", "unloaded", "conflict", "orphan", "busy", "error")
STATES = (IN_SYNC, MISSING, DRIFT, UNLOADED, CONFLICT, ORPHAN, BUSY, ERROR)


@dataclass(frozen=True)
class DatabaseStatus:
    """One replica database: what the plan saw, and what the daemon learnt
    over passes (its last error, whether it moves)."""

    name: str                          # on the replica
    primary_database: str | None       # None for an orphan
    state: str
    primary_tx: int | None = None
    replica_tx: int | None = None
    progressing: bool | None = None    # while it lags: its transaction count moved (see moved())
    note: str | None = None            # what the plan would do, or what an operator must know
    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0

    @property
    def lag(self) -> int | None:
        """Primary transactions not yet on the replica."""
        if self.primary_tx is None or self.replica_tx is None:
            return None
        return max(0, self.primary_tx - self.replica_tx)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "lag": self.lag}

    def with_(self, **changes: Any) -> DatabaseStatus:
        return dataclasses.replace(self, **changes)


def moved(before_tx: int | None, now_tx: int | None) -> bool | None:
    """Whether a lagging replica's transaction count moved between two looks
    (`status`: a second apart; the daemon: one pass apart). None when either
    look is missing. Only asked of replicas that lag: one in sync has
    nothing to move towards."""
    if before_tx is None or now_tx is None:
        return None
    return now_tx > before_tx


@dataclass
class TargetStats:
    """What happened at one backup target since the process started."""

    last_success_at: float | None = None
    last_duration: float = 0.0
    backup_failures: int = 0           # failed or skipped backups
    bytes_read: int = 0                # database bytes archived
    bytes_written: int = 0             # archive bytes written
    last_size: int = 0                 # the last successful archive's bytes
    drill_success_at: float | None = None
    drill_failures: int = 0


@dataclass
class ServiceStats:
    """Counters of the daemon, read by the API and the metrics."""

    passes: int = 0
    pass_failures: int = 0
    last_pass_seconds: float = 0.0
    last_pass_at: float = 0.0
    reloads_ok: int = 0
    reloads_failed: int = 0
    actions: dict[str, int] = field(default_factory=dict)   # result (done, failed, ...) -> count
    targets: dict[str, TargetStats] = field(default_factory=dict)

    def target(self, name: str) -> TargetStats:
        return self.targets.setdefault(name, TargetStats())

    def record_pass(self, ok: bool, started: float | None = None, finished: float | None = None,
                    action_results: Iterable[str] = ()) -> None:
        """A pass ended (`started`/`finished` unknown when it crashed), with
        the result of each action it took."""
        for result in action_results:
            self.actions[result] = self.actions.get(result, 0) + 1
        self.passes += 1
        self.pass_failures += 0 if ok else 1
        if started is not None and finished is not None:
            self.last_pass_seconds, self.last_pass_at = finished - started, finished

    def record_backup(self, target: str, ok: bool, started: float, finished: float, bytes_read: int,
                      bytes_written: int) -> None:
        stats = self.target(target)
        if ok:
            stats.last_duration, stats.last_success_at = finished - started, finished
            stats.bytes_read += bytes_read
            stats.bytes_written += bytes_written
            stats.last_size = bytes_written
        else:
            stats.backup_failures += 1

    def record_drill(self, target: str, ok: bool, finished: float) -> None:
        stats = self.target(target)
        if ok:
            stats.drill_success_at = finished
        else:
            stats.drill_failures += 1


@dataclass
class JournalStatus:
    """What /status, /metrics and `replicator list` show for one database."""

    database: str
    target: str
    state: JournalState = JournalState.STARTING
    shipped_tx: int = 0         # the last transaction on the target
    exported_tx: int = 0        # the last transaction taken from the replica (spooled or shipped)
    replica_tx: int = 0         # the replica's last committed transaction, as last seen
    lag_seconds: float = 0.0
    last_upload_at: float | None = None
    shipped_bytes: int = 0      # compressed bytes uploaded since start
    shipped_transactions: int = 0
    shipped_segments: int = 0
    spool_bytes: int = 0
    gaps_filled: int = 0
    diverged: int = 0
    error: str | None = None
    since: float = field(default_factory=time.time)

    @property
    def lag_transactions(self) -> int:
        return max(0, self.replica_tx - self.shipped_tx)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["lag_transactions"] = self.lag_transactions
        d["lag_seconds"] = round(self.lag_seconds, 3)
        return d


# ---------------------------------------------------------------------- the daemon's answers

@dataclass(frozen=True)
class BackupSummary:
    """The last backup, as /backup/status shows it."""

    id: str
    target: str
    result: str                        # ok | error
    error: str | None
    started_at: float
    finished_at: float | None
    location: str | None
    databases: list[str]
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class BackupStatus:
    """`GET /backup/status`: the Go tool's fields first (its clients decode
    `progress` as an integer percent of databases), then ours."""

    running: bool
    progress: int
    progress_bytes: float
    backup_id: str | None
    target: str | None
    started_at: float | None
    phase: str | None
    current_database: str | None
    databases_done: int
    databases_total: int
    bytes_done: int
    bytes_total: int
    bytes_written: int
    rate_bytes_per_second: float
    last_result: BackupSummary | None

    @classmethod
    def of(cls, progress: dict, running: bool, last: BackupSummary | None) -> BackupStatus:
        """From a progress snapshot (backup/progress.py; empty before the
        first backup) and the last result."""
        total, done = progress.get("databases_total") or 0, progress.get("databases_done") or 0
        bytes_total = progress.get("bytes_total") or 0
        return cls(
            running=running,
            progress=(100 * done // total) if total else (100 if last and not running else 0),
            progress_bytes=round(min(1.0, (progress.get("bytes_done") or 0) / bytes_total), 4) if bytes_total else 0.0,
            backup_id=progress.get("backup_id") if running else (last.id if last else None),
            target=progress.get("target"), started_at=progress.get("started_at"), phase=progress.get("phase"),
            current_database=progress.get("current_database"), databases_done=done, databases_total=total,
            bytes_done=progress.get("bytes_done", 0), bytes_total=bytes_total,
            bytes_written=progress.get("bytes_written", 0),
            rate_bytes_per_second=progress.get("rate_bytes_per_second", 0.0), last_result=last)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ConfigStatus:
    source: str | None
    digest: str
    loaded_at: float | None
    last_reload_error: str | None


@dataclass(frozen=True)
class PassStatus:
    """The last reconcile pass."""

    started_at: float
    finished_at: float | None
    ok: bool
    error: str | None


@dataclass(frozen=True)
class TargetInfo:
    """A configured backup target, as /status and /metrics show it."""

    kind: str
    encrypted: bool                    # its archives are encrypted (backup.encryption)
    object_lock: str | None = None     # GOVERNANCE or COMPLIANCE: S3 Object Lock on what it stores; None: off


@dataclass(frozen=True)
class ServiceStatus:
    """`GET /status`: the configuration in force, the last pass, every
    replica database, the last drill per target and the journals."""

    config: ConfigStatus
    primary: str
    replica: str
    last_pass: PassStatus | None
    databases: list[DatabaseStatus]
    backup_running: bool
    drills: dict[str, dict]            # per target, backup/drill.py's DrillResult.as_dict()
    journal: list[dict]                # per database, JournalStatus.as_dict() (journal/shipper.py)
    targets: dict[str, TargetInfo] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "primary": self.primary, "replica": self.replica,
                "last_pass": None if self.last_pass is None else dataclasses.asdict(self.last_pass),
                "databases": [d.as_dict() for d in self.databases], "backup_running": self.backup_running,
                "drills": self.drills, "journal": self.journal,
                "targets": {name: dataclasses.asdict(t) for name, t in sorted(self.targets.items())}}
