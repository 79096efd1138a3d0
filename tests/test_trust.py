"""The anchors' own rules (reconciler/trust), without servers: local
checkpoints (private, keyed by place, sealed), the primary's signed states,
and the rule that at least one anchor must vouch. Real servers, real
journals and real tampering are in tests/test_tampering.py."""
from __future__ import annotations

import json
import os
import stat

import pytest

from reconciler.config.model import TargetConfig
from reconciler.journal.replay import ReplayError, parse_time
from reconciler.signed import PublicKey, SignedState, TrustError
from reconciler.trust.anchors import Anchors, Verdict, conclude
from reconciler.trust.checkpoints import Checkpoints, target_identity

TARGET = TargetConfig("local", "file", "/backups/immudb/immudb-{timestamp}.tar.gz")
ALH = bytes(range(32))


def test_a_journal_checkpoint_round_trips_privately(tmp_path):
    points = Checkpoints(tmp_path / "state")
    assert points.journal(TARGET, "db1") is None
    points.record_journal(TARGET, "db1", 42, ALH, "seg")
    got = points.journal(TARGET, "db1")
    assert (got.tx_id, got.alh, got.segment) == (42, ALH, "seg")
    [path] = (tmp_path / "state" / "checkpoints" / "journal").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    points.forget_journal(TARGET, "db1")
    assert points.journal(TARGET, "db1") is None


def test_checkpoints_follow_the_place_not_the_target_name(tmp_path):
    points = Checkpoints(tmp_path)
    points.record_archive(TARGET, "a.tar.gz", "ab" * 32, 10, {"db1": (3, ALH)})
    renamed = TargetConfig("nightly", "file", "/backups/immudb/other-{date}.tar.gz")
    assert points.archive(renamed, "a.tar.gz").databases == {"db1": (3, ALH)}
    elsewhere = TargetConfig("local", "file", "/elsewhere/immudb-{timestamp}.tar.gz")
    assert points.archive(elsewhere, "a.tar.gz") is None
    assert target_identity(TargetConfig("s", "sftp", "/b/x", {"host": "h", "port": 22})) != \
        target_identity(TargetConfig("s", "sftp", "/b/x", {"host": "g", "port": 22}))


def test_a_checkpoint_moved_to_another_name_is_refused(tmp_path):
    """Whoever can write the state folder copies db2's checkpoint over db1's."""
    points = Checkpoints(tmp_path)
    points.record_journal(TARGET, "db1", 5, ALH, "s1")
    points.record_journal(TARGET, "db2", 9, bytes(32), "s2")
    folder = tmp_path / "checkpoints" / "journal"
    by_name = {json.loads(p.read_text())["name"]: p for p in folder.iterdir()}
    by_name["db1"].write_bytes(by_name["db2"].read_bytes())
    with pytest.raises(TrustError, match="is not of journal db1"):
        points.journal(TARGET, "db1")


def test_a_sealed_checkpoint_changed_or_read_with_another_key_is_refused(tmp_path):
    sealed = Checkpoints(tmp_path, key=b"k" * 32)
    sealed.record_journal(TARGET, "db1", 5, ALH, "s1")
    [path] = (tmp_path / "checkpoints" / "journal").iterdir()
    body = json.loads(path.read_text())
    path.write_text(json.dumps(dict(body, tx_id=4)))
    with pytest.raises(TrustError, match="seal does not match"):
        sealed.journal(TARGET, "db1")
    sealed.record_journal(TARGET, "db1", 5, ALH, "s1")
    with pytest.raises(TrustError, match="seal does not match"):
        Checkpoints(tmp_path, key=b"x" * 32).journal(TARGET, "db1")
    assert sealed.journal(TARGET, "db1").tx_id == 5


