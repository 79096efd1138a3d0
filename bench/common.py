"""What the benchmarks share: data written to a real primary, configuration
files for the test servers, a backup in a child process."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.support import configs, immudb_data

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000


def _json_value(rng: random.Random, size: int) -> bytes:
    """A compressible, JSON-like document of about `size` bytes."""
    words = ["order", "customer", "amount", "currency", "EUR", "status", "shipped", "pending", "sku", "address"]
    parts = []
    while sum(len(p) for p in parts) < size:
        parts.append(f'"{rng.choice(words)}_{rng.randint(0, 9999)}": "{rng.choice(words)}-{rng.randint(0, 99999)}"')
    return ("{" + ", ".join(parts) + "}").encode()[:size]


def fill(server, database: str, megabytes: int, seed: int) -> int:
    """Write about `megabytes` of values, half JSON-like, half random, in
    transactions of 64 entries of 16 KiB. Returns bytes written."""
    rng = random.Random(seed)
    client = immudb_data.client(server, database)
    written, n = 0, 0
    while written < megabytes * MB:
        batch = {}
        for _ in range(64):
            value = _json_value(rng, 16384) if n % 2 == 0 else os.urandom(16384)
            batch[f"k{n:09d}".encode()] = value
            written += len(value)
            n += 1
        client.setAll(batch)
    client.shutdown()
    return written


def tree_bytes(paths) -> int:
    return sum(f.stat().st_size for p in paths for f in Path(p).rglob("*") if f.is_file())


def timed(argv, shell=False) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, shell=shell, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def write_config(root: Path, primary, replica, timeout: float = 30, reconcile: dict | None = None,
                 name: str = "bench.yaml", **backup) -> Path:
    """`name` (bench.yaml) in `root`: the databases bench_* of these servers
    (the tests' configuration builder), `reconcile` and `backup` keys added."""
    return configs.write_config(root, primary, replica, "bench_", "follower", name=name,
                                password="Bench-follower-1", timeout=timeout, reconcile=reconcile or {},
                                backup=backup)


def run_backup_subprocess(config: Path, target: str) -> dict:
    """A backup in a child process: its result and the child's peak RSS."""
    code = (
        "import json, resource, sys, warnings; warnings.filterwarnings('ignore');"
        "from reconciler import config; from reconciler.backup.job import Backups;"
        f"cfg = config.load({str(config)!r}, env={{}});"
        f"r = Backups(cfg).run(cfg.backup.targets[{target!r}]);"
        "u = resource.getrusage(resource.RUSAGE_SELF);"
        "print(json.dumps(dict(r.as_dict(), maxrss_kb=u.ru_maxrss, cpu_seconds=u.ru_utime + u.ru_stime)))"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - start
    if not result["ok"]:
        raise RuntimeError(f"backup failed: {result['error']}")
    return result




def write_results(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out}")
