"""Backups tried as an attacker who can write the backup target would try
them, and as an operator whose target lost files (issue 20): real journals
shipped by a real daemon (the primary signs its states, the daemon keeps
local checkpoints), rewritten on the target, then restored. Every anchor
that can see the change must refuse; what no anchor can see is stated.
docs/reliability.md lists these tests; they run in `pytest -m faults`."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyrage
import pytest
import yaml
from pyrage import x25519

from reconciler.config.model import TargetConfig
from reconciler.encryption import is_encrypted, load_identities
from reconciler.journal import format as jf
from reconciler.journal.store import JournalStore
from reconciler.manifest import from_dict as manifest_from_dict
from tests.support import immudb_data
from tests.support.cli import argv as cli_argv
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config
from tests.support.daemon import Daemon
from tests.support.exported import Entry, History, Tx, open_segment, records, reseal, rewrite, seal
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parent.parent


run = replicator


class Shipped:
    """A journal a daemon shipped: its configuration, target and folder; and
    when it was encrypted, the age identity that reads it and the recipient
    (the public key) that anyone may encrypt to."""

    def __init__(self, tmp_path: Path, config: Path, name: str, prefix: str, target: dict,
                 identity: Path | None = None, recipient: str | None = None):
        self.tmp_path, self.config, self.name, self.prefix = tmp_path, config, name, prefix
        self.target_cfg = TargetConfig("local", "file", target["path"])
        self.folder = Path(target["path"]).parent / "journal" / name
        self.identity, self.recipient = identity, recipient

    def segments(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(jf.SUFFIX))

    @property
    def identity_args(self) -> tuple[str, ...]:
        return ("--identity", str(self.identity)) if self.identity else ()

    def opened(self, blob: bytes) -> bytes:
        """`blob` as written before encryption (decrypted with the identity)."""
        return pyrage.decrypt(blob, load_identities(self.identity)) if self.identity else blob

    def sealed(self, blob: bytes) -> bytes:
        """`blob` encrypted to the recipient, as anyone holding the public key can."""
        return pyrage.encrypt(blob, [x25519.Recipient.from_str(self.recipient)]) if self.recipient else blob

    def plaintexts(self) -> list[bytes]:
        """Every segment's bytes, decrypted when the journal is encrypted."""
        return [self.opened(p.read_bytes()) for p in self.segments()]

    def restore(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
        dest = self.tmp_path / unique_name("restored")
        return run("restore", "-c", str(config or self.config), "--target", "local", "--database", self.name,
                   "--as", "back", "--data-dir", str(dest), *self.identity_args, *args)

    def replace(self, files: list[tuple[str, bytes]]) -> None:
        """The journal's segments replaced by `files` (name, bytes), each
        encrypted to the recipient when the journal is encrypted."""
        for p in self.segments():
            p.unlink()
        for name, blob in files:
            (self.folder / name).write_bytes(self.sealed(blob))

    def configured(self, state_dir: Path | None = None, key: bool = True) -> Path:
        """The same configuration with another state folder, or without the
        primary's public key."""
        data = yaml.safe_load(self.config.read_text())
        if state_dir is not None:
            data["backup"]["trust"]["state_dir"] = str(state_dir)
        if not key:
            data["backup"]["trust"].pop("public_key_file")
        path = self.config.with_name(unique_name("variant") + ".yaml")
        path.write_text(yaml.safe_dump(data))
        return path

    def without_key(self) -> Path:
        return self.configured(key=False)


@pytest.fixture
def shipped(tmp_path, followed, primary_server, replica_server, immudb_build):
    """make(count, segment_seconds, databases, encrypted): a database with
    `count` transactions after the first write, journaled by a daemon to a
    file target (encrypted to a new age key: backup.encryption), the daemon
    stopped; a Shipped."""
    def make(count: int = 12, segment_seconds: float = 0.3, databases: int = 1,
             encrypted: bool = False) -> list[Shipped]:
        prefix, name = followed(0)
        names = [name]
        from tests.support.servers import admin_for
        admin = admin_for(primary_server, "primary")
        for i in range(1, databases):
            names.append(f"{prefix}db{i}")
            admin.create_database(names[-1])
        admin.close()
        target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
        identity, recipient, sealing = None, None, {}
        if encrypted:
            key = x25519.Identity.generate()
            identity, recipient = tmp_path / "restore-key.txt", str(key.to_public())
            identity.write_text(f"{key}\n")
            sealing = {"encryption": {"recipients": [recipient]}}
        d = Daemon(tmp_path, primary_server, replica_server, prefix, reconcile={"interval": 1},
                   backup={"targets": {"local": target}, **sealing,
                           "continuous": {"target": "local", "segment_max_seconds": segment_seconds,
                                          "spool_dir": str(tmp_path / "spool")},
                           "trust": {"public_key_file": str(primary_server.public_key),
                                     "state_dir": str(tmp_path / "state")},
                           "drill": {"immudb_binary": str(immudb_build / "immudb"),
                                     "scratch_dir": str(tmp_path / "scratch")}}).start()
        try:
            for i in range(count):  # one transaction at a time, each shipped: a segment each
                for n in names:
                    immudb_data.write(primary_server, n, 1, prefix=f"{n}_v{i}_")  # histories differ
                for n in names:
                    d.wait_shipped(n, immudb_data.state(primary_server, n)[0])
        finally:
            assert d.stop() == 0
        return [Shipped(tmp_path, d.config_path, n, prefix, target, identity, recipient) for n in names]
    return make


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
def test_a_consistently_rewritten_journal_is_refused_by_every_anchor(shipped, tmp_path, encrypted):
    """A value changed and every hash after it recomputed (Eh, the Alh chain,
    BlRoot, names, headers, checksums): the journal is valid by itself. The
    primary's signatures cannot be recomputed: dropped, or left as they were.
    Encrypted, the forged segments are encrypted to the journal's recipient,
    as anyone holding the public key can: age authenticates them, and every
    anchor refuses them all the same (read with the identity)."""
    [j] = shipped(encrypted=encrypted)
    original = j.plaintexts()

    def change(txs: list[Tx]) -> None:
        victim = txs[5]
        victim.entries = [Entry(e.key, b"FORGED" + e.value[6:], e.metadata) for e in victim.entries]

    j.replace(rewrite(original, change))  # signatures dropped
    live = j.restore("--to-end")
    assert live.returncode == 1 and "the journal was rewritten" in live.stderr and "replica" in live.stderr, live.stderr
    local = j.restore("--to-end", "--no-live")
    assert local.returncode == 1 and "this replicator wrote" in local.stderr, local.stderr
    unsigned = j.restore("--to-end", "--no-live", config=j.configured(state_dir=tmp_path / "empty-state"))
    assert unsigned.returncode == 1 and "nothing outside the target vouches" in unsigned.stderr, unsigned.stderr
    assert "no signed state at or after" in unsigned.stderr

    j.replace(rewrite(original, change, keep_signed=True))
    signed = j.restore("--to-end", "--no-live", config=j.configured(state_dir=tmp_path / "empty-state"))
    assert signed.returncode == 1 and "the primary signed" in signed.stderr, signed.stderr
    for done in (live, local, unsigned, signed):
        assert "Traceback" not in done.stderr
    for done in (live, local, unsigned):
        assert j.name in done.stderr, done.stderr  # naming the journal
    assert any(f"segment {p.name}: " in signed.stderr for p in j.segments()), signed.stderr  # naming the segment
    assert not any(tmp_path.glob("restored*/*"))  # nothing half-restored anywhere
    assert all(is_encrypted(p.read_bytes()[:32]) == encrypted for p in j.segments())  # what was refused

    # what no anchor can tell: with every anchor set aside, the operator's word is taken, and the output says so
    trusted = j.restore("--to-end", "--no-live", "--unanchored",
                        config=j.configured(state_dir=tmp_path / "empty-state", key=False))
    assert trusted.returncode == 0 and "UNANCHORED" in trusted.stdout, trusted.stderr


def test_another_databases_history_is_refused_even_from_transaction_1(shipped):
    """B's segments put under A's name, their headers rewritten to say A:
    nothing in the bytes ties them to B except what the anchors hold."""
    a, b = shipped(databases=2)
    theirs = [p.read_bytes() for p in b.segments()]
    a.replace(rewrite(theirs, lambda txs: None, database=a.name))
    live = a.restore("--to-end", config=a.configured(state_dir=a.tmp_path / "empty-state"))
    assert live.returncode == 1 and "the journal was rewritten, or is of another history" in live.stderr, live.stderr
    local = a.restore("--to-end", "--no-live", config=a.without_key())
    assert local.returncode == 1 and "this replicator wrote" in local.stderr, local.stderr
    a.replace(rewrite(theirs, lambda txs: None, database=a.name, keep_signed=True))  # B's signatures kept
    signed = a.restore("--to-end", "--no-live", config=a.configured(state_dir=a.tmp_path / "empty-state"))
    assert signed.returncode == 1 and f"is of {b.name!r}" in signed.stderr and f"not {a.name!r}" in signed.stderr, \
        signed.stderr


def test_deleted_newest_segments_do_not_make_a_silently_earlier_end(shipped):
    [j] = shipped()
    segments = j.segments()
    last_kept = jf.parse_name(segments[-3].name).last_tx
    for p in segments[-2:]:
        p.unlink()
    live = j.restore("--to-end", config=j.configured(state_dir=j.tmp_path / "empty-state"))
    assert live.returncode == 1 and "behind" in live.stderr and "roll back" in live.stderr, live.stderr
    local = j.restore("--to-end", "--no-live")
    assert local.returncode == 1 and "its newest segments are gone" in local.stderr, local.stderr
    # what is left still restores, when asked for by name or on purpose
    named = j.restore("--to-tx", str(last_kept))
    assert named.returncode == 0 and "its newest segments are missing" in named.stdout, named.stderr
    ok = j.restore("--to-end", "--allow-rollback")
    assert ok.returncode == 0 and f"transaction {last_kept}" in ok.stdout, ok.stderr


def test_list_tells_a_missing_end_and_a_hole_from_history_removed_by_retention(shipped):
    [j] = shipped()
    segments = j.segments()
    segments[-1].unlink()
    listed = run("list", "-c", str(j.config), "--target", "local", "--journal")
    assert "BEHIND the local checkpoint" in listed.stdout, listed.stdout
    segments[2].unlink()
    listed = run("list", "-c", str(j.config), "--target", "local", "--journal")
    assert "GAP: transactions" in listed.stdout and "retention" not in listed.stdout


def test_a_point_before_a_hole_is_restored_from_the_chain_that_holds_it(shipped):
    [j] = shipped()
    segments = j.segments()
    before = jf.parse_name(segments[2].name).last_tx
    segments[4].unlink()  # a hole after transaction `before`
    done = j.restore("--to-tx", str(before))
    assert done.returncode == 0, done.stderr
    assert f"transaction {before}" in done.stdout and "anchor live" in done.stdout


def test_a_forged_header_time_does_not_move_the_point(shipped):
    """The header of the segment holding the point says it began an hour
    later (checksums recomputed): a point found from headers would be the
    end of the segment before, an earlier point, restored without a word."""
    [j] = shipped()
    seg = j.segments()[3]
    blob = seg.read_bytes()
    header, raw = open_segment(blob)
    seg.write_bytes(reseal(blob, raw, first_ts=header["first_ts"] + 3600, last_ts=header["last_ts"] + 3600))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(header["last_ts"]))
    done = j.restore("--to-time", when)
    assert done.returncode == 1 and "was committed at" in done.stderr, done.stdout + done.stderr


