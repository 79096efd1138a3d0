"""Restoring an archive into an immudb data directory, safely.

The archive is read once by the same reader `verify` uses (archive.read):
everything is extracted into a private scratch folder inside the
destination and every file checked against the manifest before anything in
the destination changes. Then every destination folder is checked (a link
or a mount point is refused), the folders being replaced are moved aside on
the same file system, the new ones moved in, and the old ones removed only
once all are in place; on any failure the old ones are put back. The result
says exactly which databases were added and which replaced.
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.backup import archive
from reconciler.errors import ReplicatorError
from reconciler.manifest import Manifest
from reconciler.paths import inside


class RestoreError(ReplicatorError):
    """The restore was refused or failed; the destination is unchanged."""


@dataclass
class RestoreResult:
    data_dir: Path
    databases: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    manifest: Manifest | None = None
    vouched: object = None      # what the vouch callback returned (the anchors' verdicts)


class _Scratch:
    """archive.Store writing into a private folder: only the databases
    wanted, never outside it, never more than the free space."""

    def __init__(self, root: Path, wanted: set[str] | None, exclude: frozenset[str] = frozenset()):
        self.root, self.wanted, self.exclude = root, wanted, exclude

    def _path(self, name: str) -> Path | None:
        database = name.split("/", 1)[0]
        if self.wanted is not None and database not in self.wanted or database in self.exclude:
            return None
        path = self.root / name
        if not inside(path, self.root):
            raise archive.ArchiveError(f"unsafe archive: {name!r} leaves the destination")
        return path

    def directory(self, name: str) -> None:
        path = self._path(name)
        if path is not None:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def file(self, name: str, size: int) -> BinaryIO:
        path = self._path(name)
        if path is None:
            return _Discard()
        free = shutil.disk_usage(self.root).free
        if size > free:
            raise OSError(28, f"{name} needs {size} bytes, {free} are free", str(self.root))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        f = open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        return _Restoring(f, f"writing {name} ({size} bytes) into {self.root.parent}")  # type: ignore[return-value]


class _Restoring:
    """A file being restored. The OSError of a write names no file (it said
    "File too large: None"): this one's error says which file, and where."""

    def __init__(self, f: BinaryIO, doing: str):
        self.f, self.doing = f, doing

    def write(self, data: bytes) -> None:
        try:
            self.f.write(data)
        except OSError as exc:
            raise RestoreError(f"nothing restored: {self.doing}: {_os_failure(exc)}") from None

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as exc:
            raise RestoreError(f"nothing restored: {self.doing}: {_os_failure(exc)}") from None


# what to do when the destination refuses a write
_ADVICE = {
    errno.EFBIG: "a file-size limit on this process (ulimit -f, or LimitFSIZE= in its systemd unit) or the file "
                 "system refuses a file this large: raise the limit, or restore onto a file system that takes it",
    errno.ENOSPC: "not enough free space: free some there, or restore onto a larger file system",
    errno.EDQUOT: "the disk quota is used up: raise it, free space, or restore elsewhere",
}


def _os_failure(exc: OSError) -> str:
    """An OSError as a restore says it: the system's words, the file when
    the system names one, and what to do when there is something to do."""
    text = exc.strerror or str(exc)
    if exc.filename:
        text += f": {exc.filename}"
    advice = _ADVICE.get(exc.errno) if exc.errno is not None else None
    return f"{text}; {advice}" if advice else text


