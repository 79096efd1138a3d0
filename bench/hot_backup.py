"""A baseline: immudb's own transaction-level backup, `immuadmin hot-backup`
and `immuadmin hot-restore`, on a throwaway server.

    .venv/bin/python -m bench.hot_backup --transactions 20000 --value-bytes 256

One database gets `--transactions` transactions of one key each (random,
incompressible values of `--value-bytes`); then, `--runs` times, it is backed
up to a file with `immuadmin hot-backup` and that file is restored into a new
database with `immuadmin hot-restore`, whose state must then equal the
original's. Only the hot-backup and hot-restore commands are timed (not the
login before them).

immuadmin is driven non-interactively: `login` reads the password from a
pipe on stdin (all of it: no trailing newline), and every command gets
`--tokenfile WORKDIR/token` (immuadmin appends `_admin`) and `HOME=WORKDIR`,
so no token or configuration under ~ is read or written. With immudb's
default admin password `login` asks to change it and exits 1: the servers
here have another one.

The backup file is a sequence of records, one per transaction: "IMMUBACKUP",
format version (uint32), transaction id (uint64), checksum length (uint32),
payload length (uint32), all big-endian, then the checksum (the transaction's
Alh, 32 bytes) and the payload (immudb's ExportTx stream).
"""
from __future__ import annotations

import argparse
import collections
import os
import struct
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.common import MB
from reconciler.admin import ImmudbAdmin, pb
from reconciler.secret import Secret
from tests.support.servers import ImmudbServer, build_immudb

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from immudb.grpc.schema_pb2_grpc import ImmuServiceStub

USERNAME = "immudb"
PASSWORD = ImmudbServer.password  # the test servers' admin password, not immudb's default
TIMEOUT = 60.0  # seconds, for every RPC
IMMUADMIN_TIMEOUT = 3600.0  # seconds, for one immuadmin command
# Set requests in flight at once: a database's maxConcurrency (immudb's default
# 30) bounds the transactions being committed; more fail with "max
# concurrency limit exceeded"
IN_FLIGHT = 24

_HEADER = struct.Struct(">10sIQII")  # prefix, version, tx id, checksum length, payload length
_PREFIX = b"IMMUBACKUP"


@dataclass(frozen=True)
class BackupFile:
    """What a hot-backup file holds."""

    transactions: int
    first_tx: int
    last_tx: int
    last_alh: bytes  # the last transaction's accumulative hash: the database's state hash then


def read_backup(path: Path) -> BackupFile:
    """Walk the records of a hot-backup file. Raises ValueError when it is
    malformed, empty or its transaction ids are not consecutive."""
    count, first, last, alh = 0, 0, 0, b""
    with open(path, "rb") as f:
        while header := f.read(_HEADER.size):
            if len(header) < _HEADER.size:
                raise ValueError(f"{path}: truncated record header after tx {last}")
            prefix, _version, tx, checksum_len, payload_len = _HEADER.unpack(header)
            if prefix != _PREFIX:
                raise ValueError(f"{path}: no {_PREFIX.decode()} prefix after tx {last}")
            if count and tx != last + 1:
                raise ValueError(f"{path}: tx {tx} follows tx {last}")
            alh = f.read(checksum_len)
            f.seek(payload_len, os.SEEK_CUR)
            count, first, last = count + 1, first or tx, tx
    if count == 0:
        raise ValueError(f"{path}: no transactions")
    return BackupFile(count, first, last, alh)


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Bearer " + token),)


def populate(host: str, port: int, database: str, transactions: int, value_bytes: int, *,
             username: str = USERNAME, password: str = PASSWORD, in_flight: int = IN_FLIGHT) -> float:
    """Create `database` and write exactly `transactions` transactions of one
    key each (k0000000000, ...; random values of `value_bytes`). Returns the
    seconds the writes took.

    One gRPC channel keeps `in_flight` Set calls pending (immudb-py's
    generated stub, called asynchronously): immudb commits concurrent
    transactions together, so throughput grows with the calls in flight, and
    asynchronous calls cost far less Python than as many threads."""
    with ImmudbAdmin("populate", host, port, username, Secret(password), timeout=TIMEOUT) as admin:
        admin.create_database(database)
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            stub = ImmuServiceStub(channel)
            login = stub.Login(pb.LoginRequest(user=username.encode(), password=password.encode()), timeout=TIMEOUT)
            use = stub.UseDatabase(pb.Database(databaseName=database), metadata=_auth(login.token), timeout=TIMEOUT)
            metadata = _auth(use.token)
            pending: collections.deque[grpc.Future] = collections.deque()
            start = time.perf_counter()
            for n in range(transactions):
                if len(pending) >= in_flight:
                    pending.popleft().result()
                request = pb.SetRequest(KVs=[pb.KeyValue(key=b"k%010d" % n, value=os.urandom(value_bytes))])
                pending.append(stub.Set.future(request, metadata=metadata, timeout=TIMEOUT))
            for call in pending:
                call.result()
            seconds = time.perf_counter() - start
        written = admin.state(database).tx_id
    if written != transactions:
        raise RuntimeError(f"{database} holds {written} transactions, not {transactions}")
    return seconds


