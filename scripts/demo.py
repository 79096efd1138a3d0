"""The main job, end to end, on two throwaway immudb servers on loopback:
a database with data on the primary, one `replicator reconcile --once`, and
the replica database caught up (same transaction id and state hash)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=DeprecationWarning)

from tests.support import immudb_data  # noqa: E402
from tests.support.servers import ImmudbServer, admin_for  # noqa: E402

FOLLOWER_PASSWORD = "Demo-follower-pw-1"


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def replicator(*argv: str) -> int:
    print("$ replicator " + " ".join(argv), flush=True)
    return subprocess.run([sys.executable, "-m", "reconciler", *argv], cwd=ROOT).returncode


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="replicator-demo-"))
    step("starting two immudb servers on loopback")
    primary = ImmudbServer("primary", root / "primary").start()
    replica = ImmudbServer("replica", root / "replica").start()
    try:
        print(f"primary {primary.address}   replica {replica.address}")
        step("a database 'shop' with 100 transactions on the primary")
        with admin_for(primary, "primary") as admin:
            admin.create_database("shop")
        immudb_data.write(primary, "shop", 100, prefix="order-")
        print(f"primary shop: tx {immudb_data.state(primary, 'shop')[0]}")

        cfg = root / "replicator.yaml"
        cfg.write_text(f"""\
primary: {{host: 127.0.0.1, port: {primary.port}, username: immudb, password: "{primary.password}"}}
replica: {{host: 127.0.0.1, port: {replica.port}, username: immudb, password: "{replica.password}",
          data_dir: {replica.data_dir}}}
follower: {{username: follower, password: "{FOLLOWER_PASSWORD}"}}
logging: {{level: warning}}
""")
        step(f"config {cfg}")
        text = cfg.read_text()
        for secret in (FOLLOWER_PASSWORD, primary.password, replica.password):
            text = text.replace(secret, "***")
        print(text)

        step("what a pass would do (exit 2: changes pending)")
        print(f"(exit {replicator('plan', '-c', str(cfg))})")
        step("one reconcile pass")
        if replicator("reconcile", "--once", "-c", str(cfg)) != 0:
            print("demo: the pass failed", file=sys.stderr)
            return 1

        step("the replica catches up")
        want, got = immudb_data.wait_caught_up(primary, replica, "shop", "shop")
        print(f"primary shop: tx {want[0]} hash {want[1].hex()[:16]}...")
        print(f"replica shop: tx {got[0] if got else '-'} hash {got[1].hex()[:16] if got else '-'}...")
        if got != want:
            print("demo: the replica did not catch up", file=sys.stderr)
            return 1
        print("replica shop order-42 =", immudb_data.read(replica, "shop", [b"order-42"])[b"order-42"])

        step("50 more writes on the primary arrive by replication alone")
        immudb_data.write(primary, "shop", 50, prefix="late-")
        want, got = immudb_data.wait_caught_up(primary, replica, "shop", "shop")
        print(f"primary tx {want[0]}, replica tx {got[0] if got else '-'}")

        step("status (and defaultdb followed as defaultdbbak)")
        time.sleep(0.5)
        replicator("status", "-c", str(cfg))
        step("a second pass has nothing to do (exit 0)")
        print(f"(exit {replicator('plan', '-c', str(cfg))})")
        return 0 if got == want else 1
    finally:
        primary.stop()
        replica.stop()
        import shutil
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
