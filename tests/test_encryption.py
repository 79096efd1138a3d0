"""backup.encryption: archives encrypted to age recipients (reconciler/encryption.py).

Pure tests of the stream and the key files first, then real backups on every
target kind: no byte of the databases' keys, values or names on the target,
restore and verify with the identity, one clear error without it, and
configurations that would write in the clear refused."""
from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pyrage
import pytest
import yaml
from pyrage import x25519

from reconciler import config, targets
from reconciler.backup import archive
from reconciler.encryption import (
    Decrypting,
    Encrypting,
    EncryptionError,
    IdentityFile,
    Sealing,
    is_encrypted,
    load_identities,
    load_recipients,
)
from reconciler.errors import ConfigError
from reconciler.journal.format import SUFFIX, parse_name
from reconciler.manifest import from_dict as manifest_from_dict
from tests.support import immudb_data
from tests.support.cli import replicator, system_binary
from tests.support.configs import unique_name, write_config
from tests.support.daemon import Daemon
from tests.support.targets import KINDS, target_config, target_dict
from tests.support.waiting import wait_for


@pytest.fixture
def key(tmp_path):
    """(identity file, recipient) of a fresh age key, as age-keygen writes it."""
    ident = x25519.Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(f"# created: now\n# public key: {ident.to_public()}\n{ident}\n")
    path.chmod(0o600)
    return path, str(ident.to_public())


class _Memory:
    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


# ---------------------------------------------------------------------- the stream, pure

def test_encrypting_then_decrypting_gives_the_bytes_back_whatever_the_chunks(key):
    path, recipient = key
    data = os.urandom(3 * 1024 * 1024 + 17)
    sink = _Memory()
    enc = Encrypting(sink, load_recipients([recipient], []))
    sizes, i = [1, 100, 65536, 65535, 1 << 20, 7], 0
    while i < len(data):
        size = sizes[i % len(sizes)]
        enc.write(data[i:i + size])
        i += size
    enc.close()
    ciphertext = sink.value()
    assert is_encrypted(ciphertext[:32]) and data[:4096] not in ciphertext
    back = io.BufferedReader(Decrypting(io.BytesIO(ciphertext), load_identities(path))).read()
    assert back == data


def _archive(tmp_path, recipient: str | None, content: bytes = b"the-secret-value-" * 1000) -> bytes:
    """An archive of one database, encrypted to `recipient` (None: not encrypted)."""
    tree = tmp_path / f"tree{len(content)}{'' if recipient else '-plain'}" / "db1"
    tree.mkdir(parents=True)
    (tree / "values").write_bytes(content)
    sink = _Memory()
    enc = Encrypting(sink, load_recipients([recipient], [])) if recipient else sink
    writer = archive.ArchiveWriter(enc, "none")
    files = writer.add_tree(tree, "db1")
    writer.finish(manifest_from_dict({
        "tool": "t", "backup_id": "b", "started_at": "s", "finished_at": "f", "compression": "none",
        "databases": [{"name": "db1", "tx_id": 1, "tx_hash": "0" * 64, "files": len(files),
                       "bytes": len(content)}]}))
    if recipient:
        enc.close()
    return sink.value()


def test_an_encrypted_archive_reads_only_with_its_identity_and_only_unchanged(tmp_path, key):
    path, recipient = key
    blob = _archive(tmp_path, recipient)
    assert b"the-secret-value" not in blob and b"db1" not in blob and b"MANIFEST" not in blob
    assert archive.verify(io.BytesIO(blob), identities=load_identities(path)).ok
    without = archive.verify(io.BytesIO(blob))
    assert not without.ok and "encrypted (age): give --identity" in without.problems[0]
    other = tmp_path / "other.txt"
    other.write_text(str(x25519.Identity.generate()) + "\n")
    wrong = archive.verify(io.BytesIO(blob), identities=load_identities(other))
    assert not wrong.ok and "no given identity is among its recipients" in wrong.problems[0]
    for name, damaged in (("flipped", blob[:300] + bytes([blob[300] ^ 1]) + blob[301:]),
                          ("cut", blob[:-40]), ("lengthened", blob + b"\0" * 64)):
        got = archive.verify(io.BytesIO(damaged), identities=load_identities(path))
        assert not got.ok, name
        assert any("does not authenticate" in p or "truncated or corrupt" in p for p in got.problems), (
            name, got.problems)


