"""Continuous backup (the journal) side by side with immudb's own
transaction-level tools, `immuadmin hot-backup` and `hot-restore`, on the
same database; and the journal's lag under the fastest writer this machine
runs, for 1, 10 and 100 databases.

    .venv/bin/python -m bench.journal throughput --transactions 20000
    .venv/bin/python -m bench.journal lag --databases 1 10 100 --seconds 60

throughput: one database of N transactions (one key, 256 random bytes each).
  hot-backup / hot-restore: immuadmin, timed by bench.hot_backup.
  export: a Journal (the daemon's code) in a child process, from transaction
  1 to N into segments on a file target: exported, checked (Eh, Alh),
  compressed and uploaded; its peak RSS for N and 5N shows whether memory
  grows with history.
  replay: `replay()` (what `restore --to-end` runs) of that journal into a new
  database, checked against the journal's record.

lag: a primary and a replica with D replicated databases, `replicator run`
  journaling all of them (segment_max_seconds 2, file target); a writer
  keeps 24 Set calls in flight on the primary, round-robin over the
  databases, for --seconds; every 0.25 s the daemon's /status journal
  lag_seconds of each database is sampled. Then the writer stops and the
  daemon's CPU over 20 idle seconds and its RSS are read from /proc.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench import hot_backup
from bench.common import MB, ROOT

SEGMENT_SECONDS = 2.0


def _export(port: int, database: str, directory: Path, transactions: int) -> dict:
    """Child process: a Journal from transaction 1 to `transactions`."""
    from reconciler.admin import ImmudbAdmin
    from reconciler.config.model import ContinuousConfig, TargetConfig
    from reconciler.journal.shipper import Journal
    from reconciler.journal.store import JournalStore
    from reconciler.secret import Secret
    admin = ImmudbAdmin("bench", "127.0.0.1", port, hot_backup.USERNAME, Secret(hot_backup.PASSWORD), timeout=60)
    target = TargetConfig("bench", "file", str(directory / "target" / "x-{timestamp}.tar.gz"))
    # segments closed by size (4 MiB), the last one 0.2 s after its first transaction: the figure is the export's
    settings = ContinuousConfig("bench", segment_max_seconds=0.2, segment_max_bytes=4 * 1024 * 1024)
    journal = Journal(database, admin, lambda: JournalStore(target, database), settings, directory / "spool", "bench")
    start = time.perf_counter()
    journal.start()
    while journal.snapshot()["shipped_tx"] < transactions:
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    status = journal.snapshot()
    journal.stop()
    return {"seconds": seconds, "shipped_bytes": status["shipped_bytes"], "segments": status["shipped_segments"],
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def throughput(transactions: int, value_bytes: int) -> dict:
    from reconciler.admin import ImmudbAdmin
    from reconciler.config.model import TargetConfig
    from reconciler.journal.replay import Point, plan, replay
    from reconciler.journal.store import JournalStore
    from reconciler.secret import Secret
    from tests.support.servers import ImmudbServer, build_immudb
    immuadmin = build_immudb() / "immuadmin"
    out: dict = {"transactions": transactions, "payload_mb": transactions * value_bytes / MB}
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        root = Path(tmp)
        server = ImmudbServer("journal-bench", root / "immudb").start()
        try:
            out["populate_s"] = hot_backup.populate("127.0.0.1", server.port, "bench", transactions, value_bytes)
            work = root / "immuadmin"
            work.mkdir()
            hb = hot_backup.hot_backup(immuadmin, "127.0.0.1", server.port, "bench", root / "hot.bak", work)
            hr = hot_backup.hot_restore(immuadmin, "127.0.0.1", server.port, "hotrestored", root / "hot.bak", work)
            done = subprocess.run([sys.executable, "-m", "bench.journal", "_export", "--port", str(server.port),
                                   "--database", "bench", "--dir", str(root / "ours"), "--transactions",
                                   str(transactions)], capture_output=True, text=True, cwd=ROOT, check=True)
            ours = json.loads(done.stdout.strip().splitlines()[-1])
            target = TargetConfig("bench", "file", str(root / "ours" / "target" / "x-{timestamp}.tar.gz"))
            with JournalStore(target, "bench") as store, ImmudbAdmin(
                    "bench", "127.0.0.1", server.port, hot_backup.USERNAME, Secret(hot_backup.PASSWORD),
                    timeout=60) as admin:
                proving = time.perf_counter()
                planned = plan(store, Point())  # the proof: every segment read and checked once before replay
                prove_s = time.perf_counter() - proving
                result = replay(store, planned, admin, "replayed")
            assert result.tx_id == transactions
        finally:
            server.stop()
    out.update({
        "hot_backup_s": hb["seconds"], "hot_backup_tx_s": transactions / hb["seconds"],
        "hot_backup_file_mb": hb["bytes"] / MB,
        "hot_restore_s": hr["seconds"], "hot_restore_tx_s": transactions / hr["seconds"],
        "export_s": ours["seconds"], "export_tx_s": transactions / ours["seconds"],
        "export_mb_s": out["payload_mb"] / ours["seconds"], "journal_mb": ours["shipped_bytes"] / MB,
        "segments": ours["segments"], "export_rss_mb": ours["rss_mb"],
        "replay_s": result.seconds, "replay_tx_s": transactions / result.seconds,
        "prove_s": prove_s, "prove_tx_s": transactions / prove_s,
    })
    out["export_speedup"] = out["export_tx_s"] / out["hot_backup_tx_s"]
    out["replay_speedup"] = out["replay_tx_s"] / out["hot_restore_tx_s"]
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def lag(databases: int, seconds: float) -> dict:
    import grpc

    from reconciler import config
    from reconciler.admin import pb
    from reconciler.reconcile import Reconciler
    from tests.support.configs import write_config
    from tests.support.servers import ImmudbServer, admin_for, free_port
    with tempfile.TemporaryDirectory(prefix="bench-journal-lag-") as tmp:
        root = Path(tmp)
        primary = ImmudbServer("primary", root / "primary").start()
        replica = ImmudbServer("replica", root / "replica").start()
        daemon = None
        try:
            names = [f"bench_{i}" for i in range(databases)]
            with admin_for(primary, "primary") as admin:
                for name in names:
                    admin.create_database(name)
            port = free_port()
            path = write_config(root, primary, replica, "bench_", "follower", name="bench.yaml",
                                reconcile={"interval": 5, "max_new_replicas": 1000},
                                targets={"local": {"type": "file", "path": str(root / "t" / "x-{timestamp}.tar.gz")}},
                                continuous={"target": "local", "segment_max_seconds": SEGMENT_SECONDS,
                                            "spool_dir": str(root / "spool")},
                                api={"listen": f"127.0.0.1:{port}"})
            rec = Reconciler.from_config(config.load(path, env={}))
            assert rec.run_pass().ok
            rec.close()
            log = open(root / "daemon.log", "wb")
            daemon = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "-c", str(path)], cwd=ROOT,
                                      stdout=log, stderr=subprocess.STDOUT)

            def journal() -> list[dict]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as r:
                    return json.loads(r.read())["journal"]

            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if len(journal()) == databases and all(j["state"] == "shipping" for j in journal()):
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError(f"journals did not start: {(root / 'daemon.log').read_text()[-2000:]}")

            stop = threading.Event()
            written = [0]

            def writer() -> None:
                with grpc.insecure_channel(primary.address) as channel:
                    login = channel.unary_unary("/immudb.schema.ImmuService/Login",
                                                request_serializer=pb.LoginRequest.SerializeToString,
                                                response_deserializer=pb.LoginResponse.FromString)(
                        pb.LoginRequest(user=b"immudb", password=primary.password.encode()), timeout=30)
                    use = channel.unary_unary("/immudb.schema.ImmuService/UseDatabase",
                                              request_serializer=pb.Database.SerializeToString,
                                              response_deserializer=pb.UseDatabaseReply.FromString)
                    tokens = [use(pb.Database(databaseName=n), metadata=(("authorization", "Bearer " + login.token),),
                                  timeout=30).token for n in names]
                    set_call = channel.unary_unary("/immudb.schema.ImmuService/Set",
                                                   request_serializer=pb.SetRequest.SerializeToString,
                                                   response_deserializer=pb.TxHeader.FromString)
                    pending: collections.deque = collections.deque()
                    n = 0
                    while not stop.is_set():
                        if len(pending) >= 24:
                            pending.popleft().result()
                            written[0] += 1
                        token = tokens[n % len(tokens)]
                        pending.append(set_call.future(pb.SetRequest(KVs=[pb.KeyValue(key=b"k%d" % n,
                                                                                      value=os.urandom(256))]),
                                                       metadata=(("authorization", "Bearer " + token),), timeout=60))
                        n += 1
                    for call in pending:
                        call.result()
                        written[0] += 1

            thread = threading.Thread(target=writer)
            samples: list[float] = []
            started = time.monotonic()
            thread.start()
            while time.monotonic() - started < seconds:
                samples += [j["lag_seconds"] for j in journal()]
                time.sleep(0.25)
            stop.set()
            thread.join()
            write_seconds = time.monotonic() - started
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not all(j["lag_transactions"] == 0 and j["replica_tx"] > 0
                                                          for j in journal()):
                time.sleep(0.5)
            catch_up = time.monotonic() - started - write_seconds
            cpu = _cpu_seconds(daemon.pid)
            time.sleep(20)
            idle_cpu = (_cpu_seconds(daemon.pid) - cpu) / 20
            samples.sort()
            return {"databases": databases, "writer_tx_s": written[0] / write_seconds,
                    "lag_p50_s": statistics.median(samples), "lag_p99_s": samples[int(len(samples) * 0.99) - 1],
                    "lag_max_s": samples[-1], "samples": len(samples), "catch_up_s": catch_up,
                    "idle_cpu_percent": 100 * idle_cpu, "idle_cpu_percent_per_db": 100 * idle_cpu / databases,
                    "daemon_rss_mb": _rss_mb(daemon.pid)}
        finally:
            if daemon is not None:
                daemon.terminate()
                daemon.wait(60)
            replica.stop()
            primary.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--transactions", type=int, nargs="+", default=[20000])
    p.add_argument("--value-bytes", type=int, default=256)
    p = sub.add_parser("lag")
    p.add_argument("--databases", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--seconds", type=float, default=60)
    p = sub.add_parser("_export")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--transactions", type=int, required=True)
    args = parser.parse_args(argv)
    if args.what == "_export":
        print(json.dumps(_export(args.port, args.database, args.dir, args.transactions)))
        return 0
    for n in (args.transactions if args.what == "throughput" else args.databases):
        run = throughput(n, args.value_bytes) if args.what == "throughput" else lag(n, args.seconds)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
