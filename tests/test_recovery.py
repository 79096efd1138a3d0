"""`replicator restore --all` (issue 24): a whole server restored from one
target into one folder, to the end or to a time, each database from its
newest snapshot base and then its journal; checked by starting immudb on
the folder and asking it with immudb-py (an independent client), against
what the primary held at that point."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support import immudb_data
from tests.support.cli import replicator
from tests.support.configs import write_config
from tests.support.daemon import Daemon
from tests.support.servers import admin_for, serving
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults


class Server:
    """Three journaled databases on a file target, with a snapshot archive
    in the middle of their histories, and one more that only the archive
    holds (not journaled); the daemon stopped."""

    def __init__(self, tmp_path: Path, config: Path, names: list[str], archived: str, immudb: Path):
        self.tmp_path, self.config, self.names, self.immudb = tmp_path, config, names, immudb
        self.archived = archived
        self.journal = tmp_path / "t" / "journal"

    def at_end(self) -> dict[str, tuple[tuple[int, bytes], dict[str, bool]]]:
        """What every database holds restored to the end: the journaled ones
        everything, the archived one what it held at the backup."""
        every = {"before": True, "after": True, "late": True}
        want = {n: (self.states["late"][n], every) for n in self.names}
        want[self.archived] = (self.states["before"][self.archived], {"before": True, "after": False, "late": False})
        return want

    def restore(self, *args: str):
        return replicator("restore", "-c", str(self.config), "--target", "local", "--all",
                          "--immudb-binary", str(self.immudb), *args)


def shipped(d: Daemon, name: str) -> int:
    journals = {j["database"]: j for j in d.request("GET", "/status")[1]["journal"] or []}
    return journals.get(name, {}).get("shipped_tx", 0)


@pytest.fixture
def server(tmp_path, followed, primary_server, replica_server, immudb_build):
    prefix, first = followed(0)
    names, archived = [first], f"{prefix}arc"
    with admin_for(primary_server, "primary") as admin:
        for name in (f"{prefix}db1", f"{prefix}db2", archived):
            admin.create_database(name)
    names += [f"{prefix}db1", f"{prefix}db2"]
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    d = Daemon(tmp_path, primary_server, replica_server, prefix, reconcile={"interval": 1},
               backup={"targets": {"local": target},
                       "continuous": {"target": "local", "segment_max_seconds": 0.3,
                                      "spool_dir": str(tmp_path / "spool"),
                                      "databases": {"exclude": [archived]}},
                       "trust": {"state_dir": str(tmp_path / "state")}}).start()
    states: dict[str, dict[str, tuple[int, bytes]]] = {}

    def write_round(tag: str, count: int) -> None:
        for n in [*names, archived]:
            immudb_data.write(primary_server, n, count, prefix=f"{tag}_{n}_")
        want = {n: immudb_data.state(primary_server, n) for n in [*names, archived]}
        wait_for(lambda: immudb_data.state(replica_server, archived) == want[archived], 60,
                 f"{archived} replicated")
        for n in names:
            wait_for(lambda n=n: shipped(d, n) >= want[n][0], 90, f"transaction {want[n][0]} of {n} shipped")
        states[tag] = want

    try:
        write_round("before", 3)
        assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
        assert d.wait_backup()["last_result"]["result"] == "ok"
        write_round("after", 2)
        # the next point in time: a second that no transaction of the first rounds shares
        mark = time.time()
        wait_for(lambda: int(time.time()) > int(mark) + 1, 5, "two seconds on")
        write_round("late", 2)
    finally:
        assert d.stop() == 0
    s = Server(tmp_path, d.config_path, names, archived, immudb_build / "immudb")
    s.states, s.mark = states, int(mark) + 1
    return s


def assert_served(folder: Path, root: Path, want: dict[str, tuple[tuple[int, bytes], dict[str, bool]]]) -> None:
    """immudb opened on `folder` serves exactly `want`'s databases, each at
    its state, the first key of each written round present or absent."""
    with serving(folder, root) as check:
        with admin_for(check, "check") as admin:
            served = {d.name for d in admin.list_databases()} - {"defaultdb", "systemdb"}
        assert served == set(want), served
        for name, (state, tags) in want.items():
            assert immudb_data.state(check, name) == state, name
            for tag, present in tags.items():
                got = immudb_data.read(check, name, [f"{tag}_{name}_0".encode()])
                assert (next(iter(got.values())) is not None) == present, (name, tag)


def test_a_whole_server_comes_back_to_its_end_from_bases_and_journals(server, tmp_path):
    folder = tmp_path / "restored"
    done = server.restore("--to-end", "--data-dir", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in server.names:
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith(name + " "))
        tx, alh = server.states["late"][name][0], server.states["late"][name][1].hex()[:16]
        assert f" {tx} " in line and alh in line and "base immudb-" in line, line
        assert "local" in line, line  # the anchor it was checked against
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(server.archived + " "))
    assert f" {server.states['before'][server.archived][0]} " in line and "no journal: its point" in line, line
    assert "4 of 4 databases restored" in done.stdout, done.stdout
    # no server's own folders left
    assert sorted(p.name for p in folder.iterdir()) == sorted([*server.names, server.archived])
    assert_served(folder, tmp_path / "check", server.at_end())


def test_a_whole_server_to_a_time_and_narrowed_to_some_databases(server, tmp_path):
    folder = tmp_path / "restored"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(server.mark - 1))
    some = server.names[:2]
    done = server.restore("--to-time", when, "--data-dir", str(folder), *[a for n in some for a in ("--database", n)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 databases restored" in done.stdout, done.stdout
    assert_served(folder, tmp_path / "check",
                  {n: (server.states["after"][n], {"before": True, "after": True, "late": False}) for n in some})


def test_if_empty_leaves_a_folder_that_holds_something_and_fills_an_empty_volume(server, tmp_path):
    volume = tmp_path / "volume"
    (volume / "lost+found").mkdir(parents=True)  # what a fresh ext4 volume holds
    done = server.restore("--to-end", "--data-dir", str(volume), "--if-empty")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in volume.iterdir()) == sorted([*server.names, server.archived, "lost+found"])
    before = {p: p.stat().st_mtime_ns for p in volume.rglob("*")}
    again = server.restore("--to-end", "--data-dir", str(volume), "--if-empty")
    assert again.returncode == 0 and "nothing restored (--if-empty)" in again.stdout, again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in volume.rglob("*")} == before
    refused = server.restore("--to-end", "--data-dir", str(volume))
    assert refused.returncode == 1 and "is not empty" in refused.stderr, refused.stdout + refused.stderr
    # a restore killed halfway (out of memory, evicted) leaves its marker: the next start restores again
    half = tmp_path / "half"
    (half / "lost+found").mkdir(parents=True)
    (half / server.names[0]).mkdir()
    (half / ".replicator-restore-incomplete").write_text("")
    kept = server.restore("--to-end", "--data-dir", str(half))
    assert kept.returncode == 1 and "did not finish" in kept.stderr, kept.stdout + kept.stderr
    again = server.restore("--to-end", "--data-dir", str(half), "--if-empty")
    assert again.returncode == 0 and "restoring again" in again.stdout, again.stdout + again.stderr
    assert sorted(p.name for p in half.iterdir()) == sorted([*server.names, server.archived, "lost+found"])


def test_one_database_that_cannot_reach_its_point_fails_the_command_and_leaves_nothing_of_it(server, tmp_path):
    """The newest segment of one database damaged on the target: that one
    is reported, nothing of it is in the folder, the others are restored."""
    victim = server.names[1]
    newest = max((server.journal / victim).glob("*.journal"), key=lambda p: p.name)
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    newest.write_bytes(bytes(blob))
    folder = tmp_path / "restored"
    done = server.restore("--to-end", "--data-dir", str(folder))
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(victim + " "))
    assert "FAILED" in line, line
    assert "NOT every database reached its point" in done.stderr and "Traceback" not in done.stderr, done.stderr
    others = {n: w for n, w in server.at_end().items() if n != victim}
    assert sorted(p.name for p in folder.iterdir()) == sorted(others)
    assert_served(folder, tmp_path / "check", others)


@pytest.mark.parametrize("args, said", [
    (["--to-end"], "--all needs --data-dir"),
    (["--data-dir", "X"], "--all needs the point"),
    (["--to-tx", "3", "--data-dir", "X"], "not with --to-tx"),
    (["--to-end", "--data-dir", "X", "--as", "other"], "not with --as"),
    (["--to-end", "--data-dir", "X", "--parallel", "0"], "--parallel must be 1 or more"),
    (["--to-end", "--data-dir", "X", "--database", "nosuchdb"], "no journal or archive of nosuchdb"),
    (["--to-end", "--data-dir", "X"], "nothing to restore"),
    (["--to-end", "--data-dir", "X", "--database", ""], "not a database name"),
    (["--to-end", "--data-dir", "X", "--database", ".."], "not a database name"),
])
def test_what_a_whole_server_restore_refuses(tmp_path, primary_server, replica_server, args, said):
    config = write_config(tmp_path, primary_server, replica_server, "none_",
                          targets={"local": {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}})
    done = replicator("restore", "-c", str(config), "--target", "local", "--all",
                      *[str(tmp_path / a) if a == "X" else a for a in args])
    assert done.returncode == 1 and said in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "X").exists()


def test_if_empty_on_a_target_that_holds_nothing_yet_leaves_the_folder_empty(tmp_path, primary_server,
                                                                             replica_server):
    """A new deployment: the init container runs before any backup."""
    config = write_config(tmp_path, primary_server, replica_server, "none_",
                          targets={"local": {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}})
    done = replicator("restore", "-c", str(config), "--target", "local", "--all", "--to-end", "--if-empty",
                      "--data-dir", str(tmp_path / "volume"))
    assert done.returncode == 0 and "nothing restored" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "volume").exists() or not any((tmp_path / "volume").iterdir())


def test_if_empty_and_parallel_belong_to_all(tmp_path):
    done = replicator("restore", "archive.tar.gz", "--data-dir", str(tmp_path / "x"), "--if-empty")
    assert done.returncode == 1 and "--if-empty and --parallel are for --all" in done.stderr, done.stderr
