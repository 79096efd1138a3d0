"""Client-side encryption of archives to age recipients (backup.encryption).

The format is age's (age-encryption.org/v1), written by pyrage, the Python
binding of rage: `age -d -i key.txt archive.tar.gz > plain.tar.gz` decrypts
what this writes. Writing needs only recipients (public keys: age X25519
`age1...`, or SSH `ssh-ed25519`/`ssh-rsa` public keys); reading needs an
identity (the private key), which the machine that writes backups need not
hold. age authenticates every 64 KiB chunk and the end of the stream: a
changed, cut or lengthened ciphertext does not decrypt.

Fail closed: a recipient that does not parse, a file that cannot be read,
or pyrage missing, is an error before anything is written, never a
plaintext archive. Key material is never printed.
"""
from __future__ import annotations

import io
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.errors import ReplicatorError
from reconciler.streams import ChunkReader, Readable

AGE_MAGIC = b"age-encryption.org/v1\n"
ARMORED_MAGIC = b"-----BEGIN AGE ENCRYPTED FILE-----"
HEAD = max(len(AGE_MAGIC), len(ARMORED_MAGIC))  # the bytes is_encrypted needs
_QUEUE_DEPTH = 8          # chunks in flight between the compressor and the encrypting thread


class EncryptionError(ReplicatorError):
    pass


MAX_KEY_FILE = 1024 * 1024  # a recipients or identity file larger than this is no key file


def _read_key_file(path: Path, what: str) -> bytes:
    """A regular file of at most MAX_KEY_FILE bytes (never a FIFO or a
    device, which could block or never end)."""
    import os
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise EncryptionError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise EncryptionError(f"{what} {path}: not a regular file")
        if st.st_size > MAX_KEY_FILE:
            raise EncryptionError(f"{what} {path}: {st.st_size} bytes, more than a key file holds")
        return f.read(MAX_KEY_FILE + 1)[:MAX_KEY_FILE]


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError as exc:  # a broken install must not write plaintext
        raise EncryptionError(f"backup.encryption is set but pyrage cannot be imported ({exc}): nothing is "
                              f"written unencrypted; reinstall the package") from None
    return pyrage


def is_encrypted(head: bytes) -> bool:
    """True when `head` (the first bytes of a file) starts an age file."""
    return head.startswith(AGE_MAGIC) or head.startswith(ARMORED_MAGIC)


def parse_recipient(text: str, origin: str) -> Any:
    """One recipient: an age X25519 public key or an SSH public key."""
    pyrage = _pyrage()
    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith("ssh-"):
            return pyrage.ssh.Recipient.from_str(text)
    except Exception as exc:  # noqa: BLE001 - pyrage's RecipientError and ValueError alike
        raise EncryptionError(f"{origin}: not a valid recipient ({type(exc).__name__}); expected an age public key "
                              f"(age1..., from age-keygen) or an SSH public key (ssh-ed25519 ...)") from None
    raise EncryptionError(f"{origin}: not a recipient: expected an age public key (age1..., from age-keygen) or "
                          f"an SSH public key (ssh-ed25519 ..., ssh-rsa ...)")


def load_recipients(inline: Sequence[str], files: Sequence[Path]) -> list[Any]:
    """Every recipient, inline and from files (one per line; blank lines and
    `#` comments skipped). Raises EncryptionError naming the place."""
    found = [parse_recipient(r, f"backup.encryption.recipients[{i}]") for i, r in enumerate(inline)]
    for path in files:
        try:
            lines = _read_key_file(Path(path), "backup.encryption.recipients_file").decode().splitlines()
        except UnicodeDecodeError:
            raise EncryptionError(f"backup.encryption.recipients_file {path}: not text") from None
        for n, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                found.append(parse_recipient(line, f"{path} line {n}"))
    if not found:
        raise EncryptionError("backup.encryption names no recipient (recipients or recipients_file)")
    return found


def load_identities(path: Path) -> list[Any]:
    """The identities (private keys) in `path`: age-keygen's file (lines
    AGE-SECRET-KEY-1...), or an unencrypted OpenSSH private key. Never
    prints the file."""
    pyrage = _pyrage()
    data = _read_key_file(Path(path), "identity file")
    try:
        if b"-----BEGIN " in data and b" PRIVATE KEY-----" in data:  # OpenSSH, or a PEM RSA key
            return [pyrage.ssh.Identity.from_buffer(data)]
        keys = [line.strip() for line in data.decode().splitlines() if line.strip().startswith("AGE-SECRET-KEY-")]
        found = [pyrage.x25519.Identity.from_str(k) for k in keys]
    except Exception as exc:  # noqa: BLE001 - whatever pyrage says, the key's bytes are never in the message
        if "decrypted first" in str(exc) or "passphrase" in str(exc).lower():
            raise EncryptionError(f"identity file {path}: a passphrase-protected SSH key, which is not supported "
                                  f"(use an age key from age-keygen, or a copy of the key without a "
                                  f"passphrase)") from None
        raise EncryptionError(f"identity file {path}: not a valid age or SSH identity "
                              f"({type(exc).__name__})") from None
    if not found:
        raise EncryptionError(f"identity file {path}: holds no identity (AGE-SECRET-KEY-1... lines, as age-keygen "
                              f"writes, or an OpenSSH private key)")
    return found


