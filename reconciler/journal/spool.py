"""The journal's spool: closed segments waiting for the target, on local
disk, written whole and bounded (journal/shipper.py's builder puts, its
uploader takes)."""
from __future__ import annotations

import builtins
import os
import stat
import threading
from pathlib import Path

from reconciler.errors import ReplicatorError
from reconciler.journal.format import SegmentName, parse_name


class SpoolFull(ReplicatorError):
    pass


class Spool:
    """Closed segments waiting for the target: files in a 0700 folder,
    written whole (temporary name, fsync, rename) and removed once
    uploaded. Bounded by `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        for folder in (directory.parent, directory):
            _private_folder(folder)
        for stale in directory.glob(".*.partial"):
            stale.unlink(missing_ok=True)
        self._changed = threading.Condition()

    def names(self) -> list[SegmentName]:
        found = (parse_name(p.name) for p in self.directory.iterdir())
        return sorted((s for s in found if s is not None), key=lambda s: s.first_tx)

    @property
    def bytes(self) -> int:
        total = 0
        for s in self.names():
            try:
                total += (self.directory / s.name).stat().st_size
            except FileNotFoundError:
                pass
        return total

    def put(self, name: str, blob: builtins.bytes) -> None:
        """Raises SpoolFull when segments wait already and this one would
        pass the limit (an empty spool takes any one segment: a limit below
        one segment's size must not stop the journal for good)."""
        waiting = self.bytes
        if waiting and waiting + len(blob) > self.max_bytes:
            raise SpoolFull(f"spool {self.directory} holds {self.bytes} bytes (limit {self.max_bytes})")
        partial = self.directory / f".{name}.partial"
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.directory / name)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with self._changed:
            self._changed.notify_all()

    def read(self, name: str) -> builtins.bytes:
        return (self.directory / name).read_bytes()

    def remove(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)
        with self._changed:
            self._changed.notify_all()

    def wait(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)


def _private_folder(folder: Path) -> None:
    """`folder` exists as a real folder (not a link) of this user, 0700: a
    spool in a shared /tmp must not be a folder someone else prepared."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise ReplicatorError(f"spool {folder}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ReplicatorError(f"spool {folder} is not a folder of this user (a link, or another user's): "
                              f"refused; set backup.continuous.spool_dir")
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)
