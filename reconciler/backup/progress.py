"""Progress of one backup, shared by the worker, a terminal bar and the API."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    backup_id: str = ""
    target: str = ""
    started_at: float = field(default_factory=time.time)
    databases_total: int = 0
    databases_done: int = 0
    current_database: str | None = None
    phase: str = "starting"            # starting | copying | archiving | uploading | retention | done
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_written: int = 0             # compressed, to the target
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _listeners: list = field(default_factory=list, repr=False)

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n
        for listener in self._listeners:
            listener(self)

    def update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)
        for listener in self._listeners:
            listener(self)

    def listen(self, listener) -> None:
        self._listeners.append(listener)

    @property
    def rate(self) -> float:
        """Bytes of database files per second since the start."""
        elapsed = time.time() - self.started_at
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "backup_id": self.backup_id, "target": self.target, "started_at": self.started_at,
                "databases_total": self.databases_total, "databases_done": self.databases_done,
                "current_database": self.current_database, "phase": self.phase,
                "bytes_total": self.bytes_total, "bytes_done": self.bytes_done,
                "bytes_written": self.bytes_written, "rate_bytes_per_second": round(self.rate, 1),
            }


class TerminalBar:
    """A progress bar on a terminal (tqdm); nothing when stderr is not one."""

    def __init__(self, progress: Progress, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        if not self.stream.isatty():
            return
        from tqdm import tqdm
        self.bar = tqdm(total=progress.bytes_total or None, unit="B", unit_scale=True, unit_divisor=1024,
                        file=self.stream, dynamic_ncols=True, mininterval=0.5, leave=True)
        self._last = 0
        progress.listen(self._update)

    def _update(self, p: Progress) -> None:
        if self.bar is None:
            return
        if p.bytes_total and self.bar.total != p.bytes_total:
            self.bar.total = p.bytes_total
        delta = p.bytes_done - self._last
        self._last = p.bytes_done
        self.bar.set_description_str(f"{p.phase} {p.current_database or ''} "
                                     f"[{p.databases_done}/{p.databases_total}]", refresh=False)
        self.bar.update(delta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
