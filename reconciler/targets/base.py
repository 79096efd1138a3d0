"""The one small interface every backup target implements, and what a
target kind's module provides besides.

A target is a place for archives: a directory (local or over SFTP) or an S3
prefix. Writing is whole or absent: `open()` returns an Upload that writes
under a temporary name; `commit()` makes the archive visible under its final
name, `abort()` leaves nothing behind. Archive names come from the target's
path template (`immudb-{timestamp}.tar.gz`); only names that match it are
ever listed or deleted.

A kind is one module in this package (file.py, sftp.py, s3.py), found by
its name, holding everything about that kind:

    KIND: str                    the `type` in the configuration and in requests
    URL_SCHEME: str | None       the archive locations verify/restore/drill accept (s3://, sftp://)
    SCHEMA: dict                 JSON Schema of a configured target of this kind
    REQUEST_SCHEMA: dict         what an inline request of this kind must hold besides type and
                                 path (JSON Schema, applied to the request's fields)
    config_problems(target: dict, data_dir: Path) -> list[(key, message)]
                                 what its JSON Schema cannot check
    options_from_request(body: dict, policy: InlinePolicy | None) -> dict
                                 a target's options from the Go tool's request
                                 fields; raises RequestRefused (policy None: trusted)
    target_for_url(url, configured: list[TargetConfig]) -> TargetConfig
                                 the configured target (credentials) for a location
    build(cfg: TargetConfig) -> Target

Heavy client libraries (paramiko, boto3) are imported when first used
(`lazy_import`), so looking a kind up (to validate a configuration, say)
costs nothing.
"""
from __future__ import annotations

import builtins
import calendar
import importlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from reconciler.errors import ReplicatorError


@dataclass(frozen=True)
class Retention:
    """How many archives a target keeps (backup/retention.py applies it)."""

    keep_last: int | None = None
    max_age_seconds: int | None = None
    keep_daily: int | None = None      # the newest archive of each of the newest N days that have one (UTC)
    keep_weekly: int | None = None     # ... of each ISO week
    keep_monthly: int | None = None    # ... of each month
    keep_yearly: int | None = None     # ... of each year

    @property
    def keeps_all(self) -> bool:
        return all(v is None for v in (self.keep_last, self.max_age_seconds, self.keep_daily, self.keep_weekly,
                                       self.keep_monthly, self.keep_yearly))


@dataclass(frozen=True)
class TargetConfig:
    """One named backup target, as configured (config/model.py builds it
    from backup.targets.NAME) or asked for inline. `options` holds the
    kind's other fields, with every secret as a `Secret`."""

    name: str
    kind: str
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)
    retention: Retention | None = None


class lazy_import:  # noqa: N801 - used as `paramiko = lazy_import("paramiko")`, like the module it stands for
    """Stands for module `name`, imported (with importlib's own locking) when
    one of its attributes is first used. Leaves sys.modules alone: code that
    imports the module itself gets the real one. (importlib's LazyLoader is
    not thread-safe before Python 3.12: a backup thread and the API could
    both see a half-initialised module.)"""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STORED_CHUNK = 4 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"


class TargetError(ReplicatorError):
    """A target failed (unreachable, refused, full, ...). The message names
    the target and never a credential."""


class StoredMismatch(TargetError):
    """What the target holds under a name is not the bytes written there
    (shorter, longer, other bytes, or missing)."""


class Retained(TargetError):
    """The store keeps that object until `until` (S3 Object Lock): it cannot
    be deleted before then. Retention and journal pruning skip it."""

    def __init__(self, message: str, until: float):
        super().__init__(message)
        self.until = until


class ArchiveExists(TargetError):
    """An archive of that name exists already; it is never overwritten."""


class RequestRefused(TargetError):
    """An inline target that the request may not ask for: `status` is the
    HTTP status to answer (400 malformed, 403 not allowed), `field` the
    request field at fault."""

    def __init__(self, status: int, message: str, field: str | None):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass(frozen=True)
class InlinePolicy:
    """What a request may ask of an inline target (from the `api` section).
    A trusted caller (the command line) passes no policy."""

    file_target_dirs: tuple[Path, ...] = ()
    endpoint_urls: tuple[str, ...] = ()
    known_hosts_file: str | None = None
    host_key_fingerprints: bool = False


@dataclass(frozen=True)
class ArchiveInfo:
    name: str          # the file name, relative to the target's directory or prefix
    size: int
    modified: float    # seconds since the epoch
    location: str      # full location, for messages