def test_a_transaction_with_truncated_values_is_refused_naming_it(shipped):
    """Its values replaced by their SHA-256 and the flag set: Eh and Alh do
    not change, so every hash and anchor agrees; the values would be gone."""
    [j] = shipped()
    seg = j.segments()[2]
    blob = seg.read_bytes()
    _, raw = open_segment(blob)
    txs = records(raw)
    victim = txs[0]
    victim.entries = [Entry(e.key, hashlib.sha256(e.value).digest(), e.metadata) for e in victim.entries]
    victim.truncated_values, victim.truncation = True, b"\x01"
    assert victim.alh() == records(raw)[0].alh()
    payload = b"".join(len_prefixed(t) for t in txs)
    seg.write_bytes(reseal(blob, payload))
    done = j.restore("--to-end")
    assert done.returncode == 1 and f"transaction {victim.id}: its values were truncated" in done.stderr, done.stderr


def len_prefixed(t: Tx) -> bytes:
    import struct
    data = t.bytes()
    return struct.pack(">QI", t.id, len(data)) + data


def test_crafted_transaction_bytes_never_reach_immudb(pair, tmp_path):
    """The last transaction's truncation field emptied: no hash covers it, so
    every check agrees; immudb v1.11.1 panics on it (v[0] of an empty slice)
    and the whole server exits. It must be refused before immudb sees it,
    even when replaying into a running server (servers of the test's own)."""
    from reconciler.admin import ImmudbAdmin
    from reconciler.config.model import ContinuousConfig
    from reconciler.journal.shipper import Journal
    from reconciler.secret import Secret
    p, r = pair()
    admin = ImmudbAdmin("r", "127.0.0.1", r.port, r.username, Secret(r.password), timeout=30)
    admin.create_database("victim")
    immudb_data.write(r, "victim", 5, prefix="k")
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    cfg = write_config(tmp_path, p, r, "victim", targets={"local": target})
    target_cfg = TargetConfig("local", "file", target["path"])
    j = Journal("victim", admin, lambda: JournalStore(target_cfg, "victim"),
                ContinuousConfig("local", segment_max_seconds=60), tmp_path / "spool", "local")
    j.start()
    try:
        wait_for(lambda: j.snapshot()["exported_tx"] >= 5, 60, "five transactions exported")
    finally:
        j.stop()
    [seg] = sorted((Path(target["path"]).parent / "journal" / "victim").iterdir())
    blob = seg.read_bytes()
    _, raw = open_segment(blob)
    txs = records(raw)
    txs[-1].truncation = b""          # u16 0: an empty truncation field
    assert txs[-1].alh() == records(raw)[-1].alh()
    seg.write_bytes(reseal(blob, b"".join(len_prefixed(t) for t in txs)))
    done = run("restore", "-c", str(cfg), "--target", "local", "--database", "victim", "--to-end", "--as", "again",
               "--server", "replica")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"transaction {txs[-1].id}: refused: empty truncation field" in done.stderr, done.stderr
    assert r.process.running() and admin.version() is not None  # the server is up
    assert "again" not in {d.name for d in admin.list_databases()}     # nothing half-restored
    admin.close()


