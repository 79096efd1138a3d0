"""States signed by the primary: the anchor nobody who can only write a
backup target can forge.

An immudb server started with `--signingKey` (an ECDSA P-256 private key)
signs the states it answers with: CurrentState, and VerifiableTxById (the
state of the transaction asked for). The signature is ASN.1 DER over
SHA-256 of immudb's ImmutableState.ToBytes():

    u32 length of the database name, the name (as that server names it),
    u64 tx id, 32-byte Alh

(pkg/api/schema/state.go, pkg/signer/ecdsa.go). The journal records one per
segment, each archive's manifest one per database; `verify`, `drill` and
`restore` check them with the public key of `backup.trust.public_key_file`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReplicatorError


class TrustError(ReplicatorError):
    """What was read does not match an anchor it must match (a signature,
    a checkpoint, the live server), or an anchor cannot be used."""


@dataclass(frozen=True)
class SignedState:
    database: str      # as the signing server (the primary) names it
    tx_id: int
    alh: bytes
    signature: bytes   # ASN.1 DER (r, s)

    def payload(self) -> bytes:
        name = self.database.encode()
        return struct.pack(">I", len(name)) + name + struct.pack(">Q", self.tx_id) + self.alh

    def as_dict(self) -> dict:
        return {"database": self.database, "tx_id": self.tx_id, "alh": self.alh.hex(),
                "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: object) -> SignedState:
        """Raises ValueError for anything but the shape as_dict writes."""
        if not isinstance(d, dict) or set(d) != {"database", "tx_id", "alh", "signature"}:
            raise ValueError("a signed state has database, tx_id, alh and signature")
        if not isinstance(d["database"], str) or type(d["tx_id"]) is not int or not 0 < d["tx_id"] < 1 << 64:
            raise ValueError("a signed state's database or tx_id is not valid")
        alh, signature = bytes.fromhex(d["alh"]), bytes.fromhex(d["signature"])
        if len(alh) != 32 or not 8 <= len(signature) <= 72:
            raise ValueError("a signed state's alh or signature has the wrong length")
        return cls(d["database"], d["tx_id"], alh, signature)

    def check(self, key: PublicKey, database: str, tx_id: int, alh: bytes, what: str) -> None:
        """That this is the primary's signature of (database, tx_id, alh).
        Raises TrustError saying which part differs."""
        if (self.database, self.tx_id) != (database, tx_id):
            raise TrustError(f"{what}: its signed state is of {self.database!r} transaction {self.tx_id}, not "
                             f"{database!r} transaction {tx_id}")
        if self.alh != alh:
            raise TrustError(f"{what}: transaction {tx_id} has Alh {alh.hex()[:16]}..., the primary signed "
                             f"{self.alh.hex()[:16]}...")
        key.verify(self, what)


class PublicKey:
    """The primary's public key (PEM, as `openssl ec -pubout` writes it)."""

    def __init__(self, path: Path | str):
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        self.path = str(path)
        try:
            key = load_pem_public_key(Path(path).read_bytes())
        except OSError as exc:
            raise TrustError(f"backup.trust.public_key_file {path}: {exc.strerror or exc}") from None
        except ValueError:
            raise TrustError(f"backup.trust.public_key_file {path}: not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise TrustError(f"backup.trust.public_key_file {path}: not an ECDSA P-256 key (immudb signs with one)")
        self._key = key

    def verify(self, state: SignedState, what: str) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        try:
            self._key.verify(state.signature, state.payload(), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise TrustError(f"{what}: the signature of {state.database!r} transaction {state.tx_id} is not the "
                             f"primary's (key {self.path})") from None