def test_damage_after_the_tars_end_is_caught_too_whatever_falls_on_a_read_boundary(tmp_path, key):
    """The tar ends before the stream does (its last record, age's last
    chunk): a reader that stopped at the end-of-archive block would let a
    lengthened, cut or changed last chunk pass. This size puts a 1 MiB read
    boundary between the end block and the end of the stream."""
    path, recipient = key
    ids = load_identities(path)
    blob = _archive(tmp_path, recipient, os.urandom(1042576))
    assert archive.verify(io.BytesIO(blob), identities=ids).ok
    for name, damaged in (("lengthened", blob + os.urandom(65536)), ("one byte more", blob + b"\0"),
                          ("last byte flipped", blob[:-1] + bytes([blob[-1] ^ 1])), ("cut", blob[:-10])):
        got = archive.verify(io.BytesIO(damaged), identities=ids)
        assert not got.ok and got.sealed, (name, got.problems)


def test_a_failed_read_leaves_no_decrypting_thread_behind(tmp_path, key):
    import threading
    path, recipient = key
    blob = _archive(tmp_path, recipient, os.urandom(4 << 20))
    damaged = blob[:100_000] + bytes([blob[100_000] ^ 1]) + blob[100_001:]
    assert not archive.verify(io.BytesIO(damaged), identities=load_identities(path)).ok
    from tests.support.waiting import wait_for
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "decrypt"], 10, "the decrypt thread to end")


class _Source:
    """A target's stream as S3 and SFTP hand it out: read(n) and close(),
    not an io.BufferedReader; reading it once closed fails."""

    def __init__(self, data: bytes):
        self.data, self.closed = io.BytesIO(data), False

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read of closed file")
        return self.data.read(n)

    def close(self) -> None:
        self.closed = True


def test_a_segment_closes_its_stream_with_it_and_an_archive_leaves_its_stream_to_the_caller(tmp_path, key):
    """A segment's stream (Sealing.opened) is its reader's: closing it closes
    the target's stream, encrypted or not (encrypted: once the decrypting
    thread has let go of it, which close waits for). An archive's stream is
    archive.read's caller's, who reads on after the archive's end (the trust
    checks drain it to hash the whole file) and closes it: read, and its
    reader collected, it is still open."""
    import gc

    from reconciler.trust.archives import HashingReader
    path, recipient = key
    sealing = Sealing(load_recipients([recipient], []), load_identities(path))
    for blob in (sealing.seal(b"segment" * 10000), b"segment" * 10000):
        source = _Source(blob)
        with sealing.opened(source, "segment s") as stream:
            assert stream.read(7) == b"segment"
        assert source.closed, is_encrypted(blob)
    for blob in (_archive(tmp_path, recipient), _archive(tmp_path, None)):
        source = _Source(blob)
        reader = HashingReader(source)
        assert archive.read(reader, identities=load_identities(path)).ok
        gc.collect()
        assert not source.closed, is_encrypted(blob)
        reader.drain(len(blob))
        assert reader.size == len(blob)


def test_an_aborted_encryption_ends_its_thread_and_finishes_no_stream(key):
    import threading
    import time as clock
    path, recipient = key

    class Slow(_Memory):
        def write(self, data):
            clock.sleep(0.2)
            return super().write(data)
    sink = Slow()
    enc = Encrypting(sink, load_recipients([recipient], []))
    for _ in range(12):
        enc.write(os.urandom(65536))
    enc.abort()
    from tests.support.waiting import wait_for
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "encrypt"], 30, "the encrypt thread to end")
    import pyrage
    with pytest.raises(Exception):  # noqa: B017 - whatever pyrage says, even with the right identity: no whole age file
        pyrage.decrypt(sink.value(), load_identities(path))


# ---------------------------------------------------------------------- key files, pure

def test_recipients_that_do_not_parse_are_refused_naming_where(tmp_path):
    with pytest.raises(EncryptionError, match=r"recipients\[0\]: not a valid recipient"):
        load_recipients(["age1notakey"], [])
    listed = tmp_path / "recipients.txt"
    listed.write_text("# the team\n\n" + str(x25519.Identity.generate().to_public()) + "\nssh-ed25519 AAAAbroken\n")
    with pytest.raises(EncryptionError, match=r"recipients.txt line 4: not a valid recipient"):
        load_recipients([], [listed])
    with pytest.raises(EncryptionError, match="cannot be read"):
        load_recipients([], [tmp_path / "missing.txt"])
    with pytest.raises(EncryptionError, match="names no recipient"):
        load_recipients([], [])


