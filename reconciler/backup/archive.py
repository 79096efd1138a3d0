"""The archive format: one tar stream (PAX), compressed with gzip (default),
zstd or nothing, whose members are `<database>/<path>` and, last,
`MANIFEST.json`: tool and immudb versions, times, every database's state
and every file's path, size and sha256. A manifest at the end lets the
archive be written in one pass with bounded memory; readers hash as they go
and compare at the end.

Readers accept only what writers produce: relative paths under a database
folder, regular files and directories. Absolute paths, `..`, links and
device files make an archive invalid.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tarfile
import threading
import unicodedata
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from reconciler import encryption
from reconciler.errors import ReplicatorError
from reconciler.manifest import NAME as MANIFEST
from reconciler.manifest import FileRecord, Manifest
from reconciler.manifest import parse as parse_manifest
from reconciler.state import is_database_name
from reconciler.streams import ChunkReader

CHUNK = 1024 * 1024
GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class ArchiveError(ReplicatorError):
    """The archive is invalid: corrupt, truncated, unsafe, or not ours."""


class ArchiveSealed(ArchiveError):
    """The archive is encrypted and cannot be read: no identity given, or
    none of them opens it, or its ciphertext does not authenticate."""


class SourceError(ReplicatorError):
    """A database folder could not be archived whole (unreadable, a link, a
    name readers would refuse): the backup fails, naming the path."""


class Cancelled(ReplicatorError):
    """The work was cancelled (shutdown, operator)."""


# --------------------------------------------------------------------------- compression

def default_level(kind: str) -> int:
    # gzip 2 (ISA-L): on immudb's files as fast as ISA-L's level 1 and 1% smaller, within
    # 6% of the Go tool's size (see docs/benchmarks.md); zstd 3 is zstd's own default
    return {"gzip": 2, "zstd": 3}.get(kind, 0)


def open_compressor(kind: str, level: int | None, raw: BinaryIO, threads: int | None = None) -> BinaryIO:
    """A writable stream that compresses into `raw`; closing it may close
    `raw` too (the archive's sink ignores that: the upload is committed or
    aborted on its own)."""
    level = level or default_level(kind)
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    if kind == "none":
        return raw
    if kind == "gzip":
        if level <= 2:
            from isal import igzip_threaded  # ISA-L: fastest, larger archives
            return igzip_threaded.open(raw, "wb", compresslevel=level, threads=threads)
        from zlib_ng import gzip_ng_threaded  # zlib-ng: zlib's ratios, several times its speed, in threads
        return gzip_ng_threaded.open(raw, "wb", compresslevel=level, threads=threads)
    if kind == "zstd":
        import zstandard
        return zstandard.ZstdCompressor(level=level, threads=threads).stream_writer(raw, closefd=False)
    raise ValueError(f"unknown compression {kind!r}")


def open_decompressor(stream: BinaryIO, identities: Sequence[Any] | None = None,
                      opened: list | None = None) -> tuple[str, BinaryIO]:
    """(kind, readable plain stream), the kind told by the magic bytes. An
    age-encrypted stream (encryption.open_plaintext tells) is decrypted with
    `identities` first (ArchiveSealed when none are given); the decrypting
    stream goes into `opened`, for the caller to close. `stream` stays open:
    it is the caller's."""
    try:
        buffered, decrypting = encryption.open_plaintext(stream, identities, "the archive", owns=False,
                                                         buffer_size=CHUNK)
    except encryption.EncryptionError as exc:
        raise ArchiveSealed(str(exc)) from None
    if decrypting is not None and opened is not None:
        opened.append(decrypting)
    head = buffered.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        from isal import igzip
        return "gzip", igzip.IGzipFile(fileobj=buffered, mode="rb")
    if head.startswith(ZSTD_MAGIC):
        import zstandard
        return "zstd", zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
    return "none", buffered


class _ReadAhead(ChunkReader):
    """Reads `source` in a thread of its own, up to `depth` chunks ahead:
    decompression (which lets go of the GIL) overlaps the tar parsing and
    hashing of what came before. Errors reach the reader in order."""

    def __init__(self, source: BinaryIO, depth: int = 8):
        import queue
        self.source = source
        self.chunks: queue.Queue = queue.Queue(maxsize=depth)
        self.done = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="archive-read", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        try:
            while not self.stopping.is_set():
                chunk = self.source.read(CHUNK)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, who raises it
            self._put(exc)

    def _put(self, item) -> None:
        import queue
        while not self.stopping.is_set():
            try:
                self.chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def next_chunk(self) -> bytes | None:
        if self.done:
            return None
        item = self.chunks.get()
        if isinstance(item, BaseException):
            self.done = True
            raise item
        if not item:
            self.done = True
            return None
        return item

    def close(self) -> None:
        self.stopping.set()
        super().close()


