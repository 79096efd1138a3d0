"""Local checkpoints: the newest (transaction, Alh) of every journal, and
the digest and states of every archive, as this replicator wrote them,
kept in its state folder (`backup.trust.state_dir`), off every target.

A restore, `verify`, `drill` or `list` compares what a target holds with
them: a journal or archive rewritten on the target, segments deleted from
its end, another database's history put in its place, all differ from what
was written. Optionally sealed with an HMAC key kept elsewhere
(`backup.trust.hmac_key_file`), so that whoever can write the state folder
but not read the key cannot forge a checkpoint either.

Checkpoints are keyed by where the target is (its kind and path, host,
bucket, endpoint), not by its name in the configuration, and written whole
(temporary file, fsync, rename), 0600 in a 0700 folder.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReplicatorError
from reconciler.signed import TrustError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JournalCheckpoint:
    tx_id: int
    alh: bytes
    segment: str
    written_at: float


@dataclass(frozen=True)
class ArchiveCheckpoint:
    archive: str
    sha256: str                              # of the archive's bytes as written
    size: int
    databases: Mapping[str, tuple[int, bytes]]  # name -> (tx id, Alh) when copied
    written_at: float


def target_identity(cfg) -> str:
    """Where a target is, independent of its name in the configuration."""
    o = cfg.options
    parts = [cfg.kind, cfg.path.rpartition("/")[0] or "."]
    for key in ("host", "port", "endpoint_url", "region"):
        if o.get(key):
            parts.append(f"{key}={o[key]}")
    return "|".join(str(p) for p in parts)


class Checkpoints:
    """The state folder's checkpoints. `key`: the HMAC key (bytes) or None."""

    def __init__(self, state_dir: Path, key: bytes | None = None):
        self.root = Path(state_dir) / "checkpoints"
        self.key = key

    # -- journals
    def journal(self, target_cfg, database: str) -> JournalCheckpoint | None:
        d = self._read(self._path("journal", target_cfg, database), "journal", target_cfg, database)
        if d is None:
            return None
        try:
            return JournalCheckpoint(int(d["tx_id"]), bytes.fromhex(d["alh"]), str(d["segment"]),
                                     float(d["written_at"]))
        except (KeyError, TypeError, ValueError):
            raise TrustError(f"local checkpoint of the journal of {database}: unreadable") from None

    def record_journal(self, target_cfg, database: str, tx_id: int, alh: bytes, segment: str) -> None:
        """The journal of `database` at this target now ends at `tx_id`."""
        self._write(self._path("journal", target_cfg, database), "journal", target_cfg, database,
                    {"tx_id": tx_id, "alh": alh.hex(), "segment": segment, "written_at": time.time()})

    def forget_journal(self, target_cfg, database: str) -> None:
        """A new history of `database` starts (it was created again)."""
        self._path("journal", target_cfg, database).unlink(missing_ok=True)

    # -- archives
    def archive(self, target_cfg, archive: str) -> ArchiveCheckpoint | None:
        d = self._read(self._path("archive", target_cfg, archive), "archive", target_cfg, archive)
        if d is None:
            return None
        try:
            dbs = {str(n): (int(v["tx_id"]), bytes.fromhex(v["tx_hash"])) for n, v in d["databases"].items()}
            return ArchiveCheckpoint(archive, str(d["sha256"]), int(d["size"]), dbs, float(d["written_at"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise TrustError(f"local checkpoint of archive {archive}: unreadable") from None

    def record_archive(self, target_cfg, archive: str, sha256: str, size: int,
                       databases: Mapping[str, tuple[int, bytes]]) -> None:
        self._write(self._path("archive", target_cfg, archive), "archive", target_cfg, archive,
                    {"sha256": sha256, "size": size, "written_at": time.time(),
                     "databases": {n: {"tx_id": t, "tx_hash": h.hex()} for n, (t, h) in databases.items()}})

    def archives(self, target_cfg) -> list[ArchiveCheckpoint]:
        """Every archive this replicator wrote to the target and did not
        delete itself (retention forgets what it deletes), oldest first."""
        folder = self.root / "archive"
        found = []
        try:
            paths = sorted(folder.iterdir())
        except FileNotFoundError:
            return []
        for path in paths:
            try:
                with open(path, "rb") as f:
                    d = json.loads(f.read(1 << 20))
            except (OSError, ValueError):
                continue
            if isinstance(d, dict) and d.get("target") == target_identity(target_cfg) and d.get("kind") == "archive":
                mark = self.archive(target_cfg, str(d.get("name")))
                if mark is not None:
                    found.append(mark)
        return sorted(found, key=lambda m: m.written_at)

    def forget_archive(self, target_cfg, archive: str) -> None:
        self._path("archive", target_cfg, archive).unlink(missing_ok=True)

    # -- files
    def _path(self, kind: str, target_cfg, name: str) -> Path:
        ident = hashlib.sha256(f"{kind}\0{target_identity(target_cfg)}\0{name}".encode()).hexdigest()[:32]
        return self.root / kind / f"{ident}.json"

    def _seal(self, body: dict) -> str:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest() if self.key else ""

    def _read(self, path: Path, kind: str, target_cfg, name: str) -> dict | None:
        try:
            with open(path, "rb") as f:
                d = json.loads(f.read(1 << 20))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise TrustError(f"local checkpoint {path}: unreadable ({exc})") from None
        if not isinstance(d, dict):
            raise TrustError(f"local checkpoint {path}: unreadable")
        seal = d.pop("hmac", "")
        if (d.get("kind"), d.get("target"), d.get("name")) != (kind, target_identity(target_cfg), name):
            raise TrustError(f"local checkpoint {path} is not of {kind} {name}: it was changed")
        if self.key is not None and not hmac.compare_digest(str(seal), self._seal(d)):
            raise TrustError(f"local checkpoint of {kind} {name} ({path}): its seal does not match the HMAC key "
                             f"(changed, or sealed with another key)")
        return d

    def _write(self, path: Path, kind: str, target_cfg, name: str, fields: dict) -> None:
        body = {"kind": kind, "target": target_identity(target_cfg), "name": name, **fields}
        body["hmac"] = self._seal(body)
        _private_folder(path.parent)
        partial = path.with_name(f".{path.name}.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(body, sort_keys=True).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ReplicatorError(f"cannot write local checkpoint {path}: {exc.strerror or exc}") from None


def ensure_folder(state_dir: Path) -> None:
    """The state folder exists as a private folder of this user. Raises
    ReplicatorError saying what to set."""
    try:
        _private_folder(Path(state_dir) / "checkpoints")
    except ReplicatorError as exc:
        raise ReplicatorError(f"{exc} (backup.trust.state_dir: the replicator's own folder for local checkpoints; "
                              f"with systemd, StateDirectory=immudb-replicator provides one)") from None


def _private_folder(folder: Path) -> None:
    for f in reversed([folder, *folder.parents][:3]):  # checkpoints/<kind> and the state folder itself
        try:
            f.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:
            f.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ReplicatorError(f"state folder {f}: {exc.strerror or exc}") from None
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ReplicatorError(f"state folder {folder} is not a folder of this user (a link, or another user's)")