def test_a_compression_bomb_is_refused_without_allocating_it(tmp_path, primary_server, replica_server):
    """33 KB whose zstd frame holds 1 GiB of zeros, its header claiming the
    same: refused with the restore's memory far below that."""
    import zstandard
    bomb = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes(1 << 30))
    h = History.of(1)
    name = unique_name("bomb")
    # format 1 (still read): the one the code before this check wrote and read, so the test tells both apart
    header = {"format": 1, "database": name, "first_tx": 1, "last_tx": 1, "prev_alh": h.txs[0].prev_alh.hex(),
              "last_alh": h.txs[0].alh().hex(), "first_ts": h.txs[0].ts, "last_ts": h.txs[0].ts,
              "transactions": 1, "payload_bytes": 1 << 30, "compression": "zstd",
              "sha256": hashlib.sha256(bomb).hexdigest()}
    seg_name, blob = seal(header, bomb)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    folder = tmp_path / "t" / "journal" / name
    folder.mkdir(parents=True)
    (folder / seg_name).write_bytes(blob)
    cfg = write_config(tmp_path, primary_server, replica_server, name, targets={"local": target})
    measured = subprocess.run(
        [sys.executable, "-c", "import resource, subprocess, sys\n"
         "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
         "sys.stderr.write(done.stderr)\n"
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
         "sys.exit(done.returncode)",
         *cli_argv("restore", "-c", str(cfg), "--target", "local", "--database", name,
                   "--to-end", "--as", "boom", "--server", "replica")], capture_output=True, text=True, cwd=ROOT,
        timeout=600)
    assert measured.returncode == 1, measured.stderr
    assert "transaction 0 where 1 was expected" in measured.stderr, measured.stderr
    peak_kib = int(measured.stdout.strip().splitlines()[-1])
    assert peak_kib < 300 * 1024, f"the restore used {peak_kib} KiB"


