"""MANIFEST.json, the last member of every archive, as typed records with
one parser (`parse`) and one encoder (`Manifest.encode`).

The writer (backup/job.py) builds a `Manifest`; the reader (archive.read)
parses one, after its JSON and its schema (schemas/manifest.schema.json)
are checked; verify, restore, the drill, the trust checks and the journal's
bases all take the typed record. What a manifest says is a claim of whoever
wrote the archive: trust/archives.py decides what vouches for it.
"""
from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

NAME = "MANIFEST.json"
FORMAT = 1


@dataclass(frozen=True)
class DatabaseEntry:
    """One database of the archive: its state when it was copied (none when
    it was unloaded then), how many files and bytes it holds, and the
    primary's signed state of it, as recorded (checked by trust/archives)."""

    name: str
    tx_id: int | None
    tx_hash: builtins.bytes | None
    files: int
    bytes: int
    was_loaded: bool | None = None
    signed: dict | None = None

    @property
    def state(self) -> tuple[int, builtins.bytes] | None:
        """(transaction id, Alh) when a state was recorded."""
        if self.tx_id and self.tx_hash:
            return self.tx_id, self.tx_hash
        return None

    def as_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "tx_id": self.tx_id,
                             "tx_hash": self.tx_hash.hex() if self.tx_hash is not None else None,
                             "files": self.files, "bytes": self.bytes}
        if self.was_loaded is not None:
            d["was_loaded"] = self.was_loaded
        if self.signed is not None:
            d["signed"] = self.signed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatabaseEntry:
        """From a manifest's entry that its schema accepted."""
        tx_hash = d.get("tx_hash")
        return cls(d["name"], d.get("tx_id"), bytes.fromhex(tx_hash) if tx_hash is not None else None,
                   d["files"], d["bytes"], d.get("was_loaded"), d.get("signed"))


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    backup_id: str
    started_at: str
    finished_at: str
    compression: str
    databases: tuple[DatabaseEntry, ...]
    files: tuple[FileRecord, ...] = ()
    tool: str = "immudb-replicator"
    tool_version: str | None = None
    immudb_version: str | None = None
    replica: str | None = None
    finished_unix: int | None = None
    format: int = FORMAT
    extra: dict = field(default_factory=dict, compare=False)  # fields this version does not know, kept as read

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.databases]

    def database(self, name: str) -> DatabaseEntry | None:
        return next((d for d in self.databases if d.name == name), None)

    def states(self) -> dict[str, tuple[int, bytes]]:
        """The (tx id, Alh) recorded per database (those copied while loaded)."""
        return {d.name: d.state for d in self.databases if d.state is not None}

    def with_files(self, files: Iterable[FileRecord]) -> Manifest:
        return replace(self, files=tuple(files))

    def as_dict(self) -> dict:
        d: dict[str, Any] = {**self.extra, "format": self.format, "tool": self.tool, "backup_id": self.backup_id,
                             "started_at": self.started_at, "finished_at": self.finished_at,
                             "compression": self.compression, "immudb_version": self.immudb_version,
                             "databases": [e.as_dict() for e in self.databases],
                             "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]}
        for key in ("tool_version", "replica", "finished_unix"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True).encode()


_KNOWN = {"format", "tool", "tool_version", "immudb_version", "replica", "backup_id", "started_at", "finished_at",
          "finished_unix", "compression", "databases", "files"}


def parse(raw: bytes) -> tuple[Manifest | None, list[str]]:
    """The manifest in `raw`, and what is wrong with it: its JSON, then its
    schema (the first five problems). None with the problems when either
    fails; the typed record is built only from what the schema accepted."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None, [f"{NAME} is not valid JSON"]
    from jsonschema import Draft202012Validator

    from reconciler import schemas
    validator = Draft202012Validator(schemas.load("manifest.schema.json"))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        return None, [f"{NAME} at '{'/'.join(map(str, e.absolute_path)) or '(top)'}': {e.message}"
                      for e in errors[:5]]
    return from_dict(data), []


def from_dict(data: dict) -> Manifest:
    """The typed record of a manifest's JSON that its schema accepted
    (`parse` checks that first; a writer may pass its own dict)."""
    return Manifest(
        backup_id=data["backup_id"], started_at=data["started_at"], finished_at=data["finished_at"],
        compression=data["compression"], databases=tuple(DatabaseEntry.from_dict(d) for d in data["databases"]),
        files=tuple(FileRecord(f["path"], f["size"], f["sha256"]) for f in data.get("files", ())),
        tool=data["tool"], tool_version=data.get("tool_version"), immudb_version=data.get("immudb_version"),
        replica=data.get("replica"), finished_unix=data.get("finished_unix"), format=data.get("format", FORMAT),
        extra={k: v for k, v in data.items() if k not in _KNOWN})
