"""Restore drills: proof that an archive restores into a working immudb.

The archive is restored (the reader and checks of `restore`) into a private
scratch folder; a throwaway immudb is started on it, on a loopback port with
a random admin password given through its environment; then, for every
database in the manifest, its transaction id and state hash must be the
ones recorded when it was unloaded, and a sample of its keys (the first and
the last ones) must read back with immudb's proofs holding against that
recorded state. This catches what `verify` cannot: files rewritten together
with their checksums, so that the archive is consistent with itself but its
data is not the history the replica had. The server is stopped and the
scratch folder removed whatever happens.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.backup.restore import RestoreError, restore
from reconciler.config.model import DrillConfig
from reconciler.errors import ReplicatorError
from reconciler.log import event
from reconciler.manifest import DatabaseEntry, Manifest

log = logging.getLogger(__name__)


class DrillError(ReplicatorError):
    """The drill could not be run (no immudb binary, the server did not
    start); not a verdict on the archive."""


@dataclass
class DrillResult:
    location: str
    started_at: float
    finished_at: float = 0.0
    databases: dict[str, str] = field(default_factory=dict)  # name -> what was checked, or what failed
    problems: list[str] = field(default_factory=list)
    backup_id: str | None = None
    anchors: list[str] = field(default_factory=list)   # what vouched for the archive's states

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.databases)

    def as_dict(self) -> dict:
        return {"location": self.location, "ok": self.ok, "started_at": self.started_at,
                "finished_at": self.finished_at, "backup_id": self.backup_id, "databases": self.databases,
                "problems": self.problems, "anchors": self.anchors}


def drill(stream: BinaryIO, location: str, cfg: DrillConfig,
          say: Callable[[str], None] = lambda line: None,
          vouch: Callable[[Manifest], list] | None = None,
          identities: Sequence[Any] | None = None) -> DrillResult:
    """Restore the archive in `stream` and check it in a throwaway immudb;
    `vouch(manifest)` (trust/sources.vouch_for_archive) checks what the
    archive records against the anchors before anything is restored. The
    verdict is in the result; raises DrillError when the drill itself
    cannot run."""
    from reconciler.signed import TrustError
    result = DrillResult(location, time.time())
    binary = immudb_binary(cfg)
    if cfg.scratch_dir is not None:
        cfg.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="replicator-drill-", dir=cfg.scratch_dir))  # mode 0700
    try:
        say(f"restoring {location} into {scratch}")
        try:
            restored = restore(stream, scratch / "data", vouch=vouch, identities=identities)
        except (RestoreError, TrustError) as exc:
            result.problems.append(str(exc))
            return result
        result.anchors = [v.line() for v in restored.vouched or []]
        for line in result.anchors:
            say(f"  anchor {line}")
        manifest = restored.manifest
        assert manifest is not None  # restore() returns only what it read whole
        result.backup_id = manifest.backup_id
        with throwaway_immudb(binary, scratch, cfg.start_timeout) as admin:
            say(f"immudb {admin.version() or '?'} opened it on {admin.address}")
            opened = {d.name for d in admin.list_databases()}
            for entry in manifest.databases:
                name = entry.name
                verdict = _check_database(admin, entry, opened, cfg.sample_keys)
                result.databases[name] = verdict
                if verdict.startswith("FAIL"):
                    result.problems.append(f"{name}: {verdict.removeprefix('FAIL: ')}")
                say(f"  {name}: {verdict}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        result.finished_at = time.time()
    return result


def drill_archive(cfg, archive: str | None = None, target_name: str | None = None,
                  drill_cfg: DrillConfig | None = None, say: Callable[[str], None] = lambda line: None,
                  live: bool = True, unanchored: bool = False,
                  identities: Sequence[Any] | None = None) -> DrillResult:
    """A drill of `archive` (a path, an s3:// or sftp:// location, or a name
    at `target_name`), or of the newest archive at `target_name`, checked
    against the anchors of `cfg` (trust/). `cfg` may be None for a local
    archive (then only `unanchored` lets it pass). Raises DrillError,
    ReplicatorError (no such archive or target)."""
    from reconciler import targets
    from reconciler.backup.locate import archive_target, opened_archive, target_named
    from reconciler.trust.archives import HashingReader
    from reconciler.trust.sources import vouch_for_archive
    drill_cfg = drill_cfg or (cfg.backup.drill if cfg is not None else DrillConfig())
    if identities is None and cfg is not None and cfg.backup.encryption.identity_file is not None:
        from reconciler.encryption import IdentityFile
        identities = IdentityFile(cfg.backup.encryption.identity_file)  # read if the archive is encrypted
    if archive is None:
        if target_name is None:
            raise DrillError("name an archive, or a target (--target) whose newest archive to drill")
        target_cfg = target_named(cfg, target_name)
        with targets.build(target_cfg) as target:
            found = target.list()
        if not found:
            raise DrillError(f"no archive at target {target_name}")
        archive = found[-1].name
        missing = _missing_newest(cfg, target_cfg, {a.name for a in found})
        if missing and not unanchored:
            result = DrillResult(target_name, time.time(), finished_at=time.time())
            result.problems.append(f"the newest archive written to {target_name}, {missing}, is gone from it (not "
                                   f"deleted by retention): the drill would test an older one; find out who deleted "
                                   f"it, or give --unanchored")
            return result
    target_cfg, name = archive_target(cfg, archive, target_name)
    with opened_archive(cfg, archive, target_name) as (stream, location):
        reader = HashingReader(stream)
        return drill(reader, location, drill_cfg, say, vouch=lambda manifest: vouch_for_archive(
            cfg, target_cfg, name, location, manifest, reader, live=live, unanchored=unanchored),
            identities=identities)


def _missing_newest(cfg, target_cfg, present: set[str]) -> str | None:
    """The newest archive this replicator wrote to the target, when it is
    no longer there (local checkpoints; retention forgets what it deletes)."""
    from reconciler.trust.sources import checkpoints
    written = checkpoints(cfg).archives(target_cfg)
    if written and written[-1].archive not in present:
        return written[-1].archive
    return None


def _check_database(admin, entry: DatabaseEntry, opened: set[str], sample: int) -> str:
    """'ok: ...' or 'FAIL: why' for one database of the manifest."""
    from reconciler.admin import DatabaseState, ImmudbError
    name = entry.name
    if name not in opened:
        return "FAIL: immudb did not open it"
    if entry.tx_id is None or entry.tx_hash is None:
        return "ok: opened (it was unloaded when backed up: no state was recorded to compare)"
    want = DatabaseState(name, entry.tx_id, entry.tx_hash)
    try:
        got = admin.state(name)
        if (got.tx_id, got.tx_hash) != (want.tx_id, want.tx_hash):
            return (f"FAIL: its state is transaction {got.tx_id} hash {got.tx_hash.hex()[:16]}..., the archive "
                    f"recorded transaction {want.tx_id} hash {want.tx_hash.hex()[:16]}...")
        keys: list[bytes] = []
        if sample and want.tx_id:
            first = admin.scan_keys(name, max(1, sample // 2), since_tx=want.tx_id)
            last = admin.scan_keys(name, max(1, sample - sample // 2), newest_first=True, since_tx=want.tx_id)
            keys = list(dict.fromkeys(first + last))
        for key in keys:
            admin.verified_get(name, key, want)
        problem = _whole_history(admin, name, want)
        if problem:
            return f"FAIL: {problem}"
    except ImmudbError as exc:
        return f"FAIL: {exc.detail}"
    except Exception as exc:  # noqa: BLE001 - a proof that cannot even be parsed is a failed proof
        return f"FAIL: {type(exc).__name__}: {exc}"
    return (f"ok: transaction {want.tx_id} and its hash as recorded; every transaction 1-{want.tx_id} exported "
            f"and chained to it; {len(keys)} keys proven against it")


def _whole_history(admin, name: str, want) -> str | None:
    """That the restored files hold exactly the history whose last Alh is
    the recorded one: every transaction exported by immudb from them, read
    as immudb reads it, its values hashing to its Eh, chained (prevAlh and
    BlRoot) from transaction 1 up to `want`. A file rewritten with its
    transaction's hashes but not the chain after it is caught here, which
    the state alone does not show. None, or what is wrong."""
    from reconciler.exported import UNBOUNDED, JournalError, Successor, parse_tx
    successor = Successor()
    with admin.follow(name, 1, wait=5.0) as feed:
        for exported in feed:
            try:
                successor.take(parse_tx(exported.data, UNBOUNDED))
            except JournalError as exc:
                return f"its files do not hold the recorded history: {exc}"
            if exported.tx_id >= want.tx_id:
                break
    if successor.next_id - 1 != want.tx_id:
        return f"immudb exported {successor.next_id - 1} of its {want.tx_id} transactions"
    if successor.prev_alh != want.tx_hash:
        return "the history its files hold does not end at the recorded hash"
    return None


def values_prover(cfg: DrillConfig, unanchored: bool = False) -> Callable:
    """restore()'s `prove`: when no local checkpoint vouched for the
    archive's bytes (a new machine, a new state folder), the signed and live
    anchors vouch only for the states it records, and a value rewritten in
    its files (manifest recomputed) would pass them: the extracted files are
    then opened by a throwaway immudb and their whole history checked
    against those states (prove_history). `unanchored` (--unanchored) takes
    the archive as it is."""

    def prove(folder: Path, databases: list[str], manifest: Manifest, vouched) -> None:
        if unanchored or any(v.anchor == "local" and v.vouched for v in vouched or ()):
            return
        try:
            binary = immudb_binary(cfg)
        except DrillError as exc:
            raise RestoreError(f"nothing restored: no local checkpoint vouches for this archive's bytes, and the "
                               f"signed and live anchors vouch for the states it records, not for the values in "
                               f"its files; proving those takes {exc}; or take the archive as it is with "
                               f"--unanchored") from None
        entries = [e for e in manifest.databases if e.name in databases]
        stateless = [e.name for e in entries if e.state is None]
        if stateless:
            raise RestoreError(f"nothing restored: the archive recorded no state of {', '.join(stateless)} (unloaded "
                               f"when backed up), and no local checkpoint vouches for its bytes: nothing outside "
                               f"the target vouches for those files; --unanchored takes them as they are")
        try:
            prove_history(binary, folder, entries, cfg.start_timeout, cfg.scratch_dir)
        except DrillError as exc:
            raise RestoreError(f"nothing restored: its files do not hold the history its anchors vouch for: "
                               f"{exc}") from None
        except OSError as exc:
            raise RestoreError(f"nothing restored: its values could not be proven: {exc.strerror or exc}: "
                               f"{exc.filename}") from None
    return prove


def prove_history(binary: str, folder: Path, entries: Sequence[DatabaseEntry], timeout: float,
                  scratch_dir: Path | None = None) -> None:
    """That the databases extracted in `folder` hold exactly the history
    their manifest entries record: a throwaway immudb opens them, and each
    one's state and every transaction up to it (values hashing to their
    entries, chained to the recorded Alh) are checked, as a drill does.
    What it makes in `folder` for itself is left there (the caller's
    private scratch). Raises DrillError naming the first database that
    does not hold."""
    if scratch_dir is not None:
        scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="replicator-prove-", dir=scratch_dir) as home:
        with throwaway_immudb(binary, Path(home), timeout, folder) as admin:
            opened = {d.name for d in admin.list_databases()}
            for entry in entries:
                verdict = _check_database(admin, entry, opened, sample=0)
                if verdict.startswith("FAIL"):
                    raise DrillError(f"{entry.name}: {verdict.removeprefix('FAIL: ')}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def immudb_binary(cfg: DrillConfig) -> str:
    """The immudb server to open restored data with. Raises DrillError."""
    binary = cfg.immudb_binary or shutil.which("immudb")
    if not binary or not os.access(binary, os.X_OK):
        raise DrillError(f"no immudb server to open the restored data with ({binary or 'immudb not on PATH'}): "
                         f"set backup.drill.immudb_binary or give --immudb-binary")
    return binary


@contextlib.contextmanager
def throwaway_immudb(binary: str, scratch: Path, timeout: float, data_dir: Path | None = None):
    """immudb on the restored data (`data_dir`, default scratch/data), on
    loopback; an admin client for it. `scratch` holds its log and HOME. A
    data dir that immudb creates gets the random admin password given here;
    one it already holds keeps its own systemdb, whose admin password we do
    not know: only fresh or restored-by-us data dirs (without systemdb) work."""
    from reconciler.admin import ImmudbAdmin, ImmudbError
    from reconciler.secret import Secret
    password = secrets.token_urlsafe(24)
    port = _free_port()
    output = scratch / "immudb.out"
    argv = [binary, "--dir", str(data_dir or scratch / "data"), "--address", "127.0.0.1", "--port", str(port),
            "--pgsql-server=false", "--web-server=false", "--metrics-server=false", "--pidfile", "",
            "--logfile", ""]
    if shutil.which("setpriv"):
        argv = ["setpriv", "--pdeathsig", "KILL", "--"] + argv  # never outlives this process
    # HOME: no ~/immudb.toml of ours; the password through the environment, not the process list
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMMUDB_")}
    env.update(HOME=str(scratch), IMMUDB_ADMIN_PASSWORD=password)
    with open(output, "wb") as out:
        process = subprocess.Popen(argv, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
    event(log, "drill_server_started", pid=process.pid, port=port)
    admin = ImmudbAdmin("drill immudb", "127.0.0.1", port, "immudb", Secret(password, origin="drill"), timeout=60)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise DrillError(f"immudb exited with code {process.returncode} before answering: "
                                 f"{_tail(output)}")
            try:
                admin.login()
                break
            except ImmudbError as exc:
                if time.monotonic() > deadline:
                    raise DrillError(f"immudb did not answer within {timeout:g}s: {exc.detail}") from None
                time.sleep(0.2)
        yield admin
    finally:
        admin.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(its log is empty)"
    except OSError:
        return "(no log)"
