"""A backup proven at the speed of storage: whole commands side by side, in
one run, alternating (issue 21's goals).

    .venv/bin/python -m bench.speed --go-tool /tmp/go-replicator
    .venv/bin/python -m bench.speed --sizes 200,500,1000 --rounds 3 --keep /var/tmp/speed

For each data size (the same databases, filled up to that size):
- the default `replicator backup` as a user runs it (the installed script,
  a new process, read-back included) against the Go replicator's
  `POST /backup/start` to a file (request to "not running"), and against a
  whole `tar -czf` of the same folders;
- the machine's limit beside them: the same compressor (ISA-L gzip level 2, the default;
  threads on every core) and SHA-256 over the same files from the page
  cache, writing to /dev/null (`limit`, below);
- `replicator restore` of the archive into an empty folder against
  `tar -xzf` of it;
- CPU seconds and peak RSS of each process (wait4);
- with `--encrypted`, the same backup and restore with `backup.encryption`
  (one age recipient; the restore given its identity) beside them.

Every measurement of a round runs once before the next round starts, so a
machine that slows down in the middle slows every method alike; medians of
the rounds are reported. Data is real: written to the primary and brought
to the replica by immudb's own replication.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MB, fill, tree_bytes, write_config, write_results  # noqa: E402


def _measure(argv: list[str], cwd: Path) -> dict:
    """A whole process: wall seconds, CPU seconds and its own peak RSS.
    The RSS comes from GNU time when it is installed: wait4 from this
    process would report at least this process's size (Linux carries the
    high-water mark of the image an exec replaces)."""
    timer = shutil.which("time", path="/usr/bin:/bin")
    with tempfile.NamedTemporaryFile("r") as usage:
        if timer:
            argv = [timer, "-f", "%M %U %S", "-o", usage.name, *argv]
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, capture_output=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} failed ({proc.returncode}): "
                               f"{(proc.stdout + proc.stderr).decode(errors='replace')[-2000:]}")
        if timer:
            rss_kb, user, system = usage.read().split()[-3:]
            cpu, rss = float(user) + float(system), int(rss_kb) / 1024
        else:
            cpu, rss = float("nan"), float("nan")
    return {"seconds": wall, "cpu_seconds": cpu, "maxrss_mb": rss, "stdout": proc.stdout.decode(errors="replace")}


LIMIT_CODE = r'''
import hashlib, os, sys, threading, queue
from isal import igzip_threaded
files = sys.argv[1:]
threads = os.cpu_count() or 1
q = queue.Queue(maxsize=8)
def hash_files():
    while True:
        item = q.get()
        if item is None:
            return
        item[0].update(item[1])
hasher = threading.Thread(target=hash_files)
hasher.start()
out_sha = hashlib.sha256()
class Sink:
    def write(self, b):
        out_sha.update(b)
        return len(b)
    def flush(self): pass
    def writable(self): return True
    def close(self): pass
with open(os.devnull, "wb") as null:
    class Null(Sink):
        def write(self, b):
            out_sha.update(b)
            null.write(b)
            return len(b)
    z = igzip_threaded.open(Null(), "wb", compresslevel=2, threads=threads)
    for path in files:
        sha = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                q.put((sha, chunk))
                z.write(chunk)
    z.close()
q.put(None)
hasher.join()
'''


def limit_argv(folders: list[Path]) -> list[str]:
    """This machine's limit for what a backup must do at the least: read
    the files from the page cache, SHA-256 each (the manifest) and the
    compressed stream (the read-back's digest), compress them with the
    default compressor on every core, and write to /dev/null."""
    files = sorted(str(f) for d in folders for f in d.rglob("*") if f.is_file())
    return [sys.executable, "-c", LIMIT_CODE, *files]


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def _go_backup(go, archive: Path) -> dict:
    r = go.backup(archive)
    if r["status"].get("error") or not archive.exists():
        raise RuntimeError(f"the Go tool's backup failed: {r['answer']} {r['status']}")
    return {"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "maxrss_mb": _rss_mb(go.proc.pid),
            "bytes": archive.stat().st_size}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure_size(root: Path, primary, replica, names: list[str], args, go, size_mb: int) -> dict:
    script = shutil.which("replicator", path=str(Path(sys.executable).parent))
    if script is None:
        raise SystemExit("no `replicator` script beside this Python: install the package first (scripts/bootstrap)")
    away = root / "elsewhere"
    away.mkdir(exist_ok=True)
    # as an installed package is: its modules compiled (an editable install under PYTHONDONTWRITEBYTECODE is not)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "reconciler")], check=True)
    folders = [replica.data_dir / n for n in names]
    data = tree_bytes(folders)
    out = root / f"out-{size_mb}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cfg = write_config(root, primary, replica, databases={"include": names},
                       targets={"t": {"type": "file", "path": str(out / "r-{timestamp}.tar.gz")}})
    sealed_out, identity = root / f"sealed-{size_mb}", root / "key.txt"
    if args.encrypted:
        from pyrage import x25519
        key = x25519.Identity.generate()
        identity.write_text(f"{key}\n")
        shutil.rmtree(sealed_out, ignore_errors=True)
        sealed_out.mkdir()
        sealed_cfg = write_config(root, primary, replica, name="sealed.yaml", databases={"include": names},
                                  encryption={"recipients": [str(key.to_public())]},
                                  targets={"t": {"type": "file", "path": str(sealed_out / "r-{timestamp}.tar.gz")}})
    methods: dict[str, list[dict]] = {}
    tar_too = size_mb <= args.tar_max_mb
    last_archive: Path | None = None
    last_mtime = 0.0

    def ours(config: Path = cfg, folder: Path = out):
        r = _measure([script, "backup", "-c", str(config), "--target", "t"], away)
        made = sorted(folder.glob("r-*.tar.gz"))
        if len(made) != 1:
            raise RuntimeError(f"expected one archive in {folder}, found {made}")
        r["bytes"] = made[0].stat().st_size
        return r, made[0]

    sealed_archive: Path | None = None
    for round_ in range(args.rounds):
        order = ["ours", "encrypted", "go", "tar", "limit"]
        for method in order if round_ % 2 == 0 else order[::-1]:
            subprocess.run(["sync"], check=True)
            if method == "encrypted":
                if not args.encrypted:
                    continue
                if sealed_archive is not None:
                    sealed_archive.unlink()
                while int(time.time()) == int(last_mtime):  # archives are named by the second
                    time.sleep(0.05)
                r, sealed_archive = ours(sealed_cfg, sealed_out)
                last_mtime = sealed_archive.stat().st_mtime
            elif method == "ours":
                if last_archive is not None:
                    last_archive.unlink()
                    last_archive = None
                    # archives are named by the second
                    while int(time.time()) == int(last_mtime):
                        time.sleep(0.05)
                r, last_archive = ours()
                last_mtime = last_archive.stat().st_mtime
            elif method == "go":
                if go is None:
                    continue
                archive = out / "go.tar.gz"
                r = _go_backup(go, archive)
                archive.unlink()
            elif method == "tar":
                if not tar_too:
                    continue
                archive = out / "tar.tgz"
                r = _measure(["tar", "-czf", str(archive), "-C", str(replica.data_dir), *names], away)
                r["bytes"] = archive.stat().st_size
                archive.unlink()
            else:
                r = _measure(limit_argv(folders), away)
            r.pop("stdout", None)
            methods.setdefault(method, []).append(r)
    # restore: ours (a new, empty folder each time) against tar -xzf of the same archive
    assert last_archive is not None
    for round_ in range(args.rounds):
        order = ["ours", "encrypted", "tar"] if args.encrypted else ["ours", "tar"]
        for method in order if round_ % 2 == 0 else order[::-1]:
            dest = root / f"restored-{method}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            subprocess.run(["sync"], check=True)
            if method == "ours":
                r = _measure([script, "restore", "-c", str(cfg), str(last_archive), "--data-dir", str(dest)], away)
            elif method == "encrypted":
                assert sealed_archive is not None
                r = _measure([script, "restore", "-c", str(sealed_cfg), str(sealed_archive), "--data-dir", str(dest),
                              "--identity", str(identity)], away)
            else:
                r = _measure(["tar", "-xzf", str(last_archive), "-C", str(dest)], away)
            r.pop("stdout", None)
            methods.setdefault(f"restore_{method}", []).append(r)
            shutil.rmtree(dest, ignore_errors=True)
    last_archive.unlink()
    if sealed_archive is not None:
        sealed_archive.unlink()
    summary = {"size_mb": size_mb, "data_bytes": data, "databases": len(names), "rounds": args.rounds}
    for method, rows in methods.items():
        summary[method] = {key: _median([r[key] for r in rows]) for key in rows[0]}
        summary[method]["all_seconds"] = [round(r["seconds"], 3) for r in rows]
    return summary


def report(s: dict) -> None:
    ours = s["ours"]
    print(f"\n== {s['data_bytes'] / MB:.0f} MB in {s['databases']} databases, medians of {s['rounds']} alternating "
          f"rounds, whole commands")
    print(f"{'':34} {'seconds':>8} {'CPU s':>7} {'RSS MB':>7} {'archive MB':>11} {'ours x':>7}")
    labels = {"ours": "replicator backup (default)", "encrypted": "replicator backup, encrypted",
              "go": "Go replicator", "tar": "tar -czf",
              "limit": "limit: ISA-L + SHA-256 to /dev/null", "restore_ours": "replicator restore",
              "restore_encrypted": "replicator restore, encrypted", "restore_tar": "tar -xzf"}
    for key, label in labels.items():
        if key not in s:
            continue
        r = s[key]
        base = s["restore_ours"] if key.startswith("restore") else ours
        ratio = r["seconds"] / base["seconds"]
        size = f"{r['bytes'] / MB:11.1f}" if "bytes" in r else " " * 11
        print(f"{label:34} {r['seconds']:8.2f} {r['cpu_seconds']:7.2f} {r['maxrss_mb']:7.0f} {size} {ratio:7.2f}")
    if "go" in s:
        print(f"ours vs Go: {s['go']['seconds'] / ours['seconds']:.2f}x speed, "
              f"{ours['bytes'] / s['go']['bytes']:.3f}x size")
    if "tar" in s:
        print(f"ours vs tar -czf: {s['tar']['seconds'] / ours['seconds']:.2f}x speed")
    print(f"ours vs the limit: {ours['seconds'] / s['limit']['seconds']:.2f}x its time")
    if "encrypted" in s:
        print(f"encryption costs the backup {s['encrypted']['seconds'] / ours['seconds']:.2f}x its time, "
              f"the restore {s['restore_encrypted']['seconds'] / s['restore_ours']['seconds']:.2f}x")
    print(f"restore vs tar -xzf: {s['restore_tar']['seconds'] / s['restore_ours']['seconds']:.2f}x speed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[200, 500, 1000],
                        help="data sizes in MB, ascending (the same databases filled further)")
    parser.add_argument("--databases", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tar-max-mb", type=int, default=200, help="compare with tar -czf up to this size")
    parser.add_argument("--go-tool", metavar="PATH", help="the Go replicator's binary (bench/go_tool.py)")
    parser.add_argument("--encrypted", action="store_true", help="also back up and restore with backup.encryption")
    parser.add_argument("--keep", metavar="DIR", help="servers and data in DIR, kept for the next run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed.json"))
    args = parser.parse_args()
    from reconciler import config
    from reconciler.reconcile import Reconciler
    from tests.support import immudb_data
    from tests.support.servers import ImmudbServer, admin_for
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="replicator-speed-"))
    root.mkdir(parents=True, exist_ok=True)
    filled_file = root / "filled.json"
    filled = json.loads(filled_file.read_text()) if filled_file.exists() else {}
    primary = ImmudbServer("primary", root / "primary").start()
    replica = ImmudbServer("replica", root / "replica").start()
    go = None
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), "sizes": []}
    try:
        names = [f"bench_{i}" for i in range(args.databases)]
        with admin_for(primary, "primary") as admin:
            have = {d.name for d in admin.list_databases()}
            for n in names:
                if n not in have:
                    admin.create_database(n)
        rec = Reconciler.from_config(config.load(write_config(root, primary, replica), env={}))
        assert rec.run_pass().ok
        rec.close()
        if args.go_tool:
            from bench.go_tool import GoReplicator, _wait_for_log
            log = root / "go.log"
            go = GoReplicator(args.go_tool, primary, replica, "Bench-follower-1", log=log).start()
            _wait_for_log(log, "Sleeping")
        for size in args.sizes:
            for i, n in enumerate(names):
                more = size // len(names) - filled.get(n, 0)
                if more > 0:
                    fill(primary, n, more, seed=hash((i, filled.get(n, 0))) & 0xFFFF)
                    filled[n] = filled.get(n, 0) + more
                    filled_file.write_text(json.dumps(filled))
            for n in names:
                want, got = immudb_data.wait_caught_up(primary, replica, n, n, timeout=900)
                assert got == want, f"{n} did not catch up"
            with admin_for(replica, "list") as admin:  # the Go tool backs up every one (it adds defaultdbbak)
                every = sorted(d.name for d in admin.list_databases() if d.name not in ("defaultdb", "systemdb"))
            summary = measure_size(root, primary, replica, every, args, go, size)
            report(summary)
            results["sizes"].append(summary)
    finally:
        if go is not None:
            go.stop()
        primary.stop()
        replica.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    write_results(Path(args.out), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