def _immuadmin(immuadmin: Path, host: str, port: int, workdir: Path, *args: str,
               stdin: str = "") -> subprocess.CompletedProcess:
    """Run `immuadmin ARGS` against host:port with its token file and HOME in
    `workdir`; no IMMUADMIN_* variable of ours leaks in. Raises RuntimeError
    with its output when it fails."""
    argv = [str(immuadmin), *args, "--immudb-address", host, "--immudb-port", str(port),
            "--tokenfile", str(workdir / "token")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=workdir, env=env,
                          timeout=IMMUADMIN_TIMEOUT)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().split("\nUsage:")[0]  # not cobra's usage text
        raise RuntimeError(f"immuadmin {args[0]} failed (exit {done.returncode}): {output}")
    return done


def login(immuadmin: Path, host: str, port: int, workdir: Path, *,
          username: str = USERNAME, password: str = PASSWORD) -> None:
    """`immuadmin login USER`, the password on stdin; the token goes to
    `workdir/token_admin`."""
    _immuadmin(immuadmin, host, port, workdir, "login", username, stdin=password)


def hot_backup(immuadmin: Path, host: str, port: int, database: str, out_path: Path, workdir: Path, *,
               username: str = USERNAME, password: str = PASSWORD) -> dict:
    """Back up `database` from its first transaction to a new file
    `out_path` with `immuadmin hot-backup` (after a login, not timed).
    Returns seconds, transactions in the file and its size in bytes."""
    login(immuadmin, host, port, workdir, username=username, password=password)
    start = time.perf_counter()
    _immuadmin(immuadmin, host, port, workdir, "hot-backup", database, "--output", str(out_path))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "transactions": read_backup(out_path).transactions,
            "bytes": out_path.stat().st_size}


def hot_restore(immuadmin: Path, host: str, port: int, new_database: str, in_path: Path, workdir: Path, *,
                username: str = USERNAME, password: str = PASSWORD) -> dict:
    """Restore the hot-backup file `in_path` into `new_database`, which must
    not exist (immuadmin creates it as a replica, replays every transaction,
    then turns replica mode off). Only `immuadmin hot-restore` is timed.

    Then the new database's state must be the original's when it was backed
    up: the file's last transaction id and its Alh, which immuadmin read from
    the original. Raises RuntimeError otherwise. Returns seconds and
    transactions restored."""
    login(immuadmin, host, port, workdir, username=username, password=password)
    start = time.perf_counter()
    _immuadmin(immuadmin, host, port, workdir, "hot-restore", new_database, "--input", str(in_path))
    seconds = time.perf_counter() - start
    backup = read_backup(in_path)
    with ImmudbAdmin("restored", host, port, username, Secret(password), timeout=TIMEOUT) as admin:
        state = admin.state(new_database)
    if (state.tx_id, state.tx_hash) != (backup.last_tx, backup.last_alh):
        raise RuntimeError(f"{new_database} is at tx {state.tx_id} ({state.tx_hash.hex()[:16]}), the backup at "
                           f"tx {backup.last_tx} ({backup.last_alh.hex()[:16]})")
    return {"seconds": seconds, "transactions": backup.transactions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=20000, help="transactions of one key each (20000)")
    parser.add_argument("--value-bytes", type=int, default=256, help="size of each value (256)")
    parser.add_argument("--runs", type=int, default=2, help="backup and restore rounds (2)")
    args = parser.parse_args(argv)
    immuadmin = build_immudb() / "immuadmin"
    database = "hotbench"
    payload_mb = args.transactions * args.value_bytes / MB
    with tempfile.TemporaryDirectory(prefix="bench-hot-backup-") as tmp:
        root = Path(tmp)
        server = ImmudbServer("hot-backup", root / "immudb").start()
        host = "127.0.0.1"
        try:
            seconds = populate(host, server.port, database, args.transactions, args.value_bytes)
            print(f"populated {database}: {args.transactions} transactions of one {args.value_bytes}-byte value "
                  f"in {seconds:.1f} s ({args.transactions / seconds:.0f} tx/s)")
            rows = []
            for run in range(1, args.runs + 1):
                workdir = root / f"run{run}"
                workdir.mkdir()
                backup = hot_backup(immuadmin, host, server.port, database, workdir / "hot.backup", workdir)
                if backup["transactions"] != args.transactions:
                    raise RuntimeError(f"the backup holds {backup['transactions']} transactions, "
                                       f"not {args.transactions}")
                restore = hot_restore(immuadmin, host, server.port, f"{database}r{run}", workdir / "hot.backup",
                                      workdir)
                rows.append((run, backup, restore))
        finally:
            server.stop()
    print(f"\n== immuadmin hot-backup / hot-restore (immudb {server.version}; MB/s = payload MB/s)")
    print(f"{'run':>3} {'tx':>8} {'payload MB':>10} {'file MB':>8} {'backup s':>9} {'tx/s':>7} {'MB/s':>6} "
          f"{'restore s':>10} {'tx/s':>7} {'MB/s':>6}")
    for run, b, r in rows:
        print(f"{run:3} {b['transactions']:8} {payload_mb:10.2f} {b['bytes'] / MB:8.2f} {b['seconds']:9.2f} "
              f"{b['transactions'] / b['seconds']:7.0f} {payload_mb / b['seconds']:6.2f} {r['seconds']:10.2f} "
              f"{r['transactions'] / r['seconds']:7.0f} {payload_mb / r['seconds']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