def test_an_unreadable_checkpoint_is_an_error_not_a_missing_one(tmp_path):
    points = Checkpoints(tmp_path)
    points.record_journal(TARGET, "db1", 5, ALH, "s1")
    [path] = (tmp_path / "checkpoints" / "journal").iterdir()
    path.write_text("{not json")
    with pytest.raises(TrustError, match="unreadable"):
        points.journal(TARGET, "db1")


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    private = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path_factory.mktemp("key") / "primary.pub.pem"
    path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, PublicKey(path)


def sign(private, database: str, tx_id: int, alh: bytes) -> SignedState:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    unsigned = SignedState(database, tx_id, alh, b"")
    return SignedState(database, tx_id, alh, private.sign(unsigned.payload(), ec.ECDSA(hashes.SHA256())))


def test_a_signed_state_is_checked_for_name_transaction_hash_and_key(key_pair, tmp_path):
    private, key = key_pair
    state = sign(private, "orders", 7, ALH)
    state.check(key, "orders", 7, ALH, "x")
    with pytest.raises(TrustError, match="is of 'orders' transaction 7, not 'other' transaction 7"):
        state.check(key, "other", 7, ALH, "x")
    with pytest.raises(TrustError, match="the primary signed"):
        state.check(key, "orders", 7, bytes(32), "x")
    forged = SignedState("orders", 7, bytes(32), state.signature)
    with pytest.raises(TrustError, match="not the primary's"):
        forged.check(key, "orders", 7, bytes(32), "x")
    assert SignedState.from_dict(state.as_dict()) == state
    with pytest.raises(ValueError):
        SignedState.from_dict(dict(state.as_dict(), tx_id="7"))


def test_a_public_key_of_another_kind_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    path = tmp_path / "ed.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(TrustError, match="not an ECDSA P-256 key"):
        PublicKey(path)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(TrustError, match="not a PEM public key"):
        PublicKey(tmp_path / "junk.pem")


def test_one_anchor_must_vouch_for_the_point_unless_the_operator_trusts_the_target():
    vouched = Verdict("live", "replica", 10, "same Alh")
    assert conclude([vouched], Anchors(), 10, "restore") == [vouched]
    with pytest.raises(TrustError, match="nothing outside the target vouches for transaction 11"):
        conclude([vouched], Anchors(), 11, "restore")
    with pytest.raises(TrustError, match="none configured"):
        conclude([], Anchors(), 1, "restore")
    trusted = conclude([], Anchors(unanchored=True), 1, "restore")
    assert trusted[-1].anchor == "none" and "UNANCHORED" in trusted[-1].detail


@pytest.mark.parametrize("text", ["", "  ", "nan", "NaN", "inf", "-inf", "1e20", "-1", "10000-01-01T00:00:00Z",
                                  "2026-11-27T14:05:00", "yesterday", None])
def test_odd_times_are_refused(text):
    with pytest.raises(ReplayError):
        parse_time(text)


def test_good_times_are_read():
    assert parse_time("2026-11-27T14:05:00Z") == 1795788300.0
    assert parse_time(" 1795788300 ") == 1795788300.0
    assert parse_time("0") == 0.0


def test_the_state_folder_is_refused_when_it_is_not_ours(tmp_path):
    """Its checkpoints folder a link somebody prepared, or another user's."""
    from reconciler.errors import ReplicatorError
    from reconciler.trust.checkpoints import ensure_folder
    (tmp_path / "theirs").mkdir()
    (tmp_path / "linked").mkdir()
    os.symlink(tmp_path / "theirs", tmp_path / "linked" / "checkpoints")
    with pytest.raises(ReplicatorError, match="not a folder of this user.*state_dir"):
        ensure_folder(tmp_path / "linked")
    if os.getuid() == 0:  # only root can give a folder away
        (tmp_path / "given" / "checkpoints").mkdir(parents=True)
        os.chown(tmp_path / "given" / "checkpoints", 65534, 65534)
        with pytest.raises(ReplicatorError, match="another user's"):
            ensure_folder(tmp_path / "given")
    ensure_folder(tmp_path / "mine")
    assert stat.S_IMODE((tmp_path / "mine" / "checkpoints").stat().st_mode) == 0o700
