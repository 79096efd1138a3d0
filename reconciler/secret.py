"""A secret value that never prints itself.

A `Secret` holds either a value (from the YAML, the environment or a flag) or
the path of a file to read it from. The file is read each time the value is
needed (`reveal()`), so a rotated Kubernetes Secret or systemd credential is
picked up without a restart, and the content is never kept in the parsed
configuration. `str()`, `repr()` and formatting give `***`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from reconciler.errors import ConfigError

REDACTED = "***"
_MIN_REDACTED_LENGTH = 4  # shorter strings would blot out ordinary words
_revealed: set[str] = set()


def redact(text: str) -> str:
    """`text` with every secret value this process has used replaced by `***`:
    the last line of defence for log lines and error messages. Also in the
    escaped form `json.dumps` gives it (a `"`, `\\` or non-ASCII letter), as
    both log formats quote values that way before they are scrubbed."""
    for value in sorted(_revealed, key=len, reverse=True):
        for form in (value, json.dumps(value)[1:-1]):
            if form in text:
                text = text.replace(form, REDACTED)
    return text


def remember(value: str) -> str:
    """Register a secret value that did not come through a Secret (e.g. one
    read back from a server) so that `redact` hides it too."""
    if len(value) >= _MIN_REDACTED_LENGTH:
        _revealed.add(value)
    return value


class Secret:
    __slots__ = ("_value", "_file", "origin", "_decode")

    def __init__(self, value: str | None = None, *, file: str | Path | None = None, origin: str = "",
                 decode: Callable[[str], str] | None = None):
        """`decode` turns what was given into the secret itself (e.g. an
        `enc:` password into its plaintext); it may raise ConfigError."""
        if (value is None) == (file is None):
            raise ValueError("a Secret takes a value or a file, not both")
        self._value = value
        if value is not None:
            remember(value)
        self._file = Path(file) if file is not None else None
        self.origin = origin  # where it came from, for messages: 'primary.password_file'
        self._decode = decode

    @property
    def file(self) -> Path | None:
        return self._file

    def reveal(self) -> str:
        """The secret itself. Raises ConfigError (naming the file, never its
        content) when the file cannot be read or is empty."""
        given = self._given()
        return remember(self._decode(given) if self._decode else given)

    def _given(self) -> str:
        if self._file is None:
            return remember(self._value)  # type: ignore[arg-type]
        where = f"At '{self.origin}': " if self.origin else ""
        try:
            text = self._file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}cannot read secret file {self._file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}secret file {self._file} is not UTF-8 text") from None
        # files written by `echo` or editors end with a newline that is not part of the secret
        text = text.rstrip("\r\n")
        if not text:
            raise ConfigError(f"{where}secret file {self._file} is empty")
        return remember(text)

    def fingerprint(self) -> str:
        """A short digest to tell two values apart without showing either."""
        return hashlib.sha256(self.reveal().encode()).hexdigest()[:12]

    def __str__(self) -> str:
        return REDACTED

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._value, self._file) == (other._value, other._file)

    def __hash__(self) -> int:
        return hash((self._value, self._file))

    def __reduce__(self):  # pickling would write the value somewhere unexpected
        raise TypeError("Secret cannot be pickled")
