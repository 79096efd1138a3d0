"""The Go replicator side by side with this one, on the same servers and data
in the same run (bench/run.py --go-tool PATH).

Build the Go tool from its source (codenotary/immudb-tools, folder
`replicator/`), outside this repository:

    cd immudb-tools/replicator
    CGO_ENABLED=0 go build -o /tmp/go-replicator -ldflags '-X main.Version=bench'

It always listens on :8081 (every interface): the benchmarks need that port
free. It is started with the test servers' addresses and passwords as flags.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

GO_PORT = 8081


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GoReplicator:
    """The Go tool as a process; its REST API on :8081."""

    def __init__(self, binary: str, primary, replica, follower_password: str, delay: int = 3600,
                 log: Path | None = None, extra: tuple[str, ...] = ()):
        self.argv = [binary, "-master-addr", "127.0.0.1", "-master-port", str(primary.port),
                     "-master-pass", primary.password, "-replica-addr", "127.0.0.1",
                     "-replica-port", str(replica.port), "-replica-pass", replica.password,
                     "-follower-pass", follower_password, "-delay", str(delay),
                     "-data-dir", str(replica.data_dir), *extra]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> GoReplicator:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", GO_PORT)) == 0:
                raise RuntimeError(f"port {GO_PORT} is taken: the Go tool always listens there")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/")
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Go tool did not answer on :8081")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{GO_PORT}{path}", timeout=30) as r:
            return r.read().decode()

    def post(self, path: str, body: dict) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{GO_PORT}{path}", data=json.dumps(body).encode(),
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def backup(self, archive: Path) -> dict:
        """One backup to a file; wall time (request to not running), CPU
        seconds of the process meanwhile, what the API said."""
        cpu = _cpu_seconds(self.proc.pid)
        start = time.perf_counter()
        status, answer = self.post("/backup/start", {"type": "file", "path": str(archive)})
        while True:
            state = json.loads(self.get("/backup/status"))
            if not state["running"]:
                break
            time.sleep(0.02)
        return {"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds(self.proc.pid) - cpu,
                "answer": (status, answer.strip()), "status": state}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class UnloadWatch:
    """Polls the replica's DatabaseListV2 (immudb 1.11.1 lists unloaded
    databases) and records how long each database stays unloaded."""

    def __init__(self, admin, names: list[str], interval: float = 0.02):
        self.admin, self.names, self.interval = admin, set(names), interval
        self.windows: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        since: dict[str, float] = {}
        while not self._stop.is_set():
            now = time.perf_counter()
            for d in self.admin.list_databases():
                if d.name not in self.names:
                    continue
                if not d.loaded and d.name not in since:
                    since[d.name] = now
                elif d.loaded and d.name in since:
                    self.windows[d.name] = max(self.windows.get(d.name, 0.0), now - since.pop(d.name))
            time.sleep(self.interval)

    def __enter__(self) -> UnloadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


# --------------------------------------------------------------------------- comparisons

def _wait_for_log(log: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the Go tool did not log {text!r} within {timeout}s")


def compare_backup(root: Path, primary, replica, names: list[str], binary: str, results: dict) -> None:
    """Backups to a file of the same replica databases: the Go tool, then
    ours at several compression settings. Wall time, CPU seconds, archive
    size, longest unload window."""
    from bench.common import MB, run_backup_subprocess, tree_bytes, write_config
    from tests.support.servers import admin_for
    log = root / "go.log"
    go = GoReplicator(binary, primary, replica, "Bench-follower-1", log=log).start()
    try:
        _wait_for_log(log, "Sleeping")  # its first pass (it adds defaultdbbak) is over
        with admin_for(replica, "list") as admin:
            every = sorted(d.name for d in admin.list_databases() if d.name not in ("defaultdb", "systemdb"))
        out = root / "go-out"
        out.mkdir()
        rows = []
        for attempt in range(2):
            subprocess.run(["sync"], check=True)
            archive = out / f"go-{attempt}.tar.gz"
            with admin_for(replica, "watch") as admin, UnloadWatch(admin, every) as watch:
                r = go.backup(archive)
            rows.append({"method": "Go replicator (pgzip, default level)", "seconds": r["seconds"],
                         "cpu_seconds": r["cpu_seconds"], "bytes": archive.stat().st_size,
                         "unload_max": max(watch.windows.values(), default=0.0), "answer": r["answer"]})
            archive.unlink()
        go_row = min(rows, key=lambda x: x["seconds"])
    finally:
        go.stop()
    data = tree_bytes([replica.data_dir / n for n in every])
    ours = [go_row]
    settings = [("gzip (default: ISA-L level 2)", {}), ("gzip -1 (ISA-L)", {"compression_level": 1}),
                ("gzip -3 (zlib-ng)", {"compression_level": 3}), ("gzip -4 (zlib-ng)", {"compression_level": 4}),
                ("gzip -6 (zlib-ng)", {"compression_level": 6}), ("zstd (level 3)", {"compression": "zstd"}),
                ("gzip, full read-back", {"verify_after_upload": "full"}),
                ("gzip, no read-back", {"verify_after_upload": False}),
                ("zstd, no read-back", {"compression": "zstd", "verify_after_upload": False})]
    for label, backup in settings:
        best = None
        for attempt in range(2):
            cfg = write_config(root, primary, replica, databases={"include": every}, **{"compression": "gzip",
                               **backup}, targets={"t": {"type": "file", "path": str(out / f"o{attempt}-{{timestamp}}.tar")}})
            subprocess.run(["sync"], check=True)
            with admin_for(replica, "watch") as admin, UnloadWatch(admin, every) as watch:
                r = run_backup_subprocess(cfg, "t")
            row = {"method": f"replicator {label}", "seconds": r["finished_at"] - r["started_at"],
                   "process_seconds": r["wall_seconds"], "cpu_seconds": r["cpu_seconds"],
                   "bytes": Path(r["location"]).stat().st_size,
                   "unload_max": max(watch.windows.values(), default=0.0)}
            Path(r["location"]).unlink()
            if best is None or row["seconds"] < best["seconds"]:
                best = row
        ours.append(best)
    for row in ours:
        row["speed_vs_go"] = go_row["seconds"] / row["seconds"]
        row["size_vs_go"] = row["bytes"] / go_row["bytes"]
    results["go_backup"] = {"data_bytes": data, "databases": every, "rows": ours}
    print(f"\n== backup to a file, side by side with the Go replicator ({data / MB:.0f} MB, {len(every)} databases;"
          f" best of 2)")
    print(f"{'method':40} {'seconds':>8} {'CPU s':>7} {'archive MB':>11} {'x Go speed':>11} {'x Go size':>10} "
          f"{'unload max s':>13}")
    for r in ours:
        print(f"{r['method']:40} {r['seconds']:8.2f} {r['cpu_seconds']:7.2f} {r['bytes'] / MB:11.1f} "
              f"{r['speed_vs_go']:11.2f} {r['size_vs_go']:10.3f} {r['unload_max']:13.2f}")


def compare_bring_up(root: Path, binary: str, results: dict, count: int = 20) -> None:
    """Time from start until `count` new primary databases (5 transactions
    each) have caught-up replicas: the Go tool's first pass, then ours
    (`replicator reconcile --once`), each on a fresh pair of servers."""
    import sys

    from bench.common import write_config
    from tests.support import immudb_data
    from tests.support.servers import ImmudbServer, admin_for
    rows = {}
    for who in ("go", "ours"):
        p = ImmudbServer(f"p-{who}", root / f"bring-{who}-p").start()
        r = ImmudbServer(f"r-{who}", root / f"bring-{who}-r").start()
        try:
            names = [f"bench_{i:03d}" for i in range(count)]
            with admin_for(p, "setup") as admin:
                for n in names:
                    admin.create_database(n)
            for n in names:
                immudb_data.write(p, n, 5)
            start = time.perf_counter()
            if who == "go":
                go = GoReplicator(binary, p, r, "Bench-follower-1", log=root / "go-bring.log").start()
            else:
                cfg = write_config(root, p, r)
                subprocess.run([sys.executable, "-m", "reconciler", "reconcile", "--once", "-c", str(cfg)],
                               check=True, capture_output=True)
            try:
                for n in names:
                    immudb_data.wait_caught_up(p, r, n, n, timeout=600)
                rows[who] = time.perf_counter() - start
            finally:
                if who == "go":
                    go.stop()
        finally:
            p.stop()
            r.stop()
    results["go_bring_up"] = {"databases": count, "go_seconds": rows["go"], "ours_seconds": rows["ours"]}
    print(f"\n== {count} new databases into sync: Go replicator {rows['go']:.1f}s, ours {rows['ours']:.1f}s")


def compare_faults(root: Path, binary: str, results: dict) -> None:
    """What each tool does on the faults the Go tool gets wrong: a rotated
    follower password, a replica database unloaded by hand, a backup that
    cannot be written."""
    import sys

    import yaml

    from bench.common import write_config
    from reconciler.secret import Secret
    from tests.support.servers import ImmudbServer, admin_for
    p = ImmudbServer("p-faults", root / "faults-p").start()
    r = ImmudbServer("r-faults", root / "faults-r").start()
    found: dict[str, dict] = {}
    try:
        with admin_for(p, "setup") as admin:
            admin.create_database("bench_a")
        log = root / "go-faults.log"
        go = GoReplicator(binary, p, r, "Old-follower-pw-1", log=log).start()
        _wait_for_log(log, "Sleeping")
        go.stop()
        # 1. the follower password rotated: restart with the new one
        go = GoReplicator(binary, p, r, "New-follower-pw-1", log=log).start()
        _wait_for_log(log, "Sleeping")
        with admin_for(p, "check") as admin:
            go_new = admin.check_credentials("follower", Secret("New-follower-pw-1"))
        # 2. a replica database unloaded by hand; the Go tool's next pass (a restart runs one)
        with admin_for(r, "hand") as admin:
            admin.unload("bench_a")
        go.stop()
        log.write_text("")
        go = GoReplicator(binary, p, r, "New-follower-pw-1", log=log).start()
        _wait_for_log(log, "Sleeping")
        with admin_for(r, "check") as admin:
            go_loaded = {d.name: d.loaded for d in admin.list_databases()}["bench_a"]
        # 3. a backup to a path that cannot be written
        status, answer = go.post("/backup/start", {"type": "file", "path": "/proc/nowhere/x.tar.gz"})
        time.sleep(1)
        go_status = json.loads(go.get("/backup/status"))
        go.stop()
        found["go"] = {"new_follower_password_accepted": go_new, "unloaded_replica_loaded": go_loaded,
                       "failed_backup_answer": f"{status} {answer.strip()}",
                       "failed_backup_status": go_status}

        cfg = write_config(root, p, r)
        data = yaml.safe_load(cfg.read_text())
        data["follower"]["password"] = "Newer-follower-pw-2"
        data["backup"]["targets"] = {"bad": {"type": "file", "path": "/proc/nowhere/x-{timestamp}.tar.gz",
                                             "create_dirs": False}}
        cfg.write_text(yaml.safe_dump(data))
        run = [sys.executable, "-m", "reconciler"]
        pass_ = subprocess.run(run + ["reconcile", "--once", "-c", str(cfg)], capture_output=True, text=True)
        with admin_for(p, "check") as admin:
            ours_new = admin.check_credentials("follower", Secret("Newer-follower-pw-2"))
        with admin_for(r, "check") as admin:
            ours_loaded = {d.name: d.loaded for d in admin.list_databases()}["bench_a"]
        backup = subprocess.run(run + ["backup", "-c", str(cfg), "--target", "bad"], capture_output=True, text=True)
        found["ours"] = {"new_follower_password_accepted": ours_new, "unloaded_replica_loaded": ours_loaded,
                         "pass_exit": pass_.returncode, "failed_backup_exit": backup.returncode,
                         "failed_backup_error": backup.stderr.strip().splitlines()[-1]}
    finally:
        p.stop()
        r.stop()
    results["go_faults"] = found
    print("\n== faults the Go replicator gets wrong")
    for key in ("new_follower_password_accepted", "unloaded_replica_loaded"):
        print(f"{key:34} Go: {found['go'][key]!s:6} ours: {found['ours'][key]}")
    print(f"{'backup to an unwritable path':34} Go: answered {found['go']['failed_backup_answer']!r}, then status "
          f"{found['go']['failed_backup_status']}; ours: exit {found['ours']['failed_backup_exit']}, "
          f"{found['ours']['failed_backup_error']!r}")
