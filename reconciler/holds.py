"""Databases a backup holds, which reconcile passes must leave alone.

Within a process: `Holds`, the set of databases a backup is copying (the
backup holds and releases them; the planner treats them as busy). Across
processes: one backup at a time, by an exclusive flock on the replica's data
directory itself (reading it is all a backup needs, and immudb ignores
locks): a `replicator backup` from a shell and the daemon never unload the
same databases at once, and a pass in any process can tell that a backup
runs and leave unloaded databases alone. Both the reconciler and the backup
job depend on this module, not on each other.
"""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Protocol


class Holder(Protocol):
    def hold(self, database: str) -> None: ...

    def release(self, database: str) -> None: ...


class Holds:
    """Databases held by a backup in this process (thread-safe)."""

    def __init__(self):
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, database: str) -> None:
        with self._lock:
            self._held.add(database)

    def release(self, database: str) -> None:
        with self._lock:
            self._held.discard(database)

    @property
    def busy(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)


class BackupLock:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False if another holds it."""
        fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def backup_running(data_dir: Path) -> bool:
    """True while some process (this one included) holds the backup lock.
    False when the data directory cannot be opened from here."""
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
