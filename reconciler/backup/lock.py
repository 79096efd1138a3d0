"""One backup at a time across processes: an exclusive flock on the
replica's data directory itself (reading it is all a backup needs, and
immudb ignores locks). A `replicator backup` from a shell and the daemon
thus never unload the same databases at once, and a reconcile pass in any
process can tell that a backup is running and leave unloaded databases alone.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


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