def test_an_identity_file_that_does_not_parse_is_refused_without_printing_it(tmp_path):
    secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    path = tmp_path / "bad.txt"
    path.write_text(secret + "\n")
    with pytest.raises(EncryptionError) as caught:
        load_identities(path)
    assert secret not in str(caught.value) and "not a valid age or SSH identity" in str(caught.value)
    path.write_text("nothing here\n")
    with pytest.raises(EncryptionError, match="holds no identity"):
        load_identities(path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # would block a plain read forever
    with pytest.raises(EncryptionError, match="not a regular file"):
        load_identities(fifo)
    with pytest.raises(EncryptionError, match="not a regular file"):
        load_recipients([], [fifo])
    big = tmp_path / "big"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(EncryptionError, match="more than a key file holds"):
        load_identities(big)


# ---------------------------------------------------------------------- configuration: fail closed

MINIMAL = {"primary": {"host": "127.0.0.1", "password": "Primary-pw-1"},
           "replica": {"host": "127.0.0.1", "port": 3323, "password": "Replica-pw-1", "data_dir": "/var/lib/immudb"},
           "follower": {"password": "Follower-pw-1"}}


def _problems(tmp_path, backup: dict) -> str:
    path = tmp_path / "replicator.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "backup": backup}))
    try:
        config.load(path, env={})
    except ConfigError as exc:
        return "\n".join(exc.problems)
    return ""


def test_the_identity_file_is_read_only_for_what_is_encrypted(tmp_path, key):
    """--identity (or backup.encryption.identity_file) names the private
    key, and only an encrypted archive or segment reads it: a plain archive
    verifies and restores with an identity file that cannot be read; an
    encrypted one is refused saying why, nothing restored. A configured
    identity_file that cannot be read is still refused when the
    configuration is loaded."""
    path, recipient = key
    missing = tmp_path / "no-such-key.txt"
    plain, sealed = _archive(tmp_path, None), _archive(tmp_path, recipient)
    assert archive.verify(io.BytesIO(plain), identities=IdentityFile(missing)).ok
    refused = archive.verify(io.BytesIO(sealed), identities=IdentityFile(missing))
    assert refused.sealed and f"identity file {missing}: cannot be read" in refused.problems[0], refused.problems
    assert archive.verify(io.BytesIO(sealed), identities=IdentityFile(path)).ok
    sealing = Sealing(load_recipients([recipient], []), IdentityFile(missing))
    assert sealing.opened(io.BytesIO(b"segment"), "segment s").read() == b"segment"
    with pytest.raises(EncryptionError, match="cannot be read"):
        sealing.opened(io.BytesIO(sealing.seal(b"segment")), "segment s")

    (tmp_path / "plain.tar").write_bytes(plain)
    (tmp_path / "sealed.tar").write_bytes(sealed)
    done = replicator("restore", str(tmp_path / "plain.tar"), "--data-dir", str(tmp_path / "r1"),
                      "--identity", str(missing), "--unanchored")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "r1" / "db1" / "values").read_bytes() == b"the-secret-value-" * 1000
    done = replicator("restore", str(tmp_path / "sealed.tar"), "--data-dir", str(tmp_path / "r2"),
                      "--identity", str(missing), "--unanchored")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"nothing restored: identity file {missing}: cannot be read" in done.stderr, done.stderr
    assert not (tmp_path / "r2").exists() or list((tmp_path / "r2").iterdir()) == []
    assert f"identity file {missing}: cannot be read" in _problems(tmp_path, {
        "encryption": {"recipients": [recipient], "identity_file": str(missing)}})