@pytest.mark.parametrize("given, said", [("", "empty"), ("nan", "not a time"), ("inf", "not a time"),
                                         ("1e20", "out of range"), ("-5", "out of range"),
                                         ("2026-11-27T14:05:00", "time zone"), ("tomorrow", "ISO 8601")])
def test_odd_times_are_refused_with_one_clear_error(tmp_path, primary_server, replica_server, given, said):
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    cfg = write_config(tmp_path, primary_server, replica_server, "odd", targets={"local": target})
    done = run("restore", "-c", str(cfg), "--target", "local", "--database", "db", "--data-dir",
               str(tmp_path / "d"), "--to-time", given)
    assert done.returncode == 1 and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


# ---------------------------------------------------------------- snapshot archives

@pytest.fixture
def archived(shipped):
    """Two journaled databases, and a backup of them to the same target."""
    a, b = shipped(count=4, databases=2)
    done = run("backup", "-c", str(a.config), "--target", "local")
    assert done.returncode == 0, done.stderr
    [made] = sorted(a.folder.parent.parent.glob("immudb-*.tar.gz"))
    return a, b, made


def rebuild_archive(original: Path, dest: Path, tmp_path: Path, change) -> Path:
    """The archive restored, `change(tree, manifest)` applied, written again
    with checksums and manifest that match: consistent with itself."""
    from reconciler.backup import archive
    from reconciler.backup.restore import restore
    tree = tmp_path / unique_name("tree")
    with open(original, "rb") as stream:
        manifest = restore(stream, tree).manifest.as_dict()
    change(tree, manifest)

    class Memory(list):
        def write(self, data):
            self.append(bytes(data))

    out = Memory()
    writer = archive.ArchiveWriter(out, "gzip")
    for db in manifest["databases"]:
        writer.add_tree(tree / db["name"], db["name"])
    writer.finish(manifest_from_dict({k: v for k, v in manifest.items() if k not in ("files", "format")}))
    dest.write_bytes(b"".join(out))
    with open(dest, "rb") as stream:
        assert archive.verify(stream).ok
    return dest


