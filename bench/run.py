"""Benchmarks of immudb-replicator against the obvious alternatives, on the
same data in the same run. Prints tables and writes JSON.

    .venv/bin/python -m bench.run --quick        # a few minutes
    .venv/bin/python -m bench.run --size-mb 2048 # the full data set

1. backup throughput to a `file` target vs `tar -czf`, `tar | pigz` and a
   plain copy of the same database folders; archive sizes
2. unload window per database with and without a staging directory, against
   the time to copy its files
3. reconcile cost: a pass that changes nothing (time, RPCs) with N databases,
   and the time to bring up N new replicas
4. peak RSS of a backup process against the data size
5. backup to S3 (SeaweedFS) vs boto3 upload_file of the finished archive
6. the Go tool it replaces (--go-tool PATH): backup to a file, bringing new
   databases into sync, and the faults it gets wrong
7. the command line as a user meets it: `replicator --help`, `validate`,
   and a whole `replicator backup` process against a whole `tar -czf`

Data is real: written to the primary and brought to the replica by
immudb's own replication.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=DeprecationWarning)


from bench.common import MB, fill, run_backup_subprocess, timed, tree_bytes, write_config, write_results  # noqa: E402
from tests.support import immudb_data  # noqa: E402
from tests.support.servers import ImmudbServer, S3Server, admin_for, free_port  # noqa: E402


def bench_backup(root: Path, primary, replica, names: list[str], results: dict) -> None:
    folders = [replica.data_dir / n for n in names]
    data = tree_bytes(folders)
    out = root / "out"
    out.mkdir()
    rows = []

    def ours(label, **backup):
        cfg = write_config(root, primary, replica, **backup, targets={
            "t": {"type": "file", "path": str(out / f"{label}-{{timestamp}}.tar")}})
        subprocess.run(["sync"], check=True)  # nobody else's dirty pages in our fsync
        r = run_backup_subprocess(cfg, "t")
        size = Path(r["location"]).stat().st_size
        # the backup's own time; the process start (imports) is reported apart
        rows.append({"method": f"replicator ({label})", "seconds": r["finished_at"] - r["started_at"],
                     "process_seconds": r["wall_seconds"], "bytes": size,
                     "peak_rss_mb": r["maxrss_kb"] / 1024, "unload_windows": r["unload_windows"],
                     "verify_seconds": r.get("verify_seconds")})
        Path(r["location"]).unlink()
        return r

    ours("gzip", compression="gzip")
    ours("gzip, no verify", compression="gzip", verify_after_upload=False)  # the read-back's cost
    ours("gzip+staging", compression="gzip", staging_dir=str(root / "staging"))
    ours("gzip -2 isal", compression="gzip", compression_level=2)
    ours("gzip -3 zlib-ng", compression="gzip", compression_level=3)
    ours("gzip -4 zlib-ng", compression="gzip", compression_level=4)
    ours("zstd", compression="zstd")
    ours("none", compression="none")
    rel = [n for n in names]
    t = timed(["tar", "-czf", str(out / "tar.tgz"), "-C", str(replica.data_dir), *rel])
    rows.append({"method": "tar -czf", "seconds": t, "bytes": (out / "tar.tgz").stat().st_size})
    if shutil.which("pigz"):
        t = timed(f"tar -cf - -C {replica.data_dir} {' '.join(rel)} | pigz > {out / 'pigz.tgz'}", shell=True)
        rows.append({"method": "tar | pigz", "seconds": t, "bytes": (out / "pigz.tgz").stat().st_size})
    copy_dir = root / "copy"
    copy_dir.mkdir()
    subprocess.run(["sync"], check=True)
    t = timed(["cp", "-r", *map(str, folders), str(copy_dir) + "/"])
    rows.append({"method": "cp -r (page cache)", "seconds": t, "bytes": tree_bytes([copy_dir])})
    # our file target fsyncs the archive before it counts as written: the same for the copy
    shutil.rmtree(copy_dir)
    copy_dir.mkdir()
    subprocess.run(["sync"], check=True)
    t = timed(f"cp -r {' '.join(map(str, folders))} {copy_dir}/ && sync -f {copy_dir}", shell=True)
    rows.append({"method": "cp -r + sync (disk limit)", "seconds": t, "bytes": tree_bytes([copy_dir])})
    per_db_copy = {}
    for n in names:
        shutil.rmtree(root / "copy1", ignore_errors=True)
        per_db_copy[n] = timed(["cp", "-r", str(replica.data_dir / n), str(root / "copy1")])
    for row in rows:
        row["MB_per_s"] = data / MB / row["seconds"]
    results["backup"] = {"data_bytes": data, "rows": rows, "copy_seconds_per_db": per_db_copy}
    by = {r["method"]: r for r in rows}
    print(f"\n== backup of {data / MB:.0f} MB in {len(names)} databases (file target)")
    print(f"{'method':28} {'seconds':>8} {'MB/s':>8} {'archive MB':>11} {'peak RSS MB':>12} {'of it, verify s':>16}")
    for r in rows:
        print(f"{r['method']:28} {r['seconds']:8.2f} {r['MB_per_s']:8.1f} {r['bytes'] / MB:11.1f} "
              f"{r.get('peak_rss_mb', float('nan')):12.1f} {r.get('verify_seconds') or float('nan'):16.2f}")
    gz, tgz = by["replicator (gzip)"], by["tar -czf"]
    results["backup"]["ratios"] = {
        "gzip_vs_tar_czf_speed": tgz["seconds"] / gz["seconds"],
        "gzip_vs_pigz_speed": by["tar | pigz"]["seconds"] / gz["seconds"] if "tar | pigz" in by else None,
        "gzip_size_vs_tar_czf": gz["bytes"] / tgz["bytes"],
        "none_vs_copy_speed": by["cp -r + sync (disk limit)"]["seconds"] / by["replicator (none)"]["seconds"],
        "none_vs_page_cache_copy_speed": by["cp -r (page cache)"]["seconds"] / by["replicator (none)"]["seconds"],
    }
    print("ratios:", {k: round(v, 2) for k, v in results["backup"]["ratios"].items() if v is not None})
    print("\n== unload window per database (seconds) vs copying its files")
    print(f"{'database':14} {'copy':>7} {'staging':>8} {'streamed':>9}")
    for n in names:
        print(f"{n:14} {per_db_copy[n]:7.2f} {by['replicator (gzip+staging)']['unload_windows'][n]:8.2f} "
              f"{by['replicator (gzip)']['unload_windows'][n]:9.2f}")


def _median_seconds(argv: list[str], runs: int, cwd: Path) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_cli(root: Path, primary, replica, names: list[str], results: dict) -> None:
    """Whole commands, as a user runs them: the installed `replicator`
    script, from a directory outside the checkout. For a backup, the whole
    process against the backup's own time (what it prints) and against a
    whole `tar -czf` of the same folders."""
    script = shutil.which("replicator", path=str(Path(sys.executable).parent))
    if script is None:
        print("\n== command line: no `replicator` script beside this Python; not measured")
        return
    away = root / "elsewhere"
    away.mkdir()
    example = ROOT / "examples" / "replicator.yaml"
    rows = {"help_seconds": _median_seconds([script, "--help"], 7, away),
            "validate_seconds": _median_seconds([script, "validate", "-c", str(example)], 7, away)}
    out = root / "cli-out"
    cfg = write_config(root, primary, replica, targets={"t": {"type": "file", "path": str(out / "c-{timestamp}.tar.gz")}})
    backups = []
    for _ in range(3):
        subprocess.run(["sync"], check=True)
        start = time.perf_counter()
        done = subprocess.run([script, "backup", "-c", str(cfg), "--target", "t"], cwd=away, check=True,
                              capture_output=True, text=True)
        whole = time.perf_counter() - start
        own = float(done.stdout.split(" written in ", 1)[1].split("s ", 1)[0])
        backups.append((whole, own))
        shutil.rmtree(out)
    whole, own = sorted(backups)[1]
    subprocess.run(["sync"], check=True)
    tar = timed(["tar", "-czf", str(root / "cli-tar.tgz"), "-C", str(replica.data_dir), *names])
    (root / "cli-tar.tgz").unlink()
    data = tree_bytes([replica.data_dir / n for n in names])
    rows.update({"data_bytes": data, "backup_whole_seconds": whole, "backup_own_seconds": own,
                 "backup_overhead_seconds": whole - own, "tar_czf_seconds": tar, "tar_vs_whole_backup": tar / whole})
    results["cli"] = rows
    print(f"\n== command line ({data / MB:.0f} MB, whole processes, median)")
    print(f"replicator --help {rows['help_seconds']:.3f}s; validate {rows['validate_seconds']:.3f}s")
    print(f"replicator backup: whole {whole:.2f}s, its own time {own:.2f}s, overhead {whole - own:.2f}s; "
          f"tar -czf {tar:.2f}s = {tar / whole:.1f}x the whole backup")


def bench_s3(root: Path, primary, replica, results: dict) -> None:
    """Backup to S3 against boto3's upload_file of the same finished archive,
    with the default compression and without (compression, the upload and
    the S3 server itself share the machine's cores)."""
    s3 = S3Server(root / "s3").start()
    results["s3"] = {}
    try:
        s3.client().create_bucket(Bucket="bench")
        for compression in ("gzip", "none"):
            cfg = write_config(root, primary, replica, compression=compression, targets={"s3": {
                "type": "s3", "path": f"s3://bench/{compression}/immudb-{{timestamp}}.tar",
                "endpoint_url": s3.endpoint_url, "region": "us-east-1", "access_key": s3.access_key,
                "secret_key": s3.secret_key, "addressing_style": "path"},
                "f": {"type": "file", "path": str(root / f"s3src-{compression}-{{timestamp}}.tar")}})
            r = run_backup_subprocess(cfg, "s3")
            seconds = r["finished_at"] - r["started_at"]
            f = run_backup_subprocess(cfg, "f")
            start = time.perf_counter()
            s3.client().upload_file(f["location"], "bench", f"upload_file-{compression}.tar")
            upload = time.perf_counter() - start
            size = Path(f["location"]).stat().st_size
            Path(f["location"]).unlink()
            results["s3"][compression] = {"backup_seconds": seconds, "upload_file_seconds": upload,
                                          "archive_bytes": size, "ratio": upload / seconds}
            print(f"\n== S3 ({compression}): backup {seconds:.2f}s end to end; upload_file of the finished "
                  f"archive ({size / MB:.0f} MB) {upload:.2f}s; backup/upload_file speed ratio {upload / seconds:.2f}")
    finally:
        s3.stop()


def bench_reconcile(root: Path, sizes: list[int], results: dict) -> None:
    rows = []
    print("\n== reconcile (bring-up: one pass up to 100 databases, else batches of 50 every 30 s; "
          "idle pass: median of 3 once both servers settle)")
    print(f"{'dbs':>5} {'repl':>4} {'create s':>9} {'bring up s':>11} {'passes':>7} {'settle s':>9} "
          f"{'idle pass s':>12} {'idle RPCs':>10} {'list p/r s':>11} {'RSS p/r MB':>11}")
    runs = [(n, False) for n in sizes if n <= 100] + [(n, True) for n in sizes if n >= 100]
    for n, parked in runs:
        try:
            rows.append(_reconcile_once(root, n, parked))
        except Exception as exc:  # noqa: BLE001 - a size the machine cannot take is a result too
            rows.append({"databases": n, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{n:>10} failed: {exc}")
            continue
        r = rows[-1]
        print(f"{r['databases']:>5} {r['replication']:>4} {r['create_on_primary_seconds']:9.1f} {r['bring_up_seconds']:11.1f} "
              f"{r['bring_up_passes']:>7} {r['settle_seconds']:9.1f} {r['idle_pass_seconds']:12.3f} "
              f"{r['idle_pass_rpcs']:>10} {r['list_primary_seconds']:5.2f}/{r['list_replica_seconds']:.2f} "
              f"{r['primary_rss_mb']:>5}/{r['replica_rss_mb']}",
              flush=True)
    results["reconcile"] = rows


def _settle(servers, limit: float = 900, quiet: float = 1.0) -> float:
    """Seconds until DatabaseListV2 answers within `quiet` s three times in a row on every server."""
    start = time.perf_counter()
    admins = [admin_for(s, f"settle-{s.name}", timeout=600) for s in servers]
    try:
        streak = 0
        while streak < 3 and time.perf_counter() - start < limit:
            t = time.perf_counter()
            for a in admins:
                a.list_databases()
            streak = streak + 1 if time.perf_counter() - t < quiet * len(admins) else 0
            time.sleep(1)
    finally:
        for a in admins:
            a.close()
    return time.perf_counter() - start


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def _reconcile_once(root: Path, n: int, parked: bool) -> dict:
    """`parked`: the replica databases point at a closed port instead of the
    primary (reconcile.replication.primary_port), so they replicate nothing.
    Live replication streams cost the primary immudb 7-40 MB of memory each
    here (500 live replicas took it past 12 GB and the machine's memory ran
    out): parked, the pass still lists, compares and plans every database."""
    from reconciler import config
    from reconciler.reconcile import Reconciler
    p = ImmudbServer(f"p{n}", root / f"rp{n}-{parked}").start()
    r = ImmudbServer(f"r{n}", root / f"rr{n}-{parked}").start()
    try:
        start = time.perf_counter()
        with admin_for(p, "p", timeout=600) as admin:
            for i in range(n):
                immudb_data.create_small_database(admin, f"bench_{i:04d}")  # see its doc
        create = time.perf_counter() - start
        _settle([p])
        # up to 100: all in one pass (the figure asked for); beyond: the default batches of 50, 30 s apart
        batches = {"max_new_replicas": 0} if n <= 100 else {}
        if parked:
            batches["replication"] = {"primary_port": free_port()}  # nothing listens there
        rec = Reconciler.from_config(config.load(write_config(root, p, r, timeout=300, reconcile=batches), env={}))
        start, passes = time.perf_counter(), 0
        while True:
            result = rec.run_pass()
            passes += 1
            assert result.ok, result.error or [o.line() for o in result.failed][:3]
            if not result.plan.waiting:
                break
            time.sleep(rec.cfg.reconcile.batch_interval)
        bring_up = time.perf_counter() - start
        settle = _settle([p, r])
        idle_times, rpcs = [], 0
        for _ in range(3):
            calls = rec.primary.calls + rec.replica.calls
            t = time.perf_counter()
            again = rec.run_pass()
            idle_times.append(time.perf_counter() - t)
            rpcs = rec.primary.calls + rec.replica.calls - calls
            assert again.plan.in_sync, again.plan.lines()[:3]
        t = time.perf_counter()
        rec.primary.list_databases()
        list_p = time.perf_counter() - t
        t = time.perf_counter()
        rec.replica.list_databases()
        list_r = time.perf_counter() - t
        rec.close()
        rss = {"primary_rss_mb": _rss_mb(p.process.pid), "replica_rss_mb": _rss_mb(r.process.pid)}
        return {**rss, "databases": n, "replication": "parked" if parked else "live", "create_on_primary_seconds": create, "bring_up_seconds": bring_up,
                "bring_up_passes": passes, "settle_seconds": settle,
                "idle_pass_seconds": sorted(idle_times)[1], "idle_pass_seconds_all": idle_times,
                "idle_pass_rpcs": rpcs, "list_primary_seconds": list_p, "list_replica_seconds": list_r}
    finally:
        p.stop()
        r.stop()


def data_benchmarks(root: Path, args, size: int, results: dict) -> None:
    """Backup and S3 benchmarks on real replicated data."""
    primary = ImmudbServer("primary", root / "primary").start()
    replica = ImmudbServer("replica", root / "replica").start()
    try:
        names = [f"bench_{i}" for i in range(args.databases)]
        with admin_for(primary, "primary") as admin:
            for n in names:
                admin.create_database(n)
        start = time.perf_counter()
        for i, n in enumerate(names):
            fill(primary, n, size // len(names), seed=i)
        print(f"wrote {size} MB to the primary in {time.perf_counter() - start:.1f}s")
        from reconciler import config
        from reconciler.reconcile import Reconciler
        rec = Reconciler.from_config(config.load(write_config(root, primary, replica), env={}))
        assert rec.run_pass().ok
        rec.close()
        for n in names:
            want, got = immudb_data.wait_caught_up(primary, replica, n, n, timeout=600)
            assert got == want, f"{n} did not catch up"
        if args.only is None or "backup" in args.only:
            bench_backup(root, primary, replica, names, results)
        if args.only is None or "s3" in args.only:
            bench_s3(root, primary, replica, results)
        if args.only is None or "cli" in args.only:
            bench_cli(root, primary, replica, names, results)
        if args.go_tool and (args.only is None or "go" in args.only):
            from bench.go_tool import compare_backup
            compare_backup(root, primary, replica, names, args.go_tool, results)
    finally:
        primary.stop()
        replica.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data set and database counts (a few minutes)")
    parser.add_argument("--size-mb", type=int, help="total data size (default 240, quick 120)")
    parser.add_argument("--databases", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--only", type=lambda v: set(v.split(",")),
                        help="run only these benchmarks, comma-separated: backup, s3, reconcile, cli, go")
    parser.add_argument("--go-tool", metavar="PATH",
                        help="the Go replicator's binary, built from its source (bench/go_tool.py says how): "
                             "compared side by side")
    parser.add_argument("--reconcile-sizes", type=lambda v: [int(x) for x in v.split(",")],
                        help="database counts for the reconcile benchmark (default 10,100,500; quick 10,50)")
    args = parser.parse_args()
    size = args.size_mb or (120 if args.quick else 240)
    sizes = args.reconcile_sizes or ([10, 50] if args.quick else [10, 100, 500])
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}}
    root = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    try:
        if args.only is None or args.only & {"backup", "s3", "cli", "go"}:
            data_benchmarks(root, args, size, results)
        if args.only is None or "reconcile" in args.only:
            bench_reconcile(root, sizes, results)
        if args.go_tool and (args.only is None or "go" in args.only):
            from bench.go_tool import compare_bring_up, compare_faults
            compare_bring_up(root, args.go_tool, results)
            compare_faults(root, args.go_tool, results)
        elif not args.go_tool:
            results["go_tool"] = {"compared": False, "reason": "no --go-tool given (see bench/go_tool.py)"}
            print("\n== Go replicator: give --go-tool PATH to compare (bench/go_tool.py says how to build it)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results(Path(args.out), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
