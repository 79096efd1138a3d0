"""What the tool reports, as typed records, built in one place: the command
line (`status`, `status --json`), the HTTP API (`GET /status`) and the
Prometheus metrics render these same objects, with the same field names.

Pure: no I/O, nothing imported from the rest of the program but plain values.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