def test_an_archive_holding_another_databases_history_under_its_name_is_refused(archived, tmp_path):
    """B's files and state put under A's name: the archive is consistent,
    immudb opens it, its proofs hold against its own manifest."""
    a, b, made = archived

    def swap(tree: Path, manifest: dict) -> None:
        shutil.rmtree(tree / a.name)
        (tree / b.name).rename(tree / a.name)
        entries = {d["name"]: d for d in manifest["databases"]}
        forged = dict(entries[b.name], name=a.name)
        manifest["databases"] = [forged]
    forged = rebuild_archive(made, made.with_name("immudb-forged.tar.gz"), tmp_path, swap)
    no_key = a.configured(state_dir=tmp_path / "empty-state", key=False)
    key_only = a.configured(state_dir=tmp_path / "empty-state")
    for command in ("verify", "drill"):
        live = run(command, "-c", str(no_key), str(forged))
        assert live.returncode == 1 and "the archive was rewritten, or is of another history" in live.stderr, \
            live.stdout + live.stderr
        signed = run(command, "-c", str(key_only), str(forged), "--no-live")
        assert signed.returncode == 1 and f"signed state is of {b.name!r}" in signed.stderr, \
            signed.stdout + signed.stderr
        alone = run(command, "-c", str(no_key), str(forged), "--no-live")
        assert alone.returncode == 1 and "nothing outside the target vouches" in alone.stderr, \
            alone.stdout + alone.stderr


def test_an_entry_without_a_state_is_not_restored_on_a_machine_without_the_checkpoint(archived, tmp_path):
    """A real database's entry kept (its state vouched for by the live
    servers) beside one whose state was removed, as if it had been unloaded
    at the backup: nothing but the local checkpoint could vouch for those
    files, and a new machine has none."""
    a, b, made = archived

    def unstate(tree: Path, manifest: dict) -> None:
        for entry in manifest["databases"]:
            if entry["name"] == b.name:
                entry.update(tx_id=None, tx_hash=None, signed=None)
    forged = rebuild_archive(made, made.with_name("immudb-stateless.tar.gz"), tmp_path, unstate)
    new_machine = a.configured(state_dir=tmp_path / "empty-state")
    done = run("restore", "-c", str(new_machine), str(forged), "--data-dir", str(tmp_path / "r"))
    assert done.returncode == 1 and f"recorded no state of {b.name}" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "r").exists()
    only_a = run("restore", "-c", str(new_machine), str(forged), "--data-dir", str(tmp_path / "a"),
                 "--database", a.name)
    assert only_a.returncode == 0, only_a.stdout + only_a.stderr  # the entry that has a state is proven and restored