class Upload(ABC):
    """One archive being written."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> str:
        """Make the archive visible under its final name; its location."""

    @abstractmethod
    def abort(self) -> None:
        """Remove everything written so far. Never raises."""

    # a file-like face for compressors and tarfile
    def writable(self) -> bool:
        return True

    def flush(self) -> None:  # noqa: B027 - deliberately empty: what was written is kept until commit()
        pass


_T = TypeVar("_T", bound="Target")


class Target(ABC):
    kind: str = ""

    def __init__(self, name: str, path_template: str):
        self.name = name
        self.directory, _, self.template = path_template.rpartition("/")
        if not self.template:
            raise TargetError(f"target {name}: path {path_template!r} names no file")

    # -- names
    def archive_name(self, when: float | None = None) -> str:
        """The file name of a new archive, from the template."""
        t = time.gmtime(when if when is not None else time.time())
        return self.template.replace("{timestamp}", time.strftime(TIMESTAMP_FORMAT, t)).replace(
            "{date}", time.strftime("%Y%m%d", t))

    def owns(self, name: str) -> bool:
        """True for names this target's template produces: the only ones
        listing and retention ever touch."""
        return template_pattern(self.template).fullmatch(name) is not None

    @abstractmethod
    def location(self, name: str) -> str:
        """Where archive `name` is, for messages (no credentials)."""

    # -- operations
    @abstractmethod
    def open(self, name: str, size_hint: int | None = None) -> Upload:
        """Start writing archive `name` (of about `size_hint` bytes at most,
        when known). Raises ArchiveExists if it exists, TargetError if the
        target cannot be written."""

    @abstractmethod
    def read(self, name: str) -> BinaryIO:
        """A stream of archive `name`'s bytes. Raises TargetError."""

    @abstractmethod
    def list(self) -> list[ArchiveInfo]:
        """The archives this target's template matches, oldest first."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def folders(self) -> builtins.list[str]:
        """The names of the folders (S3: common prefixes) in the target's
        directory."""

    def check_stored(self, name: str, size: int, sha256: str) -> str:
        """That archive `name` holds exactly the `size` bytes whose SHA-256
        is `sha256` (the bytes as written). Read back from the target and
        hashed as they come (kinds whose service keeps checksums of what it
        stored override this and download nothing). What proved it, for
        messages; raises StoredMismatch, or TargetError when it cannot be
        read."""
        import hashlib
        from concurrent.futures import ThreadPoolExecutor
        digest, got = hashlib.sha256(), 0
        stream = self.read(name)
        # the next chunk is read while the last one is hashed (both let go of the GIL)
        hashing = None
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-back") as pool:
                while True:
                    chunk = stream.read(STORED_CHUNK)
                    if hashing is not None:
                        hashing.result()
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > size:
                        raise StoredMismatch(f"target {self.name}: {self.location(name)} holds more than the "
                                             f"{size} bytes written")
                    hashing = pool.submit(digest.update, chunk)
        except OSError as exc:
            raise TargetError(f"target {self.name}: cannot read {self.location(name)} back: "
                              f"{exc.strerror or exc}") from None
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if got != size:
            raise StoredMismatch(f"target {self.name}: {self.location(name)} holds {got} bytes, {size} were written")
        if digest.hexdigest() != sha256:
            raise StoredMismatch(f"target {self.name}: {self.location(name)} holds other bytes than were written "
                                 f"(SHA-256 differs)")
        return f"read back, {size} bytes, SHA-256 as written"

    def check_settings(self) -> None:  # noqa: B027 - deliberately empty: most kinds promise nothing to check
        """That the store does what this target's settings promise (S3: the
        bucket has Object Lock when object_lock is set). Raises TargetError.
        Asked by `validate` and at the daemon's start, and before each upload."""

    def cleanup_partial(self) -> builtins.list[str]:
        """Remove what an interrupted earlier run of ours left (temporary
        files, pending multipart uploads); the names removed."""
        return []

    def close(self) -> None:  # noqa: B027 - deliberately empty: only targets holding a connection override it
        pass

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# what each placeholder of a path template stands for: an archive's time here; the journal adds its
# own names (register_placeholder), so that this layer knows nothing of what is stored with it
_PLACEHOLDERS = {"{timestamp}": r"\d{8}T\d{6}Z", "{date}": r"\d{8}"}


def register_placeholder(placeholder: str, regex: str) -> None:
    """Let path templates hold `placeholder` (e.g. "{segment}"), standing
    for names that fully match `regex`. Registering it again with another
    regex is an error (two users would own one name)."""
    if not re.fullmatch(r"\{[a-z_]+\}", placeholder):
        raise ValueError(f"{placeholder!r} is not a placeholder")
    if _PLACEHOLDERS.setdefault(placeholder, regex) != regex:
        raise ValueError(f"{placeholder} stands for other names already")


def template_pattern(template: str) -> re.Pattern:
    parts = re.split("(" + "|".join(re.escape(p) for p in _PLACEHOLDERS) + ")", template)
    regex = "".join(_PLACEHOLDERS[p] if p in _PLACEHOLDERS else re.escape(p) for p in parts)
    return re.compile(regex)


def sort_key(info: ArchiveInfo) -> tuple:
    """Oldest first: by the time in the name where there is one, else mtime."""
    stamp = re.search(r"\d{8}T\d{6}Z", info.name)
    if stamp:
        return (calendar.timegm(time.strptime(stamp.group(0), TIMESTAMP_FORMAT)), info.name)
    return (info.modified, info.name)
