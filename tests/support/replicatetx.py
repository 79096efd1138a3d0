"""immudb's own verdict on exported transactions: tests/go/replicatetx
(ImmuStore.ReplicateTx of the embedded store) built from the immudb module
the test servers are built from, and a client that asks it."""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.support.servers import IMMUDB_MODULE, IMMUDB_VERSION, ServerError, cache_dir

SOURCE = Path(__file__).resolve().parents[1] / "go" / "replicatetx"
PINNED = "1.11.1"  # the version go.mod and go.sum name; another one is resolved at build time


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ServerError("cannot build tests/go/replicatetx: no Go toolchain on PATH")
    return go


def build(version: str = IMMUDB_VERSION) -> Path:
    """The program, built once per source and immudb version (cached beside
    the immudb build). Raises ServerError with the build's output."""
    digest = hashlib.sha256(version.encode())
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update((SOURCE / name).read_bytes())
    out = cache_dir() / f"replicatetx-{digest.hexdigest()[:16]}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    go = _go()
    with tempfile.TemporaryDirectory(prefix="replicatetx-build-", dir=out.parent) as work:
        for name in ("main.go", "go.mod", "go.sum"):
            shutil.copy(SOURCE / name, Path(work) / name)
        env = dict(os.environ, GOFLAGS="-mod=mod")
        steps = [[go, "build", "-trimpath", "-o", str(Path(work) / "replicatetx"), "."]]
        if version != PINNED:
            steps[:0] = [[go, "mod", "edit", f"-require={IMMUDB_MODULE}@v{version}"], [go, "mod", "tidy"]]
        for argv in steps:
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise ServerError(f"cannot build tests/go/replicatetx ({' '.join(argv[1:3])}): "
                                  f"{(done.stdout + done.stderr).strip()[-1500:]}")
        os.replace(Path(work) / "replicatetx", out)  # whole or absent
    return out


class ImmudbVerdicts:
    """One running replicatetx: `verdict(data)` is ("ok", alh hex),
    ("refused", why) or ("panic", why)."""

    def __init__(self, binary: Path, max_key_len: int = 1024, max_value_len: int = 1 << 25,
                 max_tx_entries: int = 1024, timeout: float = 60.0):
        self.timeout = timeout
        self.process = subprocess.Popen(
            [str(binary), f"-max-key-len={max_key_len}", f"-max-value-len={max_value_len}",
             f"-max-tx-entries={max_tx_entries}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)

    def verdict(self, data: bytes) -> tuple[str, str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(struct.pack(">I", len(data)) + data)
        self.process.stdin.flush()
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.timeout)
        if not line or not line[0]:
            raise ServerError(f"replicatetx gave no verdict within {self.timeout:g}s "
                              f"(exit {self.process.poll()}): {self._stderr()}")
        kind, _, rest = line[0].decode().rstrip("\n").partition(" ")
        if kind == "ok":
            rest = rest.split()[0]
        return kind, rest

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")[-500:]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ImmudbVerdicts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