def test_encryption_that_cannot_be_applied_or_does_not_cover_everything_is_refused(tmp_path, key):
    path, recipient = key
    targets_ = {"t": {"type": "file", "path": str(tmp_path / "out" / "r-{timestamp}.tar.gz")}}
    assert _problems(tmp_path, {"targets": targets_, "encryption": {"recipients": [recipient]}}) == ""
    assert "not a valid recipient" in _problems(tmp_path, {"encryption": {"recipients": ["age1nope"]}})
    assert "cannot be read" in _problems(tmp_path, {"encryption": {"recipients_file": str(tmp_path / "none")}})
    assert "names an identity but no recipient" in _problems(tmp_path, {"encryption": {"identity_file": str(path)}})
    # a variable set to nothing, or a section left empty, never means "in the clear" silently
    assert "recipients_file" in _problems(tmp_path, {"encryption": {"recipients_file": ""}})
    assert "names no recipient" in _problems(tmp_path, {"encryption": {"recipients": []}})
    assert "a drill decrypts the archive" in _problems(tmp_path, {
        "targets": targets_, "encryption": {"recipients": [recipient]},
        "schedules": [{"cron": "0 4 * * *", "target": "t", "action": "drill"}]})
    assert "set backup.encryption.identity_file" in _problems(
        tmp_path, {"verify_after_upload": "full", "encryption": {"recipients": [recipient]}})
    assert _problems(tmp_path, {"verify_after_upload": "full",
                                "encryption": {"recipients": [recipient], "identity_file": str(path)}}) == ""
    assert _problems(tmp_path, {"targets": targets_, "continuous": {"target": "t"},
                                "encryption": {"recipients": [recipient]}}) == ""  # segments are encrypted too


# ---------------------------------------------------------------------- real backups on every kind

def _yaml_target(t) -> dict:
    out = {"type": t.kind, "path": t.path}
    for k, v in t.options.items():
        out[k] = v.reveal() if hasattr(v, "reveal") else v
    return out


def _stored(target_cfg) -> tuple[str, bytes]:
    with targets.build(target_cfg) as target:
        found = target.list()
        assert len(found) == 1, found
        with target.read(found[0].name) as stream:
            return found[0].name, stream.read()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_encrypted_backup_leaves_no_plaintext_on_the_target_and_restores_with_its_identity(
        kind, tmp_path, request, primary_server, replica_server, replicated, key):
    prefix, names, written = replicated
    identity, recipient = key
    secrets = [v for w in written.values() for v in w.values()] + [k for w in written.values() for k in w]
    # the control: uncompressed and unencrypted, the values are on the target as they are (the check can fail)
    plain = target_config(kind, tmp_path / "plain", request)
    cfg = write_config(tmp_path, primary_server, replica_server, prefix, name="plain.yaml", compression="none",
                       targets={"t": _yaml_target(plain)})
    done = replicator("backup", "-c", str(cfg), "--target", "t")
    assert done.returncode == 0, done.stderr
    assert all(s in _stored(plain)[1] for s in secrets)

    sealed = target_config(kind, tmp_path / "sealed", request)
    cfg = write_config(tmp_path, primary_server, replica_server, prefix, name="sealed.yaml", compression="none",
                       targets={"t": _yaml_target(sealed)}, encryption={"recipients": [recipient]})
    done = replicator("backup", "-c", str(cfg), "--target", "t")
    assert done.returncode == 0, done.stderr
    assert "proven on the target: " in done.stdout  # the read-back works on the ciphertext, without an identity
    name, blob = _stored(sealed)
    assert is_encrypted(blob[:32])
    leaked = [s for s in secrets + [n.encode() for n in names] + [b"MANIFEST.json", b"immudb-replicator"]
              if s in blob]
    assert leaked == []

    listed = replicator("list", "-c", str(cfg), "--target", "t")
    assert listed.returncode == 0 and f"{name}  (encrypted (age); " in listed.stdout, listed.stdout + listed.stderr
    refused = replicator("verify", name, "--target", "t", "-c", str(cfg))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "encrypted (age): give --identity" in refused.stderr
    checked = replicator("verify", name, "--target", "t", "-c", str(cfg), "--identity", str(identity))
    assert checked.returncode == 0, checked.stderr
    data_dir = tmp_path / "restored"
    data_dir.mkdir()
    restored = replicator("restore", name, "--target", "t", "-c", str(cfg), "--identity", str(identity),
                          "--data-dir", str(data_dir))
    assert restored.returncode == 0, restored.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(names)
    assert identity.read_text().splitlines()[-1] not in checked.stdout + checked.stderr + restored.stdout
    # the age tool itself decrypts it: an operator needs nothing of ours to read a backup
    (tmp_path / "sealed.tar").write_bytes(blob)
    age = system_binary("age", "age")
    opened = subprocess.run([age, "-d", "-i", str(identity), str(tmp_path / "sealed.tar")], capture_output=True,
                            timeout=120)
    assert opened.returncode == 0, opened.stderr
    listing = subprocess.run(["tar", "-t"], input=opened.stdout, capture_output=True, timeout=120)
    assert listing.returncode == 0 and b"MANIFEST.json" in listing.stdout


