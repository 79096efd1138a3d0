"""A local (or mounted) directory.

Writes `.NAME.partial` beside the final name, fsyncs it, then links it to
NAME (a link fails if NAME exists: an archive is never overwritten, even by
a racing writer) and fsyncs the directory, so a crash leaves either the whole
archive or none.
"""
from __future__ import annotations

import builtins
import errno
import os
import threading
from pathlib import Path
from typing import BinaryIO
from urllib.parse import ParseResult

from reconciler.paths import inside
from reconciler.targets.base import (
    PARTIAL_SUFFIX,
    ArchiveExists,
    ArchiveInfo,
    InlinePolicy,
    RequestRefused,
    Target,
    TargetConfig,
    TargetError,
    Upload,
    sort_key,
)

KIND = "file"
URL_SCHEME = None  # archives here are local paths
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {"const": "file"},
        "path": {"$ref": "#/$defs/archive_path"},
        "create_dirs": {"type": "boolean", "default": True},
        "retention": {"$ref": "#/$defs/retention"},
    },
}

REQUEST_SCHEMA: dict = {}  # a request gives what every kind needs: type and path


def config_problems(target: dict, data_dir: Path) -> list[tuple[str | None, str]]:
    if inside(os.path.dirname(target["path"]) or ".", data_dir):
        return [("path", f"archives must not be written inside the replica's data_dir {data_dir}")]
    return []


def options_from_request(body: dict, policy: InlinePolicy | None) -> dict:
    """No options (the directory is created if missing). With a policy, the
    exact file written, links resolved, must be inside one of its
    directories."""
    if policy is not None:
        _check_path(body["path"], policy)
    return {}


def _check_path(path: str, policy: InlinePolicy) -> None:
    if not policy.file_target_dirs:
        raise RequestRefused(403, "inline file targets are disabled: list the directories they may use in "
                                  "api.file_target_dirs", "path")
    parts = path.split("/")
    if not os.path.isabs(path) or ".." in parts or "." in parts:
        raise RequestRefused(400, "path must be absolute and must not contain '.' or '..'", "path")
    if any(len(p.encode()) > 255 for p in parts):
        raise RequestRefused(400, "path has a part longer than 255 bytes", "path")
    try:
        target = FileTarget("inline", path)
    except TargetError as exc:
        raise RequestRefused(400, str(exc), "path") from None
    final = Path(target.location(target.archive_name()))
    if not any(inside(final.parent, root) for root in policy.file_target_dirs):
        raise RequestRefused(403, f"path is outside the directories inline file targets may use "
                                  f"({', '.join(str(d) for d in policy.file_target_dirs)})", "path")


def target_for_url(url: ParseResult, configured: list[TargetConfig]) -> TargetConfig:
    raise TargetError("a file archive is named by its path")


def build(cfg: TargetConfig) -> FileTarget:
    return FileTarget(cfg.name, cfg.path, **cfg.options)


def _os_error(target: str, what: str, exc: OSError) -> TargetError:
    reasons: dict[int | None, str] = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                                      errno.EACCES: "permission denied", errno.EROFS: "read-only file system"}
    reason = reasons.get(exc.errno)
    return TargetError(f"target {target}: {what}: {reason or exc.strerror or exc}")