class IdentityFile(Sequence[Any]):
    """The identities in the identity file `path`, read (load_identities,
    raising EncryptionError as it does) the first time they are asked for:
    only an archive or segment that is encrypted needs the private key, and
    reading a plain one never touches it. A configured identity_file is
    still checked whole when the configuration is loaded
    (config/validate.py): a broken one is a configuration error then."""

    def __init__(self, path: Path, *more: Path):
        self.paths = [Path(path), *(Path(m) for m in more)]  # --identity given more than once: every key
        self._loaded: list[Any] | None = None

    def _identities(self) -> list[Any]:
        if self._loaded is None:
            self._loaded = [identity for path in self.paths for identity in load_identities(path)]
        return self._loaded

    def __len__(self) -> int:
        return len(self._identities())

    def __getitem__(self, index: Any) -> Any:
        return self._identities()[index]


class _QueueReader(ChunkReader):
    """What pyrage reads from: the chunks put in `chunks`, then EOF at None.
    Once `aborted` is set it fails instead, so that pyrage stops without
    writing the end of the stream."""

    def __init__(self, chunks: queue.Queue, aborted: threading.Event):
        self.chunks, self.done, self.aborted = chunks, False, aborted

    def next_chunk(self) -> bytes | None:
        while True:
            if self.aborted.is_set():
                raise BrokenPipeError("aborted")
            if self.done:
                return None
            try:
                chunk = self.chunks.get(timeout=0.2)
            except queue.Empty:
                continue
            if chunk is None:
                self.done = True
            return chunk


class _SinkWriter(io.RawIOBase):
    def __init__(self, sink: Any):
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sink.write(bytes(data))
        return len(data)