# --------------------------------------------------------------------------- writing

@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str


class _CountingSink(io.RawIOBase):
    """The compressed byte stream going to the target, counted."""

    def __init__(self, upload):
        self.upload, self.count = upload, 0
        self.discarding = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if not self.discarding:
            self.upload.write(bytes(data))
            self.count += len(data)
        return len(data)


class _Hasher:
    """SHA-256 of files in a thread of its own: hashlib lets go of the GIL,
    so hashing one chunk overlaps reading and writing the next (on 2 cores
    the difference between hashing and not is then small). In order, and at
    most `ahead` chunks behind."""

    def __init__(self, ahead: int = 4):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self.pending: deque = deque()
        self.ahead = ahead

    def update(self, sha, data: bytes) -> None:
        self.pending.append(self.pool.submit(sha.update, data))
        while len(self.pending) > self.ahead:
            self.pending.popleft().result()

    def digest(self, sha) -> str:
        while self.pending:
            self.pending.popleft().result()
        return sha.hexdigest()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _HashingReader:
    def __init__(self, f: BinaryIO, hasher: _Hasher, on_bytes: Callable[[int], None],
                 cancel: threading.Event | None):
        self.f, self.hasher, self.on_bytes, self.cancel = f, hasher, on_bytes, cancel
        self.sha, self.size = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")
        data = self.f.read(n)
        self.hasher.update(self.sha, data)
        self.size += len(data)
        self.on_bytes(len(data))
        return data

    def hexdigest(self) -> str:
        return self.hasher.digest(self.sha)


class _TarStream:
    """Writes a PAX tar straight to `out`, one write per header and per
    chunk of data. tarfile's own stream mode re-buffers every byte through
    slicing (a third of the time of an uncompressed backup here)."""

    def __init__(self, out):
        self.out, self.offset, self.closed = out, 0, False

    def addfile(self, info: tarfile.TarInfo, reader=None) -> None:
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self.out.write(header)
        self.offset += len(header)
        if reader is None:
            return
        remaining = info.size
        while remaining:
            data = reader.read(min(CHUNK, remaining))
            if not data:
                raise OSError(f"{info.name}: file shrank while being archived")
            self.out.write(data)
            remaining -= len(data)
        padding = -info.size % tarfile.BLOCKSIZE
        if padding:
            self.out.write(bytes(padding))
        self.offset += info.size + padding

    def close(self) -> None:
        end = bytes(2 * tarfile.BLOCKSIZE)  # end of archive, then zeros to a whole record, as tar does
        end += bytes(-(self.offset + len(end)) % tarfile.RECORDSIZE)
        self.out.write(end)
        self.offset += len(end)
        self.closed = True