def test_an_archive_rewritten_in_place_is_refused_by_its_local_checkpoint(archived, tmp_path):
    """A value changed in a database file and the manifest recomputed, the
    archive put back under its own name: only what was written can tell."""
    a, b, made = archived

    def flip(tree: Path, manifest: dict) -> None:
        for f in sorted((tree / a.name).rglob("*")):
            if f.is_file() and f.stat().st_size:
                data = bytearray(f.read_bytes())
                data[-1] ^= 1
                f.write_bytes(bytes(data))
                return
    rebuild_archive(made, made, tmp_path, flip)
    done = run("verify", "-c", str(a.without_key()), str(made), "--no-live")
    assert done.returncode == 1 and "not the ones this replicator wrote" in done.stderr, done.stdout + done.stderr


def test_a_snapshot_base_rewritten_in_place_is_refused_by_a_journal_restore(archived, tmp_path, immudb_build):
    """A restore to a point takes the newest snapshot base, then the
    journal. The base's archive rewritten consistently (a value changed in
    its files, the manifest recomputed) would chain to the journal as well
    as the real one (the Alh is of the transaction log, not the values): it
    must be checked against the archive's own anchors first."""
    a, b, made = archived

    def flip(tree: Path, manifest: dict) -> None:
        for f in sorted((tree / a.name).rglob("*")):
            if f.is_file() and f.stat().st_size and "val_" in f.parent.name:
                data = bytearray(f.read_bytes())
                data[-1] ^= 1
                f.write_bytes(bytes(data))
                return
        raise AssertionError(f"no value log in {sorted((tree / a.name).rglob('*'))}")
    real = a.restore("--to-end", "--immudb-binary", str(immudb_build / "immudb"))
    assert real.returncode == 0 and "snapshot immudb-" in real.stdout, real.stdout + real.stderr
    assert "snapshot anchor local (state)" in real.stdout, real.stdout
    rebuild_archive(made, made, tmp_path, flip)
    for extra in ((), ("--no-live",)):
        done = a.restore("--to-end", "--immudb-binary", str(immudb_build / "immudb"), *extra)
        assert done.returncode == 1 and "snapshot base" in done.stderr, done.stdout + done.stderr
        assert "not the ones this replicator wrote" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len([p for p in tmp_path.glob("restored*") if any(p.iterdir())]) == 1  # only the real one's


def test_an_encrypted_archive_forged_with_the_public_key_is_refused_by_its_local_checkpoint(shipped, tmp_path):
    """Anyone holding the recipient (a public key) can write an archive that
    decrypts. The tool's own encrypted archive, decrypted, a value changed in
    the database's files, rebuilt consistently (files, checksums, manifest;
    its states and the primary's signatures kept) and encrypted to the same
    recipient, in place of the original: age authenticates it and it checks
    out by itself, the signatures and the live servers vouch for the states
    it records (unchanged). What refuses it is the local checkpoint of the
    bytes written; without that (a new machine), the drill."""
    [j] = shipped(count=4, encrypted=True)
    done = run("backup", "-c", str(j.config), "--target", "local")
    assert done.returncode == 0, done.stderr
    [made] = sorted(j.folder.parent.parent.glob("immudb-*.tar.gz"))
    key = j.identity_args
    real = run("verify", "-c", str(j.config), "--target", "local", made.name, *key)
    assert real.returncode == 0 and "anchor local" in real.stdout and "anchor signed" in real.stdout, real.stderr
    plain = tmp_path / "plain.tar.gz"
    plain.write_bytes(j.opened(made.read_bytes()))
    value = f"value-{j.name}_v2_-0".encode()  # the third transaction's value (shipped's writes)

    def change(tree: Path, manifest: dict) -> None:
        holding = [f for f in sorted((tree / j.name).rglob("*")) if f.is_file() and value in f.read_bytes()]
        assert holding, "the value is in none of the database's files"
        for f in holding:
            f.write_bytes(f.read_bytes().replace(value, b"FORGED" + value[6:]))
    forged = rebuild_archive(plain, tmp_path / "forged.tar.gz", tmp_path, change)
    made.write_bytes(j.sealed(forged.read_bytes()))
    from reconciler.backup import archive
    with open(made, "rb") as stream:  # age and the archive's own checks pass: only an anchor can tell
        assert archive.verify(stream, identities=load_identities(j.identity)).ok

    refused = run("verify", "-c", str(j.config), "--target", "local", made.name, *key)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{made.name}: its bytes are not the ones this replicator wrote" in refused.stderr, refused.stderr
    dest = tmp_path / "restored-archive"
    restored = run("restore", "-c", str(j.config), "--target", "local", made.name, "--data-dir", str(dest), *key)
    assert restored.returncode == 1, restored.stdout + restored.stderr
    assert "nothing restored" in restored.stderr and f"{made.name}: its bytes are not the ones this replicator " \
        "wrote" in restored.stderr, restored.stderr
    assert not dest.exists() or list(dest.iterdir()) == []
    for done in (refused, restored):
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    new_machine = j.configured(state_dir=tmp_path / "empty-state")
    drilled = run("drill", "-c", str(new_machine), "--target", "local", made.name, *key)
    assert drilled.returncode == 1 and "drill failed" in drilled.stderr, drilled.stdout + drilled.stderr
    assert f"FAIL {j.name}: " in drilled.stderr, drilled.stderr  # its restored transactions do not hold
    # a restore on a new machine (no checkpoint): signed and live vouch for the states, so the values are proven
    # by opening the extracted files before anything is put in place
    dest = tmp_path / "restored-new-machine"
    restored = run("restore", "-c", str(new_machine), "--target", "local", made.name, "--data-dir", str(dest), *key)
    assert restored.returncode == 1, restored.stdout + restored.stderr
    assert "its files do not hold the history its anchors vouch for" in restored.stderr, restored.stderr
    assert "Traceback" not in restored.stderr and (not dest.exists() or list(dest.iterdir()) == [])


