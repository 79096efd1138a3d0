"""Passwords encrypted the Go replicator's way: `enc:<hex>`.

The Go tool accepts, for each of its three passwords, a value holding
`enc:` followed by hex: a 12-byte AES-GCM nonce, then the ciphertext and its
tag, under a key built into the binary (its build-time AES_KEY, used as raw
bytes: 16, 24 or 32 of them). Its pattern is `^(.*?)enc:([[:xdigit:]]+)(.*)$`:
text around the hex is dropped, and a value without that pattern is used as
it is. Here the key comes from REPLICATOR_AES_KEY, a file named by
AES_KEY_FILE (or REPLICATOR_AES_KEY_FILE), or `secrets.aes_key[_file]`.

Where the Go tool silently uses the literal text (no key, a key of the
wrong length, the wrong key, hex that is not whole bytes) or panics (hex
shorter than the nonce), this is a configuration error naming the field,
never the value.
"""
from __future__ import annotations

import re

from reconciler.errors import ConfigError

ENCRYPTED = re.compile(r"^(.*?)enc:([0-9A-Fa-f]+)(.*)$", re.DOTALL)
NONCE_BYTES = 12
TAG_BYTES = 16


def is_encrypted(value: str) -> bool:
    return ENCRYPTED.match(value) is not None


def decrypt(value: str, key: bytes | None, field: str) -> str:
    """The password `value` stands for: itself, or the plaintext of its
    `enc:` part. Raises ConfigError (naming `field`) when it cannot be
    decrypted."""
    match = ENCRYPTED.match(value)
    if match is None:
        return value
    where = f"At '{field}'"
    if key is None:
        raise ConfigError(f"{where}: the value is encrypted (enc:...) and no AES key is given: set "
                          f"REPLICATOR_AES_KEY, AES_KEY_FILE or secrets.aes_key_file (the Go tool's AES_KEY)")
    if len(key) not in (16, 24, 32):
        raise ConfigError(f"{where}: the AES key is {len(key)} bytes long; AES keys are 16, 24 or 32 bytes")
    digits = match.group(2)
    if len(digits) % 2:
        raise ConfigError(f"{where}: the enc: value has an odd number of hex digits")
    data = bytes.fromhex(digits)
    if len(data) < NONCE_BYTES + TAG_BYTES:
        raise ConfigError(f"{where}: the enc: value is too short for AES-GCM ({len(data)} bytes; a 12-byte nonce "
                          f"and a 16-byte tag at least)")
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    try:
        plaintext = AESGCM(key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
    except InvalidTag:
        raise ConfigError(f"{where}: the enc: value does not decrypt with the AES key given (encrypted with "
                          f"another key?)") from None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the enc: value decrypts to bytes that are not UTF-8 text") from None