class ArchiveWriter:
    """Streams files into a compressed tar on `upload`, hashing each."""

    def __init__(self, upload, compression: str = "gzip", level: int | None = None,
                 on_bytes: Callable[[int], None] = lambda n: None, cancel: threading.Event | None = None):
        self.sink = _CountingSink(upload)
        self.compressor = open_compressor(compression, level, self.sink)
        self.tar = _TarStream(self.compressor)
        self.files: list[FileEntry] = []
        self.on_bytes, self.cancel = on_bytes, cancel
        self.hasher = _Hasher()

    @property
    def bytes_written(self) -> int:
        return self.sink.count

    def _info(self, path: Path, arcname: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(arcname)
        info.mode, info.mtime = st.st_mode & 0o7777, int(st.st_mtime)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_tree(self, source: Path, prefix: str) -> list[FileEntry]:
        """Add the directory `source` as `prefix/...`: directories and
        regular files, in name order. Returns the files' entries. Raises
        SourceError, naming the path, for anything that would make the
        archive hold less than the folder: a folder or file that cannot be
        listed or read, a link or special file (never skipped quietly), and
        a `prefix` that is not a name immudb gives databases (readers would
        refuse the archive)."""
        if not is_database_name(prefix):
            raise SourceError(f"{prefix!r} is not a name immudb gives databases: not archived")
        added: list[FileEntry] = []
        self._add_dir(source, prefix)

        def unreadable(exc: OSError) -> None:
            raise SourceError(f"cannot list {exc.filename}: {exc.strerror or exc}")

        for root, dirs, files in os.walk(source, onerror=unreadable):
            dirs.sort()
            rel_root = Path(root).relative_to(source)
            for name in dirs + sorted(files):
                path = Path(root) / name
                try:
                    st = path.lstat()
                except OSError as exc:
                    raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
                arcname = str(PurePosixPath(prefix, rel_root, name))
                if stat.S_ISDIR(st.st_mode):
                    self._add_dir(path, arcname)
                elif stat.S_ISREG(st.st_mode):
                    added.append(self.add_file(path, arcname, st))
                else:
                    raise SourceError(f"{path} is a {'symbolic link' if stat.S_ISLNK(st.st_mode) else 'special file'}"
                                      f": immudb's folders hold only folders and regular files, and the archive "
                                      f"would not restore it")
        return added

    def _add_dir(self, path: Path, arcname: str) -> None:
        info = self._info(path, arcname, path.stat())
        info.type = tarfile.DIRTYPE
        self.tar.addfile(info)

    def add_file(self, path: Path, arcname: str, st: os.stat_result | None = None) -> FileEntry:
        st = st or path.stat()
        info = self._info(path, arcname, st)
        info.size = st.st_size
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            reader = _HashingReader(f, self.hasher, self.on_bytes, self.cancel)
            self.tar.addfile(info, reader)
        entry = FileEntry(arcname, reader.size, reader.hexdigest())
        self.files.append(entry)
        return entry

    def discard(self) -> None:
        """Stop after a failure: close the compressor (and its threads)
        without sending anything more to the upload. Never raises."""
        self.sink.discarding = True
        self.tar.closed = True
        with contextlib.suppress(Exception):
            self.compressor.close()
        self.hasher.close()

    def finish(self, manifest: Manifest) -> Manifest:
        """Append the manifest (with every file added) and close the streams;
        the manifest as written."""
        manifest = manifest.with_files(FileRecord(f.path, f.size, f.sha256) for f in self.files)
        data = manifest.encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(data), 0o644, int(manifest.finished_unix or 0)
        self.tar.addfile(info, io.BytesIO(data))
        self.tar.close()
        self.compressor.close()
        self.hasher.close()
        return manifest


# --------------------------------------------------------------------------- reading

def _has_control(text: str) -> bool:
    return any(unicodedata.category(c).startswith("C") for c in text)


def check_member(member: tarfile.TarInfo) -> str | None:
    """Why `member` is unacceptable, or None. Accepted: exactly what the
    writer produces (see the module's doc)."""
    name = member.name
    if _has_control(name):
        return f"{name!r} has control or unassigned characters in its name"
    if member.issym() or member.islnk():
        return f"{name!r} is a link (to {member.linkname!r}): archives of this tool hold none"
    if member.issparse():
        return f"{name!r} is a sparse file: archives of this tool hold none"
    if not (member.isfile() or member.isdir()):
        return f"{name!r} is not a regular file or directory"
    if name.startswith("/") or name.startswith("\\"):
        return f"{name!r} is an absolute path"
    parts = PurePosixPath(name).parts
    if not parts or ".." in parts or "." in parts or "\\" in name:
        return f"{name!r} leaves the archive's folder"
    if name == MANIFEST:
        return None if member.isfile() else f"{MANIFEST} is not a file"
    if not is_database_name(parts[0]):
        return f"{name!r} is not under a database folder (not a name immudb gives databases)"
    if len(parts) == 1 and not member.isdir():
        return f"{name!r} is a file where a database folder belongs"
    return None


@dataclass
class Verification:
    """What reading an archive found: its manifest, every file with its size
    and sha256, and the problems (none: the archive is whole and matches its
    manifest)."""

    manifest: Manifest | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    compression: str = ""
    sealed: bool = False   # encrypted and not readable (no identity, another one, or changed ciphertext)

    @property
    def ok(self) -> bool:
        return not self.problems and self.manifest is not None

    @property
    def databases(self) -> list[str]:
        return self.manifest.names if self.manifest is not None else []


@contextlib.contextmanager
def _damage_is_archive_error():
    try:
        yield
    except encryption.EncryptionError as exc:
        raise ArchiveSealed(str(exc)) from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise ArchiveError(f"archive is truncated or corrupt: {exc}") from None
    except Exception as exc:
        # the decompressors' own errors: zstandard's, and ISA-L's IsalError (module igzip_lib, not a zlib.error)
        if type(exc).__module__.startswith(("zstandard", "igzip_lib", "isal")):
            raise ArchiveError(f"archive is truncated or corrupt: {exc}") from None
        raise


class _TarReader:
    """Reads a tar stream member by member: headers through tarfile's own
    parser (TarInfo.fromtarfile: ustar, GNU and PAX headers, sparse maps),
    data straight from the stream. tarfile's stream mode copies every byte
    once more through its buffer (a third of the time of a verify here).
    Holds the attributes TarInfo.fromtarfile reads from a TarFile."""

    encoding, errors = "utf-8", "surrogateescape"

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.position = 0          # bytes consumed
        self.offset = 0            # where the next header starts (set by fromtarfile)
        self.pax_headers: dict = {}
        self.fileobj = self        # fromtarfile reads and tells through tarfile.fileobj

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position

    def read_exactly(self, n: int) -> bytes:
        data = self.read(n)
        while len(data) < n:
            more = self.read(n - len(data))
            if not more:
                raise ArchiveError("archive is truncated or corrupt: unexpected end of data")
            data += more
        return data

    def read_to_end(self) -> None:
        """Read what follows the end-of-archive block to the end of the
        stream: zeros only (the rest of the last record). Reading it is what
        checks the gzip trailer and age's final chunk; anything else there is
        damage, or data someone added."""
        while True:
            data = self.read(CHUNK)
            if not data:
                return
            if data.count(0) != len(data):
                raise ArchiveError("archive is damaged or was added to: data follows its end-of-archive blocks")

    def skip_to(self, offset: int) -> None:
        while self.position < offset:
            if not self.read(min(CHUNK, offset - self.position)):
                raise ArchiveError("archive is truncated or corrupt: unexpected end of data")

    def next(self) -> tarfile.TarInfo | None:
        """The next member's header, or None at the end of the archive."""
        self.skip_to(self.offset)
        try:
            return tarfile.TarInfo.fromtarfile(self)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]  # undocumented, and raised by fromtarfile
            return None  # a block of zeros: the end
        except tarfile.EmptyHeaderError:  # type: ignore[attr-defined]
            raise ArchiveError("archive is truncated or corrupt: it ends without the end-of-archive blocks") from None
        except tarfile.HeaderError as exc:
            raise ArchiveError(f"archive is truncated or corrupt: {exc}") from None


