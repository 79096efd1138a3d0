"""The package as users install it: a wheel built from the source tree,
installed into a fresh virtualenv outside the checkout, run from another
directory. (Every other test runs the editable install, which would hide a
module or a data file missing from the wheel.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.support import immudb_data
from tests.support.configs import unique_name

# building and installing needs the package index, not the test servers; the main-job test
# also uses the servers (and is marked `servers` by its fixtures)
pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reconciler"
# never copied into the build: what a developer's checkout may hold beside the source
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                    ".pytest_cache", ".hypothesis", "results")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the tree (a stale build/ folder in
    the checkout could otherwise put modules that no longer exist into it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = (work / "dist").glob("immudb_replicator-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv outside the checkout with the wheel (and its
    dependencies, from the package index) installed: its bin folder."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin"


def test_wheel_holds_every_module_and_data_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    source = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".json", ".yaml")}
    assert source - names == set()
    assert {"reconciler/schemas/replicator.schema.json", "reconciler/schemas/backup-request.schema.json",
            "reconciler/schemas/openapi.yaml"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        assert "replicator = reconciler.cli:main" in z.read(entry_points).decode()


def run(bin_dir: Path, cwd: Path, *argv: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REPLICATOR_CONFIG")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    done = subprocess.run(["replicator", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, f"replicator {' '.join(argv)}: {done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def test_installed_wheel_runs_the_main_job_from_outside_the_checkout(installed, tmp_path, primary_server,
                                                                     replica_server, primary):
    away = tmp_path / "elsewhere"
    away.mkdir()
    assert run(installed, away, "--version").stdout.strip().startswith("immudb-replicator ")
    example = away / "replicator.yaml"
    shutil.copy(ROOT / "examples" / "replicator.yaml", example)
    assert ": valid;" in run(installed, away, "validate", "-c", str(example)).stdout

    prefix = unique_name("whl") + "_"
    name = f"{prefix}a"
    primary.create_database(name)
    immudb_data.write(primary_server, name, 5)
    config = away / "mine.yaml"
    archives = away / "archives"
    config.write_text(yaml.safe_dump({
        "primary": {"host": "127.0.0.1", "port": primary_server.port, "password": primary_server.password},
        "replica": {"host": "127.0.0.1", "port": replica_server.port, "password": replica_server.password,
                    "data_dir": str(replica_server.data_dir)},
        "follower": {"username": "fol_" + prefix.strip("_"), "password": "Follower-pw-1"},
        "reconcile": {"databases": {"include": [f"{prefix}*"]}},
        "backup": {"databases": {"include": [f"{prefix}*"]},
                   "targets": {"here": {"type": "file", "path": str(archives / "w-{timestamp}.tar.gz")}},
                   "trust": {"state_dir": str(away / "state")}},
    }))
    plan = run(installed, away, "plan", "-c", str(config), ok=False)
    assert plan.returncode == 2 and f"+ create replica {name}" in plan.stdout, plan.stdout + plan.stderr
    assert ": done" in run(installed, away, "reconcile", "--once", "-c", str(config)).stdout
    want, got = immudb_data.wait_caught_up(primary_server, replica_server, name, name)
    assert got == want

    backup = run(installed, away, "backup", "-c", str(config), "--target", "here")
    [archive] = archives.iterdir()
    assert str(archive) in backup.stdout
    verified = run(installed, away, "verify", "-c", str(config), str(archive)).stdout
    assert ": OK:" in verified and "anchor local" in verified and "anchor live" in verified


def test_python_m_reconciler_works_from_the_repository_root(installed):
    """There `reconciler` is the checkout's own folder, not the installed copy."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(installed / "python"), "-m", "reconciler", "validate", "-c",
                           "examples/replicator.yaml"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and ": valid;" in done.stdout, done.stdout + done.stderr
