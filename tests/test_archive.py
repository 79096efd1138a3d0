"""The archive format on its own: writing, verifying, restoring, refusing
damaged and hostile archives. Local files only; no servers."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from reconciler.backup import archive
from reconciler.backup.restore import RestoreError, restore
from reconciler.backup.retention import expired
from reconciler.backup.targets.base import ArchiveInfo
from reconciler.config.model import Retention


class MemoryUpload:
    def __init__(self):
        self.buffer = io.BytesIO()

    def write(self, data):
        self.buffer.write(data)

    def commit(self):
        return "memory"

    def abort(self):
        self.buffer = io.BytesIO()


def make_tree(root: Path) -> dict[str, bytes]:
    """Two fake databases; returns their files' contents by archive path."""
    files = {
        "alpha/commit/00000000.txi": os.urandom(3000),
        "alpha/tx/00000000.tx": b"transaction-log " * 500,
        "alpha/index/nodes/00000000.n": os.urandom(100),
        "beta/val_0/00000000.val": b'{"json": "like"}' * 2000,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "beta/aht").mkdir(parents=True)  # an empty folder survives the round trip
    return files


def write_archive(tree: Path, compression: str = "gzip") -> bytes:
    upload = MemoryUpload()
    writer = archive.ArchiveWriter(upload, compression)
    for db in ("alpha", "beta"):
        writer.add_tree(tree / db, db)
    writer.finish({"databases": [{"name": "alpha"}, {"name": "beta"}], "started_at": "now"})
    return upload.buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root, make_tree(root)


@pytest.mark.parametrize("compression, magic", [("gzip", b"\x1f\x8b"), ("zstd", b"\x28\xb5\x2f\xfd"), ("none", b"alpha")])
def test_archive_round_trip_verifies(tree, compression, magic):
    root, files = tree
    data = write_archive(root, compression)
    assert data.startswith(magic)
    result = archive.verify(io.BytesIO(data))
    assert result.ok, result.problems
    assert result.compression == compression
    assert {p: (f.size) for p, f in result.files.items()} == {p: len(d) for p, d in files.items()}
    assert result.databases == ["alpha", "beta"]


def test_manifest_is_last_and_lists_every_file_with_its_checksum(tree):
    import hashlib
    import json
    root, files = tree
    with tarfile.open(fileobj=io.BytesIO(write_archive(root)), mode="r:gz") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(archive.MANIFEST).read())
    assert names[-1] == archive.MANIFEST
    assert all(not n.startswith("/") for n in names)
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


@pytest.mark.faults
def test_one_flipped_byte_fails_verification_naming_the_file(tree):
    root, files = tree
    plain = bytearray(write_archive(root, "none"))
    offset = plain.index(b"transaction-log ")
    plain[offset] ^= 0xFF
    result = archive.verify(io.BytesIO(bytes(plain)))
    assert not result.ok
    assert any("alpha/tx/00000000.tx" in p and "sha256" in p for p in result.problems)


