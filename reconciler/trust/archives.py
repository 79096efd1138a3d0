"""Anchors for snapshot archives (trust/anchors.py for the idea).

An archive's manifest records each database's transaction and Alh when it
was copied; the manifest lives inside the archive, so alone it proves
nothing against whoever can rewrite the archive. What vouches for it:

- local: this replicator's checkpoint of the archive (the SHA-256 and size
  of its bytes as written, and the states): the whole file, byte for byte;
- signed: the primary's signature of each database's state, recorded in the
  manifest (`signed`), checked with the configured public key;
- live: the replica (or the primary, under its own name) holds each
  database's transaction with the manifest's Alh.

signed and live vouch for the states in the manifest; that the files hold
exactly that history is what `drill` then proves (the restored database's
every transaction exported and chained up to that Alh)."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from reconciler.manifest import Manifest
from reconciler.signed import SignedState, TrustError
from reconciler.trust.anchors import Anchors, LiveServer, Verdict, conclude
from reconciler.trust.checkpoints import ArchiveCheckpoint


class HashingReader:
    """A stream that hashes and counts what is read through it."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.sha, self.size = stream, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def drain(self, limit: int) -> None:
        """Read what is left, up to `limit` bytes more (a reader stops at the
        archive's end; the checkpoint covers every byte of the file)."""
        while limit > 0:
            data = self.read(min(1 << 20, limit))
            if not data:
                return
            limit -= len(data)

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


def verdicts(what: str, manifest: Manifest, anchors: Anchors, checkpoint: ArchiveCheckpoint | None,
             digest: str | None, size: int | None, live: Callable[[str], list[LiveServer]] | None,
             primary_name: Callable[[str], str] = lambda name: name) -> list[Verdict]:
    """What vouches for archive `what`, whose manifest is `manifest` and
    whose bytes hash to `digest` (`size` bytes; None when not read whole).
    `live(name)` gives the servers that may hold database `name`. Raises
    TrustError when an anchor disagrees, or none vouches (unless the
    operator trusts the archive alone)."""
    recorded = manifest.states()
    out: list[Verdict] = []
    if checkpoint is not None:
        if digest is None:
            out.append(Verdict("local", "state", None, "the archive was not read whole"))
        elif (digest, size) != (checkpoint.sha256, checkpoint.size):
            raise TrustError(f"{what}: its bytes are not the ones this replicator wrote (sha256 {digest[:16]}..., "
                             f"{size} bytes; written: {checkpoint.sha256[:16]}..., {checkpoint.size} bytes)")
        elif dict(checkpoint.databases) != recorded:
            raise TrustError(f"{what}: its manifest's states differ from this replicator's checkpoint")
        else:
            out.append(Verdict("local", "state", max((t for t, _ in recorded.values()), default=0),
                               f"the archive's sha256 and size are the ones written ({checkpoint.sha256[:16]}...)"))
    if anchors.key is not None:
        missing = []
        for d in manifest.databases:
            if d.name not in recorded:
                continue
            tx_id, alh = recorded[d.name]
            if d.signed is None:
                missing.append(d.name)
                continue
            try:
                state = SignedState.from_dict(d.signed)
            except ValueError as exc:
                raise TrustError(f"{what}: {d.name}: its signed state is malformed ({exc})") from None
            state.check(anchors.key, primary_name(d.name), tx_id, alh, f"{what}: {d.name}")
        if missing:
            out.append(Verdict("signed", f"key {anchors.key.path}", None,
                               f"no signed state for {', '.join(missing)}"))
        elif recorded:
            out.append(Verdict("signed", f"key {anchors.key.path}", max(t for t, _ in recorded.values()),
                               f"the primary's signatures of {len(recorded)} database states hold"))
    if live is not None:
        unconfirmed = []
        for name, (tx_id, alh) in sorted(recorded.items()):
            confirmed = False
            for server in live(name):
                try:
                    got = server.header(tx_id)
                except Exception:  # noqa: BLE001 - a server that cannot answer vouches for nothing
                    continue
                if got is None:
                    continue
                if got[0] != alh:
                    raise TrustError(f"{what}: {server.label} holds transaction {tx_id} of {name} with Alh "
                                     f"{got[0].hex()[:16]}..., the archive {alh.hex()[:16]}...: the archive was "
                                     f"rewritten, or is of another history")
                confirmed = True
                break
            if not confirmed:
                unconfirmed.append(name)
        if recorded and not unconfirmed:
            out.append(Verdict("live", "replica/primary", max(t for t, _ in recorded.values()),
                               f"the servers hold all {len(recorded)} database states with the same Alh"))
        elif recorded:
            out.append(Verdict("live", "replica/primary", None, f"no server confirms {', '.join(unconfirmed)}"))
    if not recorded and checkpoint is None:
        out.append(Verdict("none", what, None, "the archive records no database state to check"))
    top = max((t for t, _ in recorded.values()), default=0)
    return conclude(out, anchors, top, what)
