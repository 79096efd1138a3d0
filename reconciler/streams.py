"""Stream adapters that the archive reader and the encryption share."""
from __future__ import annotations

import io
from abc import abstractmethod
from typing import Any


class Readable(io.RawIOBase):
    """Anything with read(n) (boto3's StreamingBody, paramiko's SFTPFile, a
    trust.archives.HashingReader) as a raw stream, for io.BufferedReader.

    `owns` says whether closing it closes `source` too; io.BufferedReader
    closes its raw stream when it is closed, and when it is collected. A
    journal segment's stream is its reader's, closed with it (`owns`); an
    archive's stream is its caller's, who reads on after the archive's end
    (the trust checks hash the rest of the file) and closes it then."""

    def __init__(self, source: Any, *, owns: bool):
        self.source, self.owns = source, owns

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.owns and not self.closed:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
        super().close()


class ChunkReader(io.RawIOBase):
    """A raw stream over chunks of bytes that come from elsewhere (a queue
    another thread fills): readinto hands out what is left of the current
    chunk, without copying it, and asks next_chunk for another when it is
    used up."""

    _pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    @abstractmethod
    def next_chunk(self) -> bytes | None:
        """The next chunk (b"" is skipped), or None at the end; raises what
        the reader is to see."""

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self.next_chunk()
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
