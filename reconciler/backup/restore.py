"""Restoring an archive into an immudb data directory, safely.

Everything is extracted into a temporary folder inside the destination,
every file checked against the manifest, and only then are the database
folders moved into place: a failure leaves the destination as it was.
Members are accepted only as writers produce them (see archive.check_member):
no absolute paths, no `..`, no links, no devices.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from reconciler.backup.archive import MANIFEST, ArchiveError, FileEntry, Verification, compare, hash_stream, iterate
from reconciler.errors import ReplicatorError


class RestoreError(ReplicatorError):
    """The restore was refused or failed; the destination is unchanged."""


@dataclass
class RestoreResult:
    data_dir: Path
    databases: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    manifest: dict = field(default_factory=dict)


def restore(stream: BinaryIO, data_dir: Path, databases: list[str] | None = None, force: bool = False,
            on_bytes: Callable[[int], None] = lambda n: None) -> RestoreResult:
    """Extract the archive's databases (all, or `databases`) into `data_dir`.
    Raises RestoreError (refused: non-empty destination without `force`,
    unknown database, archive invalid or damaged)."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise RestoreError(f"{data_dir} exists and is not a directory")
    existing = [p.name for p in data_dir.iterdir()] if data_dir.exists() else []
    if existing and not force:
        raise RestoreError(f"{data_dir} is not empty ({len(existing)} entries); restore into an empty directory, "
                           f"or pass --force to replace the archive's databases there")
    data_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(databases) if databases else None
    scratch = data_dir / f".restore-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    try:
        seen = Verification()
        for member, content, kind in iterate(stream):
            seen.compression = kind
            if member.name == MANIFEST:
                seen.manifest = json.loads(content.read()) if content else None
                continue
            top = PurePosixPath(member.name).parts[0]
            if wanted is not None and top not in wanted:
                if content is not None:
                    hash_stream(content)  # read past it
                continue
            dest = scratch / member.name
            if not _inside(dest, scratch):
                raise ArchiveError(f"unsafe archive: {member.name!r} leaves the destination")
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "xb") as out:
                size, digest = hash_stream(content, sink=out.write, on_bytes=on_bytes)
            os.chmod(dest, member.mode & 0o644 | 0o600)
            seen.files[member.name] = FileEntry(member.name, size, digest)
        compare(seen, only=wanted)
        if seen.manifest is not None and wanted is not None:
            missing = wanted - set(seen.databases)
            if missing:
                raise RestoreError(f"not in the archive: {', '.join(sorted(missing))} "
                                   f"(it holds {', '.join(seen.databases) or 'nothing'})")
        if seen.problems:
            raise RestoreError("archive damaged, nothing restored: " + "; ".join(seen.problems[:5]) +
                               (f" (and {len(seen.problems) - 5} more)" if len(seen.problems) > 5 else ""))
        restored = sorted(p.name for p in scratch.iterdir())
        for name in restored:
            final = data_dir / name
            if final.exists():
                shutil.rmtree(final)  # only reachable with force
            (scratch / name).rename(final)
        return RestoreResult(data_dir, restored, len(seen.files), sum(f.size for f in seen.files.values()),
                             seen.manifest or {})
    except ArchiveError as exc:
        raise RestoreError(f"nothing restored: {exc}") from None
    except OSError as exc:
        raise RestoreError(f"nothing restored: {exc.strerror or exc}: {exc.filename}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _inside(path: Path, root: Path) -> bool:
    resolved, base = path.resolve(), root.resolve()
    return resolved == base or base in resolved.parents