class _MemberContent:
    """The data of one member, `size` bytes from the stream; reading less
    than that from the archive is damage."""

    def __init__(self, reader: _TarReader, size: int):
        self.reader, self.left = reader, size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if n < 0 else min(n, self.left)
        with _damage_is_archive_error():
            data = self.reader.read(want)
        if not data:
            raise ArchiveError("archive is truncated or corrupt: unexpected end of data")
        self.left -= len(data)
        return data


def iterate(stream: BinaryIO, identities: Sequence[Any] | None = None,
            ) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None, str]]:
    """(member, its content or None, compression) for each member; raises
    ArchiveError for an unsafe member and for corrupt or truncated data.
    Decompression (and decryption, with `identities`) runs ahead in a
    thread of its own."""
    opened: list = []
    with _damage_is_archive_error():
        kind, plain = open_decompressor(stream, identities, opened)
        ahead = _ReadAhead(plain)
        reader = _TarReader(io.BufferedReader(ahead, CHUNK))
    with contextlib.ExitStack() as closing:
        for decrypting in opened:
            closing.callback(decrypting.close)
        closing.callback(ahead.close)
        while True:
            with _damage_is_archive_error():
                member = reader.next()
            if member is None:
                with _damage_is_archive_error():
                    reader.read_to_end()  # the compressor's and the cipher's own checks are at the very end
                return
            problem = check_member(member)
            if problem:
                raise ArchiveError(f"unsafe archive: {problem}")
            if member.isfile():
                with _damage_is_archive_error():
                    reader.skip_to(member.offset_data)
                yield member, _MemberContent(reader, member.size), kind
            else:
                yield member, None, kind