class _Discard:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def restore(stream: BinaryIO, data_dir: Path, databases: list[str] | None = None, force: bool = False,
            on_bytes: Callable[[int], None] = lambda n: None,
            vouch: Callable[[Manifest], object] | None = None,
            identities: Sequence[Any] | None = None, exclude: Sequence[str] = (),
            prove: Callable[[Path, list[str], Manifest, object], None] | None = None) -> RestoreResult:
    """Extract the archive's databases (all, or `databases`; never those in
    `exclude`) into `data_dir`.
    `vouch(manifest)`, when given, is asked once the archive has been read
    and checked, before anything in the destination changes: whatever it
    raises stops the restore there (trust: the anchors); what it returns is
    the result's `vouched`. `prove(folder, databases, manifest, vouched)`,
    when given, is asked next, with the extracted databases in a private
    folder: whatever it raises stops the restore there too. Raises RestoreError (refused: non-empty
    destination without `force`, a destination folder that is a link or a
    mount point, unknown database, archive invalid or damaged; failed: a
    file system error), always with the destination as it was."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise RestoreError(f"{data_dir} exists and is not a directory")
    existing = [p.name for p in data_dir.iterdir()] if data_dir.exists() else []
    if existing and not force:
        raise RestoreError(f"{data_dir} is not empty ({len(existing)} entries); restore into an empty directory, "
                           f"or pass --force to replace the archive's databases there")
    wanted = set(databases) if databases else None
    made = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        scratch = data_dir / f".restore-{uuid.uuid4().hex[:12]}"
        scratch.mkdir(mode=0o700)
    except OSError as exc:
        raise RestoreError(f"nothing restored: {_os_failure(exc)}") from None
    try:
        try:
            seen = archive.read(stream, _Scratch(scratch, wanted, frozenset(exclude)), on_bytes=on_bytes,
                                identities=identities)
        except OSError as exc:
            raise RestoreError(f"nothing restored: {_os_failure(exc)}") from None
        if seen.sealed:
            raise RestoreError(f"nothing restored: {seen.problems[0]}")
        if not seen.ok:
            raise RestoreError("archive invalid or damaged, nothing restored: " + "; ".join(seen.problems[:5]) +
                               (f" (and {len(seen.problems) - 5} more)" if len(seen.problems) > 5 else ""))
        if wanted is not None and wanted - set(seen.databases):
            raise RestoreError(f"not in the archive: {', '.join(sorted(wanted - set(seen.databases)))} "
                               f"(it holds {', '.join(seen.databases) or 'nothing'})")
        chosen = [n for n in seen.databases if (wanted is None or n in wanted) and n not in exclude]
        assert seen.manifest is not None  # seen.ok
        vouched = vouch(seen.manifest) if vouch is not None else None
        for name in chosen:
            (scratch / name).mkdir(mode=0o700, exist_ok=True)  # a database archived with no file at all
        if prove is not None:
            prove(scratch, chosen, seen.manifest, vouched)
        replaced = _check_destinations(data_dir, chosen)
        _swap_in(data_dir, scratch, chosen, replaced)
        files = {p: f for p, f in seen.files.items() if p.split("/", 1)[0] in chosen}
        return RestoreResult(data_dir, sorted(chosen), sorted(set(chosen) - set(replaced)), sorted(replaced),
                             len(files), sum(f.size for f in files.values()), seen.manifest, vouched)
    except BaseException:
        if made:  # a folder made here goes again: nothing was restored
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_destinations(data_dir: Path, names: list[str]) -> list[str]:
    """The databases that exist in `data_dir` and will be replaced; raises
    RestoreError before anything moves if one cannot be replaced safely."""
    replaced = []
    for name in names:
        final = data_dir / name
        if final.is_symlink():
            raise RestoreError(f"nothing restored: {final} is a symbolic link (to {os.readlink(final)}); "
                               f"restore will not replace it: remove the link or restore elsewhere")
        if not final.exists():
            continue
        if not final.is_dir():
            raise RestoreError(f"nothing restored: {final} exists and is not a directory")
        if os.path.ismount(final):
            raise RestoreError(f"nothing restored: {final} is a mount point; restore will not replace it: "
                               f"restore into an empty directory and copy the folder's content there")
        replaced.append(name)
    return replaced


def _swap_in(data_dir: Path, scratch: Path, names: list[str], replaced: list[str]) -> None:
    """Move the restored folders into place; the replaced ones wait aside
    (same file system) until all are in, and go back on any failure."""
    aside = data_dir / f".restore-replaced-{uuid.uuid4().hex[:12]}"
    moved_aside: list[str] = []
    placed: list[str] = []
    try:
        aside.mkdir(mode=0o700)
        for name in names:
            if name in replaced:
                os.rename(data_dir / name, aside / name)
                moved_aside.append(name)
            os.rename(scratch / name, data_dir / name)
            placed.append(name)
    except OSError as exc:
        for name in reversed(placed):
            os.rename(data_dir / name, scratch / name)
        for name in reversed(moved_aside):
            os.rename(aside / name, data_dir / name)
        shutil.rmtree(aside, ignore_errors=True)
        raise RestoreError(f"nothing restored: {_os_failure(exc)}; the destination is as it was") from None
    shutil.rmtree(aside, ignore_errors=True)
