"""Taking a backup of the replica: one archive, whole or absent.

For each selected database: hold it (reconcile passes leave it alone),
read its state, unload it, copy its folder, load it again, release it. The
copy goes either straight into the archive (no staging_dir: the database is
unavailable while it is compressed and uploaded) or to staging_dir first
(the database is back after a local copy at disk speed; compression and
upload follow). A database is loaded again whatever happens; one that a
crash leaves unloaded is loaded by the next reconcile pass.

One backup at a time per process: a second gets BackupAlreadyRunning.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reconciler import __version__, targets
from reconciler.admin import AlreadyLoaded, ImmudbAdmin, ImmudbError
from reconciler.backup import archive, retention
from reconciler.backup.archive import ArchiveWriter, Cancelled, SourceError
from reconciler.backup.progress import Progress
from reconciler.config.model import Config, TargetConfig
from reconciler.encryption import Encrypting, load_identities, load_recipients
from reconciler.errors import ReplicatorError
from reconciler.holds import BackupLock, Holder
from reconciler.log import event
from reconciler.manifest import DatabaseEntry, Manifest
from reconciler.secret import redact
from reconciler.state import SERVER_DATABASES, DatabaseInfo

log = logging.getLogger(__name__)

STAGING_PREFIX = ".replicator-staging-"


# called once an archive is committed and proven on its target: (configuration, target, archive name,
# the manifest as written). The journal records its bases this way (journal/bases.py's
# after_archive), so that backup/ does not import journal/. It must not raise.
ArchiveCommitted = Callable[[Config, TargetConfig, str, Manifest], None]


class BackupError(ReplicatorError):
    """A backup failed; nothing was left at the target."""


class BackupAlreadyRunning(ReplicatorError):
    exit_code = 1


class _NoHolder:
    def hold(self, database: str) -> None:
        pass

    def release(self, database: str) -> None:
        pass


@dataclass
class BackupResult:
    backup_id: str
    target: str
    started_at: float
    finished_at: float = 0.0
    ok: bool = False
    error: str | None = None
    location: str | None = None
    databases: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    deleted: list[str] = field(default_factory=list)     # by retention
    retained: dict[str, float] = field(default_factory=dict)  # due for retention, kept by Object Lock until then
    unload_windows: dict[str, float] = field(default_factory=dict)  # database -> seconds unavailable
    verify_seconds: float | None = None  # reading the archive back from the target (verify_after_upload)
    verified_by: str | None = None       # what proved the stored archive

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Backups:
    """Runs backups one at a time; keeps the progress and the last results."""

    def __init__(self, cfg: Config, replica: ImmudbAdmin | None = None, holder: Holder | None = None,
                 on_committed: ArchiveCommitted | None = None):
        self.cfg = cfg
        self.on_committed = on_committed
        self.replica = replica or ImmudbAdmin.from_config("replica", cfg.replica)
        self.holder = holder or _NoHolder()
        self._lock = threading.Lock()
        self.progress: Progress | None = None
        self.history: list[BackupResult] = []
        self._history_lock = threading.Lock()
        self.cancel = threading.Event()
        self.worker: threading.Thread | None = None
        self._recovering = False  # recover() holds the locks
        self._signer: ImmudbAdmin | None = None  # the primary, asked for signed states
        self._reading: list | None = None  # the identities the full read-back decrypts with

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def _claim(self) -> BackupLock:
        """Take both locks (this process, then the data directory) or raise
        BackupAlreadyRunning."""
        if not self._lock.acquire(blocking=False):
            if self._recovering:
                raise BackupAlreadyRunning("cleaning up after an interrupted backup (done once at start, on every "
                                           "target); try again when it is done (the log says recovery_done)")
            raise BackupAlreadyRunning("a backup is already running; wait for it to finish")
        files_lock = BackupLock(self.cfg.replica.data_dir)
        try:
            if not files_lock.acquire():
                raise BackupAlreadyRunning(f"another process is backing up {self.cfg.replica.data_dir}; "
                                           f"wait for it to finish")
        except OSError as exc:
            self._lock.release()
            raise BackupError(f"replica data_dir {self.cfg.replica.data_dir}: {exc.strerror or exc}") from None
        except BackupAlreadyRunning:
            self._lock.release()
            raise
        return files_lock

    def run(self, target_cfg: TargetConfig, backup_id: str | None = None, progress: Progress | None = None) -> BackupResult:
        """Take one backup now, in this thread. Raises BackupAlreadyRunning;
        any other failure is in the result (ok False, error)."""
        files_lock = self._claim()
        return self._execute(files_lock, target_cfg, backup_id or new_id(), progress or Progress())

    def start(self, target_cfg: TargetConfig, on_done=None) -> str:
        """Start a backup in a background thread; its id. Raises
        BackupAlreadyRunning at once (exactly one of concurrent callers wins)."""
        files_lock = self._claim()
        backup_id = new_id()
        self.progress = Progress(backup_id=backup_id, target=target_cfg.name)

        def work():
            result = self._execute(files_lock, target_cfg, backup_id, self.progress)
            if on_done is not None:
                on_done(result)

        self.worker = threading.Thread(target=work, name=f"backup-{backup_id}", daemon=True)
        self.worker.start()
        return backup_id

    def _execute(self, files_lock: BackupLock, target_cfg: TargetConfig, backup_id: str,
                 progress: Progress) -> BackupResult:
        try:
            self.cancel.clear()
            self.progress = progress
            self.progress.update(backup_id=backup_id, target=target_cfg.name, started_at=time.time())
            result = BackupResult(backup_id, target_cfg.name, self.progress.started_at)
            try:
                self._run(target_cfg, result)
                result.ok = True
            except Exception as exc:  # noqa: BLE001 - every failure ends as a recorded failed backup
                result.error = _describe(exc)
                event(log, "backup_failed", logging.ERROR, backup=result.backup_id, target=target_cfg.name,
                      error=result.error)
            result.finished_at = time.time()
            self.progress.update(phase="done" if result.ok else "failed", current_database=None)
            self.record(result)
            return result
        finally:
            files_lock.release()
            self._lock.release()

    def record(self, result: BackupResult) -> None:
        with self._history_lock:
            self.history = (self.history + [result])[-50:]

    # ------------------------------------------------------------------

    def select(self) -> list[DatabaseInfo]:
        """The replica databases to back up, in name order."""
        return [db for db in sorted(self.replica.list_databases(), key=lambda d: d.name)
                if db.name not in SERVER_DATABASES and db.name in self.cfg.backup.databases]

    def _run(self, target_cfg: TargetConfig, result: BackupResult) -> None:
        progress = self.progress
        assert progress is not None
        data_dir = self.cfg.replica.data_dir
        if not data_dir.is_dir():
            raise BackupError(f"replica data_dir {data_dir} is not a directory this process can read")
        recipients = self._recipients()  # before anything is unloaded: never an archive in the clear by mistake
        # the full read-back decrypts: its identity is read now too, not after the archive is committed
        self._reading = self._identities() if self.cfg.backup.verify_after_upload == "full" else None
        chosen = self.select()
        if not chosen:
            raise BackupError("no replica database to back up (defaultdb and systemdb cannot be unloaded)")
        sizes = {db.name: _tree_size(data_dir / db.name) for db in chosen}
        progress.update(databases_total=len(chosen), bytes_total=sum(sizes.values()), phase="starting")
        immudb_version = self.replica.version()
        staging_root = self._prepare_staging()
        target = targets.build(target_cfg)
        # one thread asks the primary for its signed states (one admin session, used in turn)
        self._signing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-signed")
        try:
            for leftover in target.cleanup_partial():
                event(log, "partial_removed", target=target.name, what=leftover)
            name = target.archive_name(result.started_at)
            upload = target.open(name, size_hint=progress.bytes_total)
            written = _Digesting(upload)
            writer = encrypting = None
            try:
                if recipients is not None:
                    encrypting = Encrypting(written, recipients)
                writer = ArchiveWriter(encrypting or written, self.cfg.backup.compression,
                                       self.cfg.backup.compression_level, on_bytes=progress.add_bytes,
                                       cancel=self.cancel)
                states: list[DatabaseEntry] = []
                for db in chosen:
                    states.append(self._one(writer, db, staging_root, result))
                    progress.update(databases_done=progress.databases_done + 1, bytes_written=writer.bytes_written)
                progress.update(phase="uploading", current_database=None)
                result.finished_at = time.time()
                written_manifest = writer.finish(Manifest(
                    backup_id=result.backup_id, started_at=_iso(result.started_at),
                    finished_at=_iso(result.finished_at), compression=self.cfg.backup.compression,
                    databases=tuple(states), tool="immudb-replicator", tool_version=__version__,
                    immudb_version=immudb_version, replica=self.cfg.replica.address,
                    finished_unix=int(result.finished_at)))
                if encrypting is not None:
                    encrypting.close()  # the end of the age stream, in the upload before it commits
                if self.cancel.is_set():  # the compressor's last flush can take a while: last safe point
                    raise Cancelled("cancelled")
                result.location = upload.commit()
            except BaseException:
                if writer is not None:
                    writer.discard()
                if encrypting is not None:
                    encrypting.abort()
                upload.abort()
                raise
            self._checkpoint(target_cfg, name, written, states)
            result.bytes_out = written.size  # as stored (encrypted, when it is)
            result.bytes_in = progress.bytes_done
            result.databases = [db.name for db in chosen]
            progress.update(bytes_written=writer.bytes_written)
            progress.update(phase="verifying")
            started = time.monotonic()
            if self.cfg.backup.verify_after_upload == "full":
                self._verify_uploaded(target, name, written, result)
            elif self.cfg.backup.verify_after_upload == "bytes":
                self._check_stored(target, name, written, result)
            else:  # off: no read-back, but a missing or short archive is still no success
                self._check_size(target, name, written, result)
            result.verify_seconds = time.monotonic() - started
            event(log, "backup_done", backup=result.backup_id, target=target.name, location=result.location,
                  databases=len(chosen), bytes_in=result.bytes_in, bytes_out=result.bytes_out,
                  seconds=round(time.time() - result.started_at, 1))
            progress.update(phase="retention")
            result.deleted = self._apply_retention(target, target_cfg, name, result.retained)
            if self.on_committed is not None:
                self.on_committed(self.cfg, target_cfg, name, written_manifest)
        finally:
            self._signing.shutdown(wait=True, cancel_futures=True)
            target.close()
            if staging_root is not None:
                shutil.rmtree(staging_root, ignore_errors=True)

    def _recipients(self) -> list | None:
        """The age recipients every archive is encrypted to, read now (a key
        added to recipients_file applies to this backup); None when
        encryption is off. Raises EncryptionError: nothing is written."""
        enc = self.cfg.backup.encryption
        if not enc.enabled:
            return None
        return load_recipients(enc.recipients, [enc.recipients_file] if enc.recipients_file else [])

    def _identities(self) -> list | None:
        enc = self.cfg.backup.encryption
        return load_identities(enc.identity_file) if enc.identity_file else None

    def _checkpoint(self, target_cfg: TargetConfig, name: str, written: _Digesting,
                    states: list[DatabaseEntry]) -> None:
        """The local checkpoint of the archive just committed: its bytes'
        SHA-256 and size, and the states it holds (reconciler/trust). A
        failure is logged: the archive is good, only this anchor is missing."""
        from reconciler.trust.sources import checkpoints
        recorded = {d.name: d.state for d in states if d.state is not None}
        try:
            checkpoints(self.cfg).record_archive(target_cfg, name, written.sha.hexdigest(), written.size, recorded)
        except ReplicatorError as exc:
            event(log, "checkpoint_failed", logging.WARNING, target=target_cfg.name, archive=name, error=str(exc))

    def _signed(self, name: str, state) -> dict | None:
        """The primary's signed state of replica database `name` at `state`,
        for the manifest; None when the primary does not sign or does not
        answer (logged: the archive is made anyway, without that anchor)."""
        from dataclasses import replace

        from reconciler.signed import TrustError
        from reconciler.trust.sources import public_key
        primary_name = self.cfg.reconcile.primary_name(name)
        try:
            if self._signer is None:
                self._signer = ImmudbAdmin.from_config(
                    "primary", replace(self.cfg.primary, timeout=min(self.cfg.primary.timeout, 5.0)))
            signed = self._signer.signed_state(primary_name, state.tx_id)
            key = public_key(self.cfg)
            if signed is None:
                if key is not None:
                    raise TrustError("the primary does not sign its states, but backup.trust.public_key_file is set")
                return None
            if key is not None:
                signed.check(key, primary_name, state.tx_id, state.tx_hash, f"database {name}")
            elif signed.alh != state.tx_hash:
                raise TrustError(f"the primary's transaction {state.tx_id} of {primary_name} is not the replica's")
            return signed.as_dict()
        except (ImmudbError, TrustError) as exc:
            event(log, "backup_unsigned", logging.WARNING, database=name, error=str(exc),
                  detail="the archive holds no signed state of it")
            return None

    def _check_stored(self, target, name: str, written: _Digesting, result: BackupResult) -> None:
        """The target holds exactly the bytes written (their length and
        SHA-256, computed as they were written; every file in them was
        checked against the manifest then): read back and hashed, or the
        service's own checksums. Raises BackupError (after deleting the
        archive) otherwise."""
        try:
            result.verified_by = target.check_stored(name, written.size, written.sha.hexdigest())
            return
        except targets.TargetError as exc:
            problem = str(exc)
        self._discard_unproven(target, name, result, [problem])

    def _check_size(self, target, name: str, written: _Digesting, result: BackupResult) -> None:
        """verify_after_upload: false: the target lists the archive with the
        length written (nothing is read back: other bytes of that length
        pass)."""
        try:
            stored = {a.name: a.size for a in target.list()}.get(name)
        except targets.TargetError as exc:
            problem = f"cannot list it: {exc}"
        else:
            if stored == written.size:
                result.verified_by = f"its length only ({written.size} bytes; verify_after_upload is false)"
                return
            problem = ("the target does not list it" if stored is None else
                       f"the target holds {stored} bytes, {written.size} were written")
        self._discard_unproven(target, name, result, [problem])

    def _discard_unproven(self, target, name: str, result: BackupResult, problems: list[str]) -> None:
        try:
            target.delete(name)
            what = "it was deleted"
        except targets.TargetError as exc:
            what = f"deleting it failed too ({exc}): delete it by hand"
        raise BackupError(f"the archive written to {result.location} does not read back whole: {problems[0]}"
                          + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "") + f"; {what}")

    def _verify_uploaded(self, target, name: str, written: _Digesting, result: BackupResult) -> None:
        """Read the committed archive back from the target with the reader
        restore uses; raises BackupError (after deleting it) unless it is
        whole, matches its manifest, is this backup's, and is byte for byte
        what was written (a tar header's mtime, say, is in no manifest)."""
        from reconciler.trust.archives import HashingReader
        try:
            with contextlib.closing(HashingReader(target.read(name))) as stream:
                checked = archive.read(stream, identities=self._reading)
                stream.drain(written.size + 1 - stream.size)
            problems = checked.problems
            got_id = checked.manifest.backup_id if checked.manifest is not None else None
            if checked.ok and got_id != result.backup_id:
                problems = [f"it holds backup {got_id}, not {result.backup_id}"]
            if not problems and (stream.size, stream.sha.hexdigest()) != (written.size, written.sha.hexdigest()):
                problems = [f"it holds {stream.size} bytes, not the {written.size} bytes written" if
                            stream.size != written.size else "its bytes are not the ones written (SHA-256 differs)"]
        except (targets.TargetError, OSError) as exc:
            problems = [f"cannot read it back: {exc}"]
        if not problems:
            result.verified_by = "read back whole: every file against the manifest, SHA-256 as written"
            return
        self._discard_unproven(target, name, result, problems)

    def _one(self, writer: ArchiveWriter, db: DatabaseInfo, staging_root: Path | None,
             result: BackupResult) -> DatabaseEntry:
        """Archive one database; returns its manifest entry. Raises
        BackupError when its folder yields no file while the server counts
        transactions in it (an archive of it would restore an empty database)."""
        progress = self.progress
        name, loaded = db.name, db.loaded
        source = self.cfg.replica.data_dir / name
        self.holder.hold(name)
        progress.update(current_database=name, phase="copying" if staging_root else "archiving")
        unloaded_at = None
        signing = None  # a Future of the primary's signed state
        try:
            state = None
            if loaded:
                state = self.replica.state(name)
                if state.tx_id:  # asked of the primary while this database is archived
                    signing = self._signing.submit(self._signed, name, state)
                self.replica.unload(name)
                unloaded_at = time.monotonic()
            if staging_root is None:
                files = writer.add_tree(source, name)
            else:
                staged = staging_root / name
                _copy_tree(source, staged, self.cancel)
                if unloaded_at is not None:
                    self._load_again(name)
                    result.unload_windows[name] = time.monotonic() - unloaded_at
                    unloaded_at = None
                self.holder.release(name)
                progress.update(phase="archiving")
                files = writer.add_tree(staged, name)
                shutil.rmtree(staged, ignore_errors=True)
        except (ImmudbError, SourceError) as exc:
            raise BackupError(f"database {name}: {exc}") from None
        finally:
            if unloaded_at is not None:
                self._load_again(name)
                result.unload_windows[name] = time.monotonic() - unloaded_at
            self.holder.release(name)
        transactions = state.tx_id if state else db.tx_count
        if transactions and not files:
            raise BackupError(f"database {name}: the server counts {transactions} transactions, and its folder "
                              f"{source} holds no file: is replica.data_dir the replica's data directory?")
        signed = signing.result() if signing is not None else None
        return DatabaseEntry(name, state.tx_id if state else None, state.tx_hash if state else None, len(files),
                             sum(f.size for f in files), was_loaded=loaded, signed=signed)

    def _load_again(self, name: str) -> None:
        """Load `name`; a few tries, then leave it to the next reconcile pass."""
        for attempt in range(3):
            try:
                self.replica.load(name)
                return
            except AlreadyLoaded:
                return
            except ImmudbError as exc:
                if attempt == 2:
                    event(log, "load_failed", logging.ERROR, database=name, error=str(exc),
                          note="the next reconcile pass loads it")
                    return
                time.sleep(1)

    def recover(self) -> list[str]:
        """After a crash (SIGKILL, power loss): remove what an interrupted
        backup of ours left behind: staging copies, partial files, pending
        multipart uploads, on every configured target. Does nothing while a
        backup runs here or in another process. What was removed."""
        try:
            files_lock = self._claim()
        except ReplicatorError:
            return []
        self._recovering = True
        event(log, "recovery_started", targets=len(self.cfg.backup.targets))
        removed: list[str] = []
        try:
            removed += self._remove_staging_leftovers()
            for target_cfg in self.cfg.backup.targets.values():
                try:
                    with targets.build(target_cfg) as target:
                        for what in target.cleanup_partial():
                            event(log, "partial_removed", target=target_cfg.name, what=what)
                            removed.append(what)
                except Exception as exc:  # noqa: BLE001 - an unreachable target must not stop the daemon
                    event(log, "recovery_skipped", logging.WARNING, target=target_cfg.name,
                          error=str(exc) or type(exc).__name__, note="cleaned at its next backup")
        finally:
            self._recovering = False
            files_lock.release()
            self._lock.release()
        event(log, "recovery_done", removed=len(removed))
        return removed

    def _remove_staging_leftovers(self) -> list[str]:
        root = self.cfg.backup.staging_dir
        removed: list[str] = []
        if root is None or not root.is_dir():
            return removed
        for leftover in root.glob(STAGING_PREFIX + "*"):  # a crashed run's copy
            shutil.rmtree(leftover, ignore_errors=True)
            event(log, "staging_removed", path=str(leftover))
            removed.append(str(leftover))
        return removed

    def _prepare_staging(self) -> Path | None:
        root = self.cfg.backup.staging_dir
        if root is None:
            return None
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_staging_leftovers()
        path = root / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # copies of whole databases: private whatever the umask
        return path

    def _apply_retention(self, target, target_cfg: TargetConfig, just_written: str,
                         retained: dict[str, float]) -> list[str]:
        """Delete what the retention policy no longer keeps; what the store
        still locks (S3 Object Lock) goes into `retained`, with its date."""
        deleted: list[str] = []
        try:
            if target_cfg.retention is None or target_cfg.retention.keeps_all:
                return deleted
            from reconciler.backup.pins import pinned
            held = pinned(target_cfg)  # unreadable pins: nothing deleted (TargetError below)
            doomed = retention.expired(target.list(), target_cfg.retention, time.time(), just_written, held)
            for stored in doomed:
                try:
                    target.delete(stored.name)
                except targets.Retained as exc:  # not a failure: a later backup deletes it once the lock ends
                    retained[stored.name] = exc.until
                    event(log, "archive_retained", target=target.name, archive=stored.name, until=exc.until)
                    continue
                _forget_checkpoint(self.cfg, target_cfg, stored.name)
                deleted.append(stored.name)
                event(log, "archive_deleted", target=target.name, archive=stored.name, reason="retention")
            return deleted
        except targets.TargetError as exc:
            # the backup itself succeeded; report and keep going
            event(log, "retention_failed", logging.WARNING, target=target.name, error=str(exc))
            return deleted


def _forget_checkpoint(cfg: Config, target_cfg: TargetConfig, name: str) -> None:
    from reconciler.trust.sources import checkpoints
    try:
        checkpoints(cfg).forget_archive(target_cfg, name)
    except OSError:
        pass


class _Digesting:
    """An upload that hashes and counts the bytes written to it (the
    archive's local checkpoint)."""

    def __init__(self, upload):
        self.upload, self.sha, self.size = upload, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)
        self.upload.write(data)

    def __getattr__(self, name):
        return getattr(self.upload, name)