def test_an_unreadable_recipients_file_fails_the_backup_before_anything_is_written(
        tmp_path, primary_server, replica_server, replicated, key):
    prefix, _, _ = replicated
    listed = tmp_path / "recipients.txt"
    listed.write_text(key[1] + "\n")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, primary_server, replica_server, prefix, name="enc.yaml",
                       targets={"t": {"type": "file", "path": str(out / "r-{timestamp}.tar.gz"), "create_dirs": True}},
                       encryption={"recipients_file": str(listed)})
    listed.write_text("ssh-ed25519 not-a-key\n")  # broken after validation: read again at the backup
    done = replicator("backup", "-c", str(cfg), "--target", "t")
    assert done.returncode != 0 and "not a valid recipient" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_status_and_metrics_say_which_targets_encrypt_and_an_inline_request_follows_the_configuration(
        tmp_path, primary_server, replica_server, replicated, key):
    """POST /backup/start with the Go tool's inline target: encrypted too,
    because encryption is the configuration's, not the target's."""
    prefix, names, written = replicated
    identity, recipient = key
    out = tmp_path / "out"
    d = Daemon(tmp_path, primary_server, replica_server, prefix,
               backup={"compression": "none", "encryption": {"recipients": [recipient]},
                       "targets": {"t": {"type": "file", "path": str(out / "n-{timestamp}.tar.gz"),
                                         "create_dirs": True}}}).start()
    try:
        assert d.request("GET", "/status")[1]["targets"] == {"t": {"kind": "file", "encrypted": True,
                                                                   "object_lock": None}}
        _, text = d.request("GET", "/metrics", token=None)
        assert 'replicator_target_encrypted{target="t"} 1.0' in text
        assert 'replicator_target_object_lock{target="t"} 0.0' in text
        out.mkdir(exist_ok=True)
        status, answer = d.request("POST", "/backup/start", {"type": "file", "path": str(out / "inline.tar.gz")})
        assert status == 202, answer
        assert d.wait_backup(timeout=180)["last_result"]["result"] == "ok"
    finally:
        d.stop()
    blob = (out / "inline.tar.gz").read_bytes()
    assert is_encrypted(blob[:32])
    assert [v for w in written.values() for v in w.values() if v in blob] == []


def test_journal_segments_are_encrypted_and_replay_only_with_the_identity(
        tmp_path, followed, primary_server, replica_server, immudb_build, key):
    identity, recipient = key
    prefix, name = followed(0)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    d = Daemon(tmp_path, primary_server, replica_server, prefix, reconcile={"interval": 1},
               backup={"targets": {"local": target}, "encryption": {"recipients": [recipient]},
                       "continuous": {"target": "local", "segment_max_seconds": 0.3,
                                      "spool_dir": str(tmp_path / "spool")},
                       "drill": {"immudb_binary": str(immudb_build / "immudb"),
                                 "scratch_dir": str(tmp_path / "scratch")}}).start()
    try:
        written = immudb_data.write(primary_server, name, 6, prefix="secret_")
        want = immudb_data.state(primary_server, name)[0]
        d.wait_shipped(name, want)
    finally:
        assert d.stop() == 0
    segments = sorted(p for p in (tmp_path / "t" / "journal" / name).iterdir() if p.name.endswith(SUFFIX))
    assert segments
    for segment in segments:
        blob = segment.read_bytes()
        assert is_encrypted(blob[:32]), segment.name
        assert name.encode() not in blob and not [v for v in written.values() if v in blob]

    listed = replicator("list", "-c", str(d.config_path), "--target", "local", "--journal")
    assert listed.returncode == 0 and "(encrypted)" in listed.stdout, listed.stdout + listed.stderr
    refused = replicator("restore", "-c", str(d.config_path), "--target", "local", "--database", name, "--to-end",
                         "--data-dir", str(tmp_path / "r1"))
    assert refused.returncode != 0 and "encrypted (age): give --identity" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    done = replicator("restore", "-c", str(d.config_path), "--target", "local", "--database", name, "--to-end",
                      "--data-dir", str(tmp_path / "r2"), "--identity", str(identity))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"transaction {want}" in done.stdout or str(want) in done.stdout, done.stdout