def test_a_real_archive_is_vouched_for_by_every_anchor(archived, tmp_path):
    a, b, made = archived
    done = run("verify", "-c", str(a.config), str(made))
    assert done.returncode == 0, done.stderr
    for anchor in ("anchor local", "anchor signed", "anchor live"):
        assert anchor in done.stdout, done.stdout
    assert "values: not proven" not in done.stdout  # the local checkpoint vouches for the bytes
    # on a new machine (no checkpoint) verify says what it did not prove; a restore proves the values by opening
    # the files, then restores
    new_machine = a.configured(state_dir=tmp_path / "empty-state")
    unproven = run("verify", "-c", str(new_machine), str(made))
    assert unproven.returncode == 0 and "values: not proven here" in unproven.stdout, unproven.stdout
    restored = run("restore", "-c", str(new_machine), str(made), "--data-dir", str(tmp_path / "new-machine"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert sorted(p.name for p in (tmp_path / "new-machine").iterdir()) == sorted([a.name, b.name])
    # without an immudb to prove them with, it says what is missing instead of restoring unproven values
    data = yaml.safe_load(new_machine.read_text())
    data["backup"]["drill"]["immudb_binary"] = str(tmp_path / "no-immudb")
    no_binary = new_machine.with_name("no-binary.yaml")
    no_binary.write_text(yaml.safe_dump(data))
    refused = run("restore", "-c", str(no_binary), str(made), "--data-dir", str(tmp_path / "unproven"))
    assert refused.returncode == 1 and "not for the values in its files" in refused.stderr, refused.stderr
    assert "--immudb-binary" in refused.stderr and not (tmp_path / "unproven").exists()
    drilled = run("drill", "-c", str(a.config), str(made))
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert "exported and chained to it" in drilled.stdout


def test_the_newest_archive_deleted_from_the_target_is_noticed(archived):
    """Someone deletes the newest archive: a drill of the target's newest
    would quietly test the one before, and `list` would not show the loss."""
    a, b, made = archived
    wait_for(lambda: int(time.time()) > int(made.stat().st_mtime), 5, "the next second (archives are named by it)")
    done = run("backup", "-c", str(a.config), "--target", "local")
    assert done.returncode == 0, done.stderr
    newest = max(a.folder.parent.parent.glob("immudb-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    assert newest != made
    newest.unlink()
    drilled = run("drill", "-c", str(a.config), "--target", "local")
    assert drilled.returncode == 1 and f"{newest.name}, is gone from it" in drilled.stderr, drilled.stderr
    listed = run("list", "-c", str(a.config), "--target", "local")
    assert f"{newest.name}  (MISSING: written here, not deleted by retention)" in listed.stdout, listed.stdout
    assert f"{made.name}  (not encrypted; checkpoint: written here)" in listed.stdout
