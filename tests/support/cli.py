"""The one way tests run the command line: `python -m reconciler ARGV` in a
new process, from the checkout, output captured as text. Each test says
only what differs (environment, a prefix such as a wrapper, a umask)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def argv(*args: str) -> list[str]:
    """The command line of `replicator ARGS` as these tests run it."""
    return [sys.executable, "-m", "reconciler", *args]


def replicator(*args: str, env: Mapping[str, str] | None = None, timeout: float = 600,
               prefix: Sequence[str] = (), umask: str | None = None,
               cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `replicator ARGS` and wait for it: the result, whatever its exit
    code (callers assert it). `env` replaces the environment; `prefix` runs
    the command under a wrapper (e.g. unshare); `umask` sets it first.
    stdin is closed: nothing may wait for a terminal."""
    command = [*prefix, *argv(*args)]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask}; exec "$@"', "sh", *command]
    return subprocess.run(command, capture_output=True, text=True, errors="replace", cwd=cwd,
                          env=dict(env) if env is not None else None, timeout=timeout, stdin=subprocess.DEVNULL)


def environment_without(*prefixes: str, **extra: str) -> dict[str, str]:
    """This process's environment without the variables starting with any
    of `prefixes`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def system_binary(name: str, package: str) -> str:
    """The path of system command `name` (Debian package `package`). Missing:
    under `scripts/test --unit`, which installs no Debian package, the test
    is skipped and says why; in the whole suite, whose bootstrap installs
    it, the test fails (a skip there would hide a broken install)."""
    import shutil

    import pytest
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("REPLICATOR_TESTS_UNIT_ONLY"):
        pytest.skip(f"{name} is missing (Debian package {package}; the whole scripts/test installs it)")
    pytest.fail(f"{name} is missing: scripts/bootstrap installs it (Debian package {package})")