class FileUpload(Upload):
    """Writes the partial file; every WRITEBACK_EVERY bytes a thread asks
    the kernel to write what is there to disk (fdatasync), one at a time,
    so that the fsync of the commit waits for the last stretch only, not
    for the whole archive. An error of that thread fails the commit (a
    file's write-back error is reported once, to whichever fsync sees it
    first)."""

    WRITEBACK_EVERY = 64 * 1024 * 1024

    def __init__(self, target: FileTarget, final: Path):
        self.target, self.final = target, final
        self.partial = final.with_name("." + final.name + PARTIAL_SUFFIX)
        try:
            self.file = _create_private(self.partial)
        except FileExistsError:
            # another run's leftover with the same timestamp: ours to replace
            self.partial.unlink()
            self.file = _create_private(self.partial)
        except OSError as exc:
            raise _os_error(target.name, f"cannot create {self.partial}", exc) from None
        self.unsynced = 0
        self.syncing: threading.Thread | None = None
        self.sync_error: OSError | None = None

    def write(self, data: bytes) -> None:
        self.unsynced += len(data)
        writeback = self.unsynced >= self.WRITEBACK_EVERY and (self.syncing is None or not self.syncing.is_alive())
        try:
            self.file.write(data)
            if writeback:
                self.file.flush()
        except OSError as exc:
            raise _os_error(self.target.name, f"cannot write {self.partial}", exc) from None
        if writeback:
            self._raise_sync_error()
            self.unsynced = 0
            self.syncing = threading.Thread(target=self._sync, name="file-writeback", daemon=True)
            self.syncing.start()

    def _sync(self) -> None:
        try:
            os.fdatasync(self.file.fileno())
        except OSError as exc:
            self.sync_error = exc
        except ValueError:  # closed by abort meanwhile
            pass

    def _raise_sync_error(self) -> None:
        if self.sync_error is not None:
            raise _os_error(self.target.name, f"cannot write {self.partial}", self.sync_error)

    def _wait_sync(self) -> None:
        if self.syncing is not None:
            self.syncing.join()
            self.syncing = None

    def commit(self) -> str:
        try:
            self.file.flush()
            self._wait_sync()
            self._raise_sync_error()
            os.fsync(self.file.fileno())
            self.file.close()
            os.link(self.partial, self.final)
        except FileExistsError:
            self.abort()
            raise ArchiveExists(f"target {self.target.name}: {self.final} exists; it is never overwritten") from None
        except TargetError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise _os_error(self.target.name, f"cannot finish {self.final}", exc) from None
        self.partial.unlink()
        _fsync_dir(self.final.parent)
        return str(self.final)

    def abort(self) -> None:
        self._wait_sync()
        try:
            self.file.close()
        except OSError:
            pass
        try:
            self.partial.unlink()
        except OSError:
            pass


def _create_private(path: Path) -> BinaryIO:
    """A new file only its owner may read, whatever the umask: an archive
    holds whole databases."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    return open(fd, "wb")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileTarget(Target):
    kind = "file"

    def __init__(self, name: str, path_template: str, create_dirs: bool = True):
        super().__init__(name, path_template)
        self.dir = Path(self.directory or ".")
        self.create_dirs = create_dirs

    def location(self, name: str) -> str:
        return str(self.dir / name)

    def open(self, name: str, size_hint: int | None = None) -> Upload:
        final = self.dir / name
        if not self.dir.is_dir():
            if not self.create_dirs:
                raise TargetError(f"target {self.name}: directory {self.dir} does not exist (create_dirs is off)")
            try:
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise _os_error(self.name, f"cannot create directory {self.dir}", exc) from None
        if final.exists():
            raise ArchiveExists(f"target {self.name}: {final} exists; it is never overwritten "
                                f"(put {{timestamp}} in the target's path)")
        return FileUpload(self, final)

    def read(self, name: str) -> BinaryIO:
        try:
            return open(self.dir / name, "rb")
        except OSError as exc:
            raise _os_error(self.name, f"cannot read {self.dir / name}", exc) from None

    def list(self) -> list[ArchiveInfo]:
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(self.name, f"cannot list {self.dir}", exc) from None
        found = []
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and self.owns(entry.name):
                st = entry.stat(follow_symlinks=False)
                found.append(ArchiveInfo(entry.name, st.st_size, st.st_mtime, str(self.dir / entry.name)))
        return sorted(found, key=sort_key)

    def folders(self) -> builtins.list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.dir) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(self.name, f"cannot list {self.dir}", exc) from None

    def delete(self, name: str) -> None:
        try:
            (self.dir / name).unlink()
        except OSError as exc:
            raise _os_error(self.name, f"cannot delete {self.dir / name}", exc) from None

    def cleanup_partial(self) -> builtins.list[str]:
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return removed
        for entry in entries:
            name = entry.name
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX) and self.owns(name[1:-len(PARTIAL_SUFFIX)]):
                try:
                    os.unlink(entry.path)
                    removed.append(entry.path)
                except OSError:
                    pass
        return removed