def hash_stream(f: BinaryIO, sink: Callable[[bytes], None] | None = None,
                on_bytes: Callable[[int], None] = lambda n: None, hasher: _Hasher | None = None) -> tuple[int, str]:
    """(size, sha256) of what `f` holds, handing each chunk to `sink`;
    hashed in `hasher`'s thread when given."""
    sha, size = hashlib.sha256(), 0
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return size, (hasher.digest(sha) if hasher else sha.hexdigest())
        if hasher:
            hasher.update(sha, chunk)
        else:
            sha.update(chunk)
        size += len(chunk)
        on_bytes(len(chunk))
        if sink is not None:
            sink(chunk)


class Store(Protocol):
    """Where `read` puts what it reads (restore: a scratch folder)."""

    def directory(self, path: str) -> None: ...

    def file(self, path: str, size: int) -> BinaryIO: ...


def read(stream: BinaryIO, store: Store | None = None,
         on_bytes: Callable[[int], None] = lambda n: None, identities: Sequence[Any] | None = None) -> Verification:
    """Read the whole archive once: every member checked as it comes (see
    check_member; a member named twice or after the manifest stops the
    read), every file hashed (and handed to `store`, if given), the manifest
    checked against its schema, and everything compared with it at the end.
    The one reader behind `verify` and `restore`: they cannot disagree.
    Never raises ArchiveError: the problems are in the result. What `store`
    and its files raise (OSError) propagates."""
    result = Verification()
    seen: set[str] = set()
    manifest_read = False
    hasher = _Hasher()
    try:
        for member, content, kind in iterate(stream, identities):
            result.compression = kind
            name = member.name.rstrip("/")
            if manifest_read:
                raise ArchiveError(f"unsafe archive: {name!r} comes after {MANIFEST}")
            if name in seen:
                raise ArchiveError(f"unsafe archive: {name!r} appears twice")
            seen.add(name)
            if name == MANIFEST:
                manifest_read = True
                result.manifest, problems = parse_manifest(content.read())
                result.problems += problems
                continue
            if member.isdir():
                if store is not None:
                    store.directory(name)
                continue
            sink = store.file(name, member.size) if store is not None else None
            try:
                size, digest = hash_stream(content, sink.write if sink else None, on_bytes, hasher)
            finally:
                if sink is not None:
                    sink.close()
            result.files[name] = FileEntry(name, size, digest)
    except ArchiveError as exc:
        result.problems.append(str(exc))
        result.sealed = isinstance(exc, ArchiveSealed)
        return result
    finally:
        hasher.close()
    if not manifest_read:
        result.problems.append(f"no {MANIFEST}: not an archive of this tool, or truncated")
    elif result.manifest is not None:
        compare(result)
    return result


def compare(result: Verification) -> None:
    """Check what was read against the manifest; add problems to `result`."""
    assert result.manifest is not None
    databases = {d.name: d for d in result.manifest.databases}
    for name, entry in databases.items():
        if not is_database_name(name):
            result.problems.append(f"{MANIFEST}: {name!r} is not a name immudb gives databases")
        elif entry.tx_id and not entry.files:
            result.problems.append(f"{name}: {entry.tx_id} transactions and no files")
    expected = {f.path: f for f in result.manifest.files}
    for path, want in sorted(expected.items()):
        got = result.files.get(path)
        if got is None:
            result.problems.append(f"{path}: listed in the manifest, missing from the archive")
        elif got.size != want.size:
            result.problems.append(f"{path}: {got.size} bytes, the manifest says {want.size}")
        elif got.sha256 != want.sha256:
            result.problems.append(f"{path}: sha256 differs from the manifest (the file is damaged)")
    for path in sorted(set(result.files) - set(expected)):
        result.problems.append(f"{path}: in the archive, not in the manifest")
    for path in sorted(set(result.files) | set(expected)):
        if path.split("/", 1)[0] not in databases:
            result.problems.append(f"{path}: its database is not in the manifest")


def verify(stream: BinaryIO, on_bytes: Callable[[int], None] = lambda n: None,
           identities: Sequence[Any] | None = None) -> Verification:
    """Read the whole archive: structure, every file's size and sha256
    against the manifest. Never raises ArchiveError: problems are listed."""
    return read(stream, on_bytes=on_bytes, identities=identities)
