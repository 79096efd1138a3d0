"""What the Go replicator's clients see: its REST shapes decoded by a
small Go program with the Go tool's own types, compiled here."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import TOKEN, Daemon

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def gotypes(tmp_path_factory, immudb_build) -> Path:
    """tests/go/gotypes built with the Go toolchain that builds immudb."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = tmp_path_factory.mktemp("go") / "gotypes"
    done = subprocess.run([go, "build", "-o", str(out), "."], cwd=HERE / "go" / "gotypes", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_a_go_client_with_the_go_tools_types_reads_our_answers(gotypes, tmp_path, primary_server, replica_server,
                                                                replicated):
    prefix, names, _ = replicated
    d = Daemon(tmp_path, primary_server, replica_server, prefix).start()
    try:
        done = subprocess.run([str(gotypes), d.url, TOKEN, str(tmp_path / "out" / "go-{timestamp}.tar.gz")],
                              capture_output=True, text=True, timeout=300)
    finally:
        d.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('home "replicator v') and lines[0].endswith('\\n"')
    assert lines[-1] == "start {Running:false Progress:100 ProgressBytes:1}"
    assert [line for line in lines if line.startswith("status ")][-1] == \
        "status {Running:false Progress:100 ProgressBytes:1}"
    assert len(list((tmp_path / "out").iterdir())) == 1