def _one_error_line(done) -> str:
    """The single line a refused command printed (no traceback, nothing else)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), done.stdout + done.stderr
    return lines[0]


def _databases(admin) -> set[str]:
    return {db.name for db in admin.list_databases()}


def test_journal_segments_at_an_sftp_target_hold_no_plaintext_and_replay_only_with_the_identity(
        tmp_path, request, followed, primary_server, replica_server, replica, sftp_server, key):
    """The segments as the SFTP server stores them (its own files, read
    raw): age files in which no key, value or the database's name appears.
    The values are random bytes, which zstd keeps as they are: decrypted,
    the same files hold every one of them (the check can fail)."""
    identity, recipient = key
    prefix, name = followed(0)
    target = target_dict("sftp", tmp_path, request)
    stored = Path(target["path"]).parent  # the target's folder, on the SFTP server's disk
    d = Daemon(tmp_path, primary_server, replica_server, prefix, reconcile={"interval": 1},
               backup={"targets": {"remote": target}, "encryption": {"recipients": [recipient]},
                       "continuous": {"target": "remote", "segment_max_seconds": 0.3,
                                      "spool_dir": str(tmp_path / "spool")}}).start()
    try:
        written = immudb_data.write_random(primary_server, name, 6)
        want = immudb_data.state(primary_server, name)[0]
        d.wait_shipped(name, want)
    finally:
        assert d.stop() == 0
    files = sorted(p for p in stored.rglob("*") if p.is_file())
    assert files and all(p.parent == stored / "journal" / name and p.name.endswith(SUFFIX) for p in files), files
    secrets = [*written, *written.values(), name.encode()]
    for segment in files:
        blob = segment.read_bytes()
        assert is_encrypted(blob[:32]), segment.name
        assert [s for s in secrets if s in blob] == [], segment.name
    opened = b"".join(pyrage.decrypt(p.read_bytes(), load_identities(identity)) for p in files)
    assert [s for s in secrets if s not in opened] == []  # what an unencrypted journal would have stored

    restore = ("restore", "-c", str(d.config_path), "--target", "remote", "--database", name, "--to-end",
               "--server", "replica")
    nokey, wrongkey = unique_name("nokey"), unique_name("wrongkey")
    line = _one_error_line(replicator(*restore, "--as", nokey))
    assert "is encrypted (age): give --identity" in line, line
    other = tmp_path / "other.txt"
    other.write_text(f"{x25519.Identity.generate()}\n")
    line = _one_error_line(replicator(*restore, "--as", wrongkey, "--identity", str(other)))
    assert "cannot be decrypted: no given identity is among its recipients" in line, line
    assert not {nokey, wrongkey} & _databases(replica)  # nothing half-restored
    back = unique_name("back")
    done = replicator(*restore, "--as", back, "--identity", str(identity))
    assert done.returncode == 0 and f"transaction {want}" in done.stdout, done.stdout + done.stderr
    assert immudb_data.read(replica_server, back, written) == written


def test_keys_over_time_a_new_recipient_applies_to_the_next_archive_and_old_ones_keep_theirs(
        tmp_path, primary_server, replica_server, replicated, key):
    prefix, _, _ = replicated
    old_identity, old_recipient = key
    new = x25519.Identity.generate()
    new_identity = tmp_path / "new-key.txt"
    new_identity.write_text(f"{new}\n")
    listed = tmp_path / "recipients.txt"
    listed.write_text(f"# the restore team\n{old_recipient}\n")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, primary_server, replica_server, prefix, name="rotating.yaml",
                       targets={"t": {"type": "file", "path": str(out / "r-{timestamp}.tar.gz"), "create_dirs": True}},
                       encryption={"recipients_file": str(listed)})
    assert replicator("backup", "-c", str(cfg), "--target", "t").returncode == 0
    [first] = sorted(out.iterdir())
    listed.write_text(f"{new.to_public()}\n")  # the old key retired: read again at the next backup
    wait_for(lambda: time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) not in first.name, 5, "the next second")
    assert replicator("backup", "-c", str(cfg), "--target", "t").returncode == 0
    second = next(p for p in sorted(out.iterdir()) if p != first)
    for archive_path, opens, refuses in ((first, old_identity, new_identity), (second, new_identity, old_identity)):
        ok = replicator("verify", str(archive_path), "-c", str(cfg), "--identity", str(opens))
        assert ok.returncode == 0, ok.stderr
        no = replicator("verify", str(archive_path), "-c", str(cfg), "--identity", str(refuses))
        assert no.returncode != 0 and "no given identity is among its recipients" in no.stderr, no.stderr


def _opens(blob: bytes, identity: Path) -> bool:
    try:
        pyrage.decrypt(blob, load_identities(identity))
    except pyrage.DecryptError:
        return False
    return True


def test_a_journal_switching_recipients_encrypts_what_follows_to_the_new_key_and_restores_with_both(
        tmp_path, followed, primary_server, replica_server, replica, key):
    """recipients_file changes from key A to key B while the daemon runs:
    its journal restarts on it by itself (reconcile.interval stays an hour:
    only the journals' own check sees the file), and every segment after
    opens with B only, every one before with A only. A restore to the end
    needs both: one identity alone is refused naming the first segment it
    cannot open; a file holding both identities restores everything."""
    a_identity, a_recipient = key
    b = x25519.Identity.generate()
    b_identity = tmp_path / "b-key.txt"
    b_identity.write_text(f"{b}\n")
    both = tmp_path / "both-keys.txt"
    both.write_text(a_identity.read_text() + b_identity.read_text())
    listed = tmp_path / "recipients.txt"
    listed.write_text(f"{a_recipient}\n")
    prefix, name = followed(0)
    folder = tmp_path / "t" / "journal" / name
    d = Daemon(tmp_path, primary_server, replica_server, prefix,
               backup={"targets": {"local": {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}},
                       "encryption": {"recipients_file": str(listed)},
                       "continuous": {"target": "local", "segment_max_seconds": 0.3,
                                      "spool_dir": str(tmp_path / "spool")}}).start()

    def segments() -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    try:
        written = immudb_data.write(primary_server, name, 3, prefix="before_")
        d.wait_shipped(name, immudb_data.state(primary_server, name)[0])
        old = segments()
        changed_at = time.time()
        staged = listed.with_suffix(".new")
        staged.write_text(f"# key A retired\n{b.to_public()}\n")
        staged.replace(listed)
        wait_for(lambda: (d.journal(name) or {}).get("since", 0) > changed_at, 30,
                 "the journal restarted on the new recipients (README: within 30 s)")
        written.update(immudb_data.write(primary_server, name, 3, prefix="after_"))
        want = immudb_data.state(primary_server, name)[0]
        d.wait_shipped(name, want)
    finally:
        assert d.stop() == 0
    new = [p for p in segments() if p not in old]
    assert old and new, (old, new)
    assert parse_name(new[0].name).first_tx > parse_name(old[-1].name).last_tx  # what followed, not copies
    for segment in old:
        blob = segment.read_bytes()
        assert _opens(blob, a_identity) and not _opens(blob, b_identity), segment.name
    for segment in new:
        blob = segment.read_bytes()
        assert _opens(blob, b_identity) and not _opens(blob, a_identity), segment.name

    restore = ("restore", "-c", str(d.config_path), "--target", "local", "--database", name, "--to-end",
               "--server", "replica")
    for identity, unreadable in ((a_identity, new[0]), (b_identity, old[0])):
        attempt = unique_name("onekey")
        line = _one_error_line(replicator(*restore, "--as", attempt, "--identity", str(identity)))
        assert f"segment {unreadable.name} cannot be decrypted: no given identity is among its recipients" in line, \
            line
        assert attempt not in _databases(replica)  # nothing half-restored
    back = unique_name("back")
    done = replicator(*restore, "--as", back, "--identity", str(both))
    assert done.returncode == 0 and f"transaction {want}" in done.stdout, done.stdout + done.stderr
    assert immudb_data.read(replica_server, back, written) == written
    # or each key in its own file, --identity given twice
    again = unique_name("back")
    done = replicator(*restore, "--as", again, "--identity", str(a_identity), "--identity", str(b_identity))
    assert done.returncode == 0 and f"transaction {want}" in done.stdout, done.stdout + done.stderr
    assert immudb_data.read(replica_server, again, written) == written