def _describe(exc: Exception) -> str:
    """One line for a failed backup's record, scrubbed of every secret in use
    (it is shown by the API and the CLI as well as logged)."""
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, ReplicatorError):
        return redact(str(exc))
    if isinstance(exc, OSError):
        return redact(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else (exc.strerror or str(exc)))
    return redact(f"internal error ({type(exc).__name__}): {exc}")


def new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _copy_tree(source: Path, dest: Path, cancel: threading.Event) -> None:
    """Copy a database folder at disk speed (copy_file_range/sendfile), the
    copies private to this user. Raises SourceError as ArchiveWriter.add_tree
    does: nothing is skipped quietly."""
    def unreadable(exc: OSError) -> None:
        raise SourceError(f"cannot list {exc.filename}: {exc.strerror or exc}")

    for root, dirs, files in os.walk(source, onerror=unreadable):
        rel = Path(root).relative_to(source)
        (dest / rel).mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in dirs + files:
            if cancel.is_set():
                raise Cancelled("cancelled")
            src = Path(root) / name
            try:
                st = src.lstat()
            except OSError as exc:
                raise SourceError(f"cannot read {src}: {exc.strerror or exc}") from None
            if stat.S_ISDIR(st.st_mode):
                continue  # created when os.walk enters it
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{src} is a {'symbolic link' if stat.S_ISLNK(st.st_mode) else 'special file'}: "
                                  f"immudb's folders hold only folders and regular files")
            try:
                shutil.copyfile(src, dest / rel / name)
            except OSError as exc:
                raise SourceError(f"cannot copy {src}: {exc.strerror or exc}") from None
            os.chmod(dest / rel / name, 0o600)
            os.utime(dest / rel / name, ns=(st.st_atime_ns, st.st_mtime_ns))
