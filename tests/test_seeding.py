"""Replicas seeded from backups (`reconcile.seed_from`, issue 24): on the real
servers, a new replica server's databases are created from the newest
archive's files and follow the primary from there; an archive that is not
of the primary's history is refused, and the replica replicates its whole
history instead. docs/experiments/seeding-replicas.md has the experiment
this rests on (immudb follows from the files' next transaction)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reconciler import config
from reconciler.admin import ImmudbAdmin
from reconciler.backup.job import Backups
from reconciler.reconcile import Reconciler
from tests.support import immudb_data
from tests.support.configs import write_config
from tests.support.servers import ImmudbServer, admin_for


def _pass(path: Path) -> None:
    rec = Reconciler.from_config(config.load(path, env={}))
    try:
        assert rec.run_pass().ok
    finally:
        rec.close()


@pytest.fixture
def backed_up(tmp_path, pair):
    """A primary with database seedme (30 transactions after its first),
    a replica of it, and an archive of that replica at target t."""
    primary, replica = pair()
    with admin_for(primary, "primary") as admin:
        admin.create_database("seedme")
    written = immudb_data.write(primary, "seedme", 30, prefix="early")
    target = {"t": {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}}
    first = write_config(tmp_path, primary, replica, "seed", name="first.yaml", targets=target,
                         trust={"state_dir": str(tmp_path / "state")})
    _pass(first)
    want, got = immudb_data.wait_caught_up(primary, replica, "seedme", "seedme")
    assert got == want
    cfg = config.load(first, env={})
    assert Backups(cfg).run(cfg.backup.targets["t"]).ok
    return primary, target, written, want


def test_a_new_replica_is_created_from_the_newest_archive_and_follows_on_from_it(tmp_path, backed_up, caplog,
                                                                                 monkeypatch, immudb_build):
    primary, target, written, at_backup = backed_up
    later = immudb_data.write(primary, "seedme", 5, prefix="late")
    fresh = ImmudbServer("seeded", tmp_path / "r2").start()
    try:
        seen = {}
        create = ImmudbAdmin.create_replica

        def spying(self, name, *args, **kwargs):  # what the data dir holds when immudb is asked to create it
            folder = fresh.data_dir / name
            seen[name] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None
            return create(self, name, *args, **kwargs)
        monkeypatch.setattr(ImmudbAdmin, "create_replica", spying)
        second = write_config(tmp_path, primary, fresh, "seed", name="second.yaml", targets=target,
                              trust={"state_dir": str(tmp_path / "state")}, seed_from="t")
        with caplog.at_level(logging.INFO):
            _pass(second)
        assert seen["seedme"], "the archive's files were not in place when the replica was created"
        assert any("val_0" in p for p in seen["seedme"]), seen
        [seeded] = [r.fields for r in caplog.records if r.getMessage() == "replica_seeded"]
        assert seeded["database"] == "seedme" and seeded["tx_id"] == at_backup[0], seeded
        want, got = immudb_data.wait_caught_up(primary, fresh, "seedme", "seedme", timeout=60)
        assert got == want
        values = immudb_data.read(fresh, "seedme", [*written, *later])
        assert values == {**written, **later}
    finally:
        fresh.stop()


def test_an_archive_of_another_history_is_not_seeded_from(tmp_path, backed_up, caplog, immudb_build):
    """The primary database the new replica follows (seedother, renamed to
    seedme on the replica) has a history of its own: the archive's seedme
    is at a transaction whose Alh the primary does not have. immudb would
    not notice; the live anchor does, and the replica replicates its own
    history from transaction 1. Here without the local checkpoint: the
    archive's values are proven by opening them first (backup.drill)."""
    primary, target, _, _ = backed_up
    with admin_for(primary, "primary") as admin:
        admin.create_database("seedother")
    theirs = immudb_data.write(primary, "seedother", 40, prefix="other")
    fresh = ImmudbServer("seeded", tmp_path / "r2").start()
    try:
        second = write_config(tmp_path, primary, fresh, "seed", name="second.yaml", targets=target,
                              trust={"state_dir": str(tmp_path / "other-state")},
                              reconcile={"databases": {"include": ["seedother"]}, "rename": {"seedother": "seedme"},
                                         "seed_from": "t"},
                              drill={"immudb_binary": str(immudb_build / "immudb")})
        with caplog.at_level(logging.INFO):
            _pass(second)
        names = [r.getMessage() for r in caplog.records]
        assert "replica_seeded" not in names, names
        [refused] = [r.fields for r in caplog.records if r.getMessage() == "replica_not_seeded"]
        assert "another history" in refused["reason"] or "Alh" in refused["reason"], refused
        want, got = immudb_data.wait_caught_up(primary, fresh, "seedother", "seedme", timeout=60)
        assert got == want
        assert immudb_data.read(fresh, "seedme", list(theirs)) == theirs
    finally:
        fresh.stop()
