"""Restore drills (`replicator drill`): a real backup of real replica
databases, restored and opened by a throwaway immudb; and archives
rewritten so consistently that `verify` passes, which the drill must fail."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from reconciler.backup import archive
from reconciler.backup.restore import restore
from reconciler.manifest import from_dict as manifest_from_dict
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config

ROOT = Path(__file__).resolve().parent.parent


run = replicator


@pytest.fixture
def backed_up(tmp_path, primary_server, replica_server, replicated, immudb_build):
    """A configuration with a file target, drill settings and one backup in it: (config path, archive path)."""
    prefix, names, _ = replicated
    path = write_config(tmp_path, primary_server, replica_server, prefix,
                        targets={"local": {"type": "file", "path": str(tmp_path / "out" / "d-{timestamp}.tar.gz")}})
    data = yaml.safe_load(path.read_text())
    data["backup"]["drill"] = {"immudb_binary": str(immudb_build / "immudb"), "scratch_dir": str(tmp_path / "scratch")}
    path.write_text(yaml.safe_dump(data))
    done = run("backup", "-c", str(path), "--target", "local")
    assert done.returncode == 0, done.stderr
    [made] = (tmp_path / "out").iterdir()
    return path, made


def rewrite(original: Path, dest: Path, tmp_path: Path, change) -> Path:
    """The archive restored, `change(data_dir, manifest)` applied, and written
    again with checksums that match: what `verify` accepts."""
    tree = tmp_path / unique_name("tree")
    with open(original, "rb") as stream:
        manifest = restore(stream, tree).manifest.as_dict()
    change(tree, manifest)
    out = io.BytesIO()

    class Memory:
        def write(self, data):
            out.write(data)

    writer = archive.ArchiveWriter(Memory(), "gzip")
    for db in manifest["databases"]:
        writer.add_tree(tree / db["name"], db["name"])
    writer.finish(manifest_from_dict({k: v for k, v in manifest.items() if k not in ("files", "format")}))
    dest.write_bytes(out.getvalue())
    with open(dest, "rb") as stream:
        assert archive.verify(stream).ok  # consistent with itself: verify cannot tell
    return dest


def test_drill_of_the_newest_archive_at_a_target_passes(backed_up, replicated):
    path, _ = backed_up
    _, names, _ = replicated
    done = run("drill", "-c", str(path), "--target", "local")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drill OK" in done.stdout
    for name in names:
        assert f"  {name}: ok: transaction " in done.stdout and "keys proven" in done.stdout
    assert not list((Path(path).parent / "scratch").iterdir())  # nothing left behind


@pytest.mark.faults
def test_drill_fails_an_archive_whose_value_was_changed_with_its_checksums(backed_up, replicated, tmp_path):
    path, made = backed_up
    prefix, names, written = replicated
    victim = names[1]
    value = next(iter(written[victim].values()))

    def flip_a_value(tree: Path, manifest: dict) -> None:
        for f in (tree / victim).rglob("*"):
            if f.is_file() and value in f.read_bytes():
                data = bytearray(f.read_bytes())
                data[data.index(value)] ^= 0x01
                f.write_bytes(bytes(data))
                return
        raise AssertionError("the value is in no file")

    tampered = rewrite(made, tmp_path / "tampered.tar.gz", tmp_path, flip_a_value)
    done = run("drill", "-c", str(path), str(tampered))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"FAIL {victim}:" in done.stderr and "drill failed" in done.stderr
    assert all(f"  {n}: ok:" in done.stdout for n in names if n != victim)


@pytest.mark.faults
def test_drill_fails_an_archive_whose_recorded_state_was_rewritten(backed_up, replicated, tmp_path):
    path, made = backed_up
    _, names, _ = replicated

    def other_hash(tree: Path, manifest: dict) -> None:
        manifest["databases"][0]["tx_hash"] = "00" * 32

    tampered = rewrite(made, tmp_path / "state.tar.gz", tmp_path, other_hash)
    done = run("drill", "-c", str(path), str(tampered))
    assert done.returncode == 1
    # the live replica holds that transaction with its real Alh: refused before anything is restored
    assert f"database {names[0]} holds transaction" in done.stderr and "the archive was rewritten" in done.stderr
    # without the live servers and any anchor, the restored files still contradict the manifest
    done = run("drill", "-c", str(path), str(tampered), "--no-live", "--unanchored")
    assert done.returncode == 1
    assert f"FAIL {names[0]}: its state is transaction" in done.stderr


def test_drill_without_an_immudb_binary_says_what_to_set(tmp_path, backed_up):
    path, made = backed_up
    done = run("drill", str(made), timeout=120, env={"PATH": "/nonexistent", "HOME": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.strip().endswith("set backup.drill.immudb_binary or give --immudb-binary")
    assert "Traceback" not in done.stderr


def test_drills_are_scheduled_and_their_last_result_is_in_status_and_metrics(backed_up, tmp_path):
    from reconciler import config
    from reconciler.daemon import Service
    from reconciler.metrics import render
    path, made = backed_up
    data = yaml.safe_load(path.read_text())
    data["backup"]["schedules"] = [{"cron": "0 5 * * 0", "target": "local", "action": "drill"},
                                   {"cron": "0 4 * * *", "target": "local"}]
    path.write_text(yaml.safe_dump(data))
    service = Service(config.load(path, env={}))
    try:
        service._schedule()
        assert {"drill:0:local", "backup:1:local"} <= {job.id for job in service.scheduler.get_jobs()}
        service._scheduled_drill("local")
        drill = service.status()["drills"]["local"]
        assert drill["ok"] and drill["location"] == str(made) and drill["problems"] == []
        text = render(service)[0].decode()
        assert 'replicator_drill_last_success_timestamp_seconds{target="local"}' in text
        assert 'replicator_drill_failures_total{target="local"} 0.0' in text

        made.write_bytes(made.read_bytes()[:-100])  # the newest archive, damaged
        service._scheduled_drill("local")
        drill = service.status()["drills"]["local"]
        assert not drill["ok"] and "nothing restored" in drill["problems"][0]
        assert 'replicator_drill_failures_total{target="local"} 1.0' in render(service)[0].decode()
    finally:
        service.reconciler.close()