class Encrypting:
    """A writable stream that encrypts what it is given to `recipients`
    and writes the ciphertext to `sink`, in a thread of its own (pyrage
    pulls; the archive writer pushes). close() writes the end of the age
    stream and raises what went wrong on the way."""

    def __init__(self, sink: Any, recipients: Sequence[Any]):
        self._pyrage = _pyrage()
        self._chunks: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._aborted = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sink, list(recipients)), name="encrypt",
                                        daemon=True)
        self._thread.start()
        self.closed = False

    def _run(self, sink: Any, recipients: list[Any]) -> None:
        try:
            self._pyrage.encrypt_io(_QueueReader(self._chunks, self._aborted), _SinkWriter(sink), recipients)
        except BaseException as exc:  # noqa: BLE001 - handed to the writer's next write or close
            self._error = exc
            while True:  # let a writer blocked on a full queue go on (to see the error)
                try:
                    self._chunks.get_nowait()
                except queue.Empty:
                    break

    def _failed(self) -> BaseException:
        """What to raise for the encrypting thread's error: the sink's own
        error as it is (a full disk stays ENOSPC), anything else wrapped."""
        error = self._error
        if isinstance(error, (OSError, ReplicatorError)):
            return error
        return EncryptionError(f"encrypting the archive failed: {type(error).__name__}: {error}")

    def _put(self, item: bytes | None) -> None:
        while True:
            if self._error is not None:
                raise self._failed()
            try:
                self._chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise EncryptionError("encrypting the archive failed: its thread ended") from None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if data:
            self._put(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """The end of the age stream: everything written is encrypted and in
        the sink. Raises EncryptionError."""
        if self.closed:
            return
        self.closed = True
        self._put(None)
        self._thread.join()
        if self._error is not None:
            raise self._failed()

    def abort(self) -> None:
        """Stop without finishing the stream (a failed backup): pyrage's next
        read fails, so no end of stream is written. Never raises."""
        self.closed = True
        self._aborted.set()
        self._error = self._error or EncryptionError("aborted")
        self._thread.join(timeout=30)  # a sink stuck in a write holds it; the upload's abort follows anyway


class _QueueWriter(io.RawIOBase):
    """Where pyrage writes plaintext: a bounded queue; once `stop` is set
    (the reader went away) it fails, so that pyrage returns."""

    def __init__(self, chunks: queue.Queue, stop: threading.Event):
        self.chunks, self.stop = chunks, stop

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        put(self.chunks, bytes(data), self.stop)
        return len(data)


def put(chunks: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put `item` in the bounded queue unless `stop` is set (BrokenPipeError)."""
    while True:
        if stop.is_set():
            raise BrokenPipeError("the reader stopped")
        try:
            chunks.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


class Decrypting(ChunkReader):
    """The plaintext of the age file `stream`, decrypted in a thread as it
    is read. A wrong identity, or a ciphertext changed, cut or lengthened,
    surfaces as EncryptionError from read() (no plaintext of an
    unauthenticated chunk is ever handed out)."""

    def __init__(self, stream: BinaryIO, identities: Sequence[Any], what: str = "the archive"):
        pyrage = _pyrage()
        identities = list(identities)  # an IdentityFile is read here, not in the thread (its error is no bad ciphertext)
        self.what = what
        self._chunks: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._eof = False
        self._error: BaseException | None = None
        self._stop = threading.Event()

        def run() -> None:
            try:
                pyrage.decrypt_io(stream, _QueueWriter(self._chunks, self._stop), identities)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                self._error = exc
            finally:
                try:
                    put(self._chunks, None, self._stop)
                except BrokenPipeError:
                    pass
        self._thread = threading.Thread(target=run, name="decrypt", daemon=True)
        self._thread.start()

    def next_chunk(self) -> bytes | None:
        if self._eof:
            return None
        chunk = self._chunks.get()
        if chunk is None:
            self._eof = True
            if self._error is not None:
                raise EncryptionError(f"{self.what} cannot be decrypted: {_decrypt_reason(self._error)}")
        return chunk

    def close(self) -> None:
        """Stop early: the decrypting thread's next write fails, so it ends
        without decrypting the rest."""
        if not self.closed:
            import time
            self._stop.set()
            deadline = time.monotonic() + 30  # a read of the source stuck in the network: left to its timeout
            while self._thread.is_alive() and time.monotonic() < deadline:
                try:
                    self._chunks.get_nowait()
                except queue.Empty:
                    self._thread.join(timeout=0.1)
        super().close()


def _decrypt_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "no matching" in text or "no identity" in text or "did not match" in text:
        return "no given identity is among its recipients (another key, or the wrong --identity)"
    return f"its ciphertext does not authenticate: changed, cut or not an age file ({type(exc).__name__})"


class Sealing:
    """What a store of small objects (journal segments) encrypts to and
    decrypts with: `recipients` to write, `identities` to read. Either may
    be missing: a writer holds no identity, a restore no recipient."""

    def __init__(self, recipients: Sequence[Any] | None = None, identities: Sequence[Any] | None = None):
        self.recipients = list(recipients) if recipients else None
        self.identities = identities  # as given: an IdentityFile is read only for the first encrypted segment

    def seal(self, blob: bytes) -> bytes:
        """`blob` encrypted to the recipients (as it is without any)."""
        if self.recipients is None:
            return blob
        try:
            return bytes(_pyrage().encrypt(blob, self.recipients))
        except Exception as exc:  # noqa: BLE001 - never a plaintext upload because encryption failed
            raise EncryptionError(f"encrypting failed: {type(exc).__name__}: {exc}") from None

    def opened(self, stream: BinaryIO, what: str) -> BinaryIO:
        """`stream` to read, decrypted when it is an age file; closing it
        closes `stream`. Raises EncryptionError when it is one and there is
        no identity."""
        return open_plaintext(stream, self.identities, what, owns=True)[0]


def open_plaintext(stream: BinaryIO, identities: Sequence[Any] | None, what: str, *, owns: bool,
                   buffer_size: int = io.DEFAULT_BUFFER_SIZE) -> tuple[io.BufferedReader, Decrypting | None]:
    """(`stream` to read, decrypted when its first bytes start an age file;
    the Decrypting stream then, else None): the one place that tells an
    encrypted archive or segment from a plain one. `stream` is used as it
    is when it is an io.BufferedReader; `owns` is streams.Readable's. Raises
    EncryptionError when it is encrypted and `identities` are none, or (an
    IdentityFile, read only now) cannot be read."""
    buffered = (stream if isinstance(stream, io.BufferedReader)
                else io.BufferedReader(Readable(stream, owns=owns), buffer_size))
    if not is_encrypted(buffered.peek(HEAD)[:HEAD]):
        return buffered, None
    keys = list(identities or ())
    if not keys:
        raise EncryptionError(f"{what} is encrypted (age): give --identity FILE, or set "
                              f"backup.encryption.identity_file, to read it")
    decrypting = Decrypting(buffered, keys, what)
    return io.BufferedReader(decrypting, buffer_size), decrypting