@pytest.mark.faults
def test_flipped_byte_in_compressed_archive_fails(tree):
    root, _ = tree
    data = bytearray(write_archive(root, "gzip"))
    data[len(data) // 2] ^= 0x01
    assert not archive.verify(io.BytesIO(bytes(data))).ok


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.faults
def test_truncated_archive_fails(tree, compression):
    root, _ = tree
    data = write_archive(root, compression)
    result = archive.verify(io.BytesIO(data[: len(data) * 2 // 3]))
    assert not result.ok
    assert any("truncated" in p or "MANIFEST" in p or "missing" in p for p in result.problems), result.problems


@pytest.mark.faults
def test_manifest_that_lies_about_a_size_fails(tree):
    import json
    root, _ = tree
    members = []
    with tarfile.open(fileobj=io.BytesIO(write_archive(root)), mode="r:gz") as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read() if m.isfile() else None))
    forged = io.BytesIO()
    with tarfile.open(fileobj=forged, mode="w") as out:
        for m, data in members:
            if m.name == archive.MANIFEST:
                manifest = json.loads(data)
                manifest["files"][0]["size"] += 1
                data = json.dumps(manifest).encode()
                m.size = len(data)
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    result = archive.verify(io.BytesIO(forged.getvalue()))
    assert any("the manifest says" in p for p in result.problems)


# --------------------------------------------------------------------------- restore

def test_restore_into_empty_directory(tree, tmp_path):
    root, files = tree
    dest = tmp_path / "restored"
    result = restore(io.BytesIO(write_archive(root)), dest)
    assert result.databases == ["alpha", "beta"]
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / "beta" / "aht").is_dir()
    assert not any(p.name.startswith(".restore-") for p in dest.iterdir())


def test_restore_selected_database_only(tree, tmp_path):
    root, _ = tree
    dest = tmp_path / "restored"
    assert restore(io.BytesIO(write_archive(root)), dest, ["beta"]).databases == ["beta"]
    assert sorted(p.name for p in dest.iterdir()) == ["beta"]


def test_restore_of_unknown_database_is_refused(tree, tmp_path):
    root, _ = tree
    with pytest.raises(RestoreError, match="not in the archive: gamma"):
        restore(io.BytesIO(write_archive(root)), tmp_path / "r", ["gamma"])


def test_restore_refuses_non_empty_destination_unless_forced(tree, tmp_path):
    root, files = tree
    dest = tmp_path / "busy"
    (dest / "alpha").mkdir(parents=True)
    (dest / "alpha" / "old").write_text("old")
    with pytest.raises(RestoreError, match="not empty"):
        restore(io.BytesIO(write_archive(root)), dest)
    assert (dest / "alpha" / "old").exists()
    restore(io.BytesIO(write_archive(root)), dest, force=True)
    assert not (dest / "alpha" / "old").exists()
    assert (dest / "alpha/tx/00000000.tx").read_bytes() == files["alpha/tx/00000000.tx"]


@pytest.mark.faults
def test_damaged_archive_restores_nothing(tree, tmp_path):
    root, _ = tree
    plain = bytearray(write_archive(root, "none"))
    plain[plain.index(b'{"json"')] ^= 0xFF
    dest = tmp_path / "r"
    with pytest.raises(RestoreError, match="damaged"):
        restore(io.BytesIO(bytes(plain)), dest)
    assert list(dest.iterdir()) == []


def _hostile(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return out.getvalue()


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, link
    return m


@pytest.mark.parametrize("member, why", [
    (_member("/etc/cron.d/evil"), "absolute"),
    (_member("alpha/../../evil"), "leaves"),
    (_member("alpha/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (_member("alpha/hard", tarfile.LNKTYPE, "alpha/../../etc/passwd"), "link"),
    (_member("alpha/dev", tarfile.CHRTYPE), "not a regular file"),
    (_member("not a db/file"), "database folder"),
])
@pytest.mark.faults
def test_hostile_archives_are_refused(tmp_path, member, why):
    data = _hostile(member)
    dest = tmp_path / "dest"
    with pytest.raises(RestoreError, match=why):
        restore(io.BytesIO(data), dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()
    verification = archive.verify(io.BytesIO(data))
    assert not verification.ok and any(why in p for p in verification.problems)


# --------------------------------------------------------------------------- retention

DAY = 86400.0


def _archives(*ages_days: float, now: float = 100 * DAY) -> list[ArchiveInfo]:
    import time
    out = []
    for age in ages_days:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - age * DAY))
        out.append(ArchiveInfo(f"immudb-{stamp}.tar.gz", 1, now - age * DAY, ""))
    return out


def test_retention_keep_last():
    archives = _archives(5, 4, 3, 2, 1, 0)
    doomed = expired(archives, Retention(keep_last=3), 100 * DAY, archives[-1].name)
    assert [a.name for a in doomed] == [a.name for a in archives[:3]]


def test_retention_max_age():
    archives = _archives(40, 31, 29, 1, 0)
    doomed = expired(archives, Retention(max_age_seconds=int(30 * DAY)), 100 * DAY, archives[-1].name)
    assert [a.name for a in doomed] == [a.name for a in archives[:2]]


def test_retention_keeps_what_any_rule_keeps():
    archives = _archives(40, 20, 10, 0)
    doomed = expired(archives, Retention(keep_last=1, max_age_seconds=int(15 * DAY)), 100 * DAY, archives[-1].name)
    assert [a.name for a in doomed] == [a.name for a in archives[:2]]


def test_retention_never_deletes_the_archive_just_written_nor_anything_without_a_policy():
    archives = _archives(50)
    assert expired(archives, Retention(max_age_seconds=60), 100 * DAY, archives[0].name) == []
    assert expired(_archives(50, 40), None, 100 * DAY, "x") == []
