"""Anchors: what a restore checks the history it read against, held where
a writer of the backup target cannot reach.

- live: a server that still holds the transaction (the replica, or the
  primary under its own name for the database): its Alh from the server's
  own export must be the one read;
- signed: the primary's signature (immudb --signingKey) of a transaction's
  state, recorded beside the data, checked with the public key of
  `backup.trust.public_key_file`;
- local: the replicator's own checkpoint (trust/checkpoints.py) of the
  newest transaction it wrote to that target.

An anchor that is available and disagrees stops the restore; at least one
must vouch for the point restored to, unless the operator says to trust
the target alone (`--unanchored`). Every verdict is reported, available or
not, so the output says what the result was checked against.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.signed import PublicKey, SignedState, TrustError


@dataclass(frozen=True)
class Verdict:
    anchor: str        # live | signed | local
    source: str        # which server, key or state folder
    tx_id: int | None  # the transaction it vouched for (None: it could not)
    detail: str        # one line

    @property
    def vouched(self) -> bool:
        return self.tx_id is not None

    def line(self) -> str:
        state = f"transaction {self.tx_id}" if self.vouched else "not used"
        return f"{self.anchor} ({self.source}): {state}: {self.detail}"


@dataclass
class LiveServer:
    """A running server that may hold the database: `label` names it in
    messages; `header(tx_id)` gives (Alh, ts) of its transaction or None;
    `last()` its last committed transaction. Each may raise ReplicatorError
    (unreachable, no such database): the anchor is then not available."""

    label: str
    database: str
    header: Callable[[int], tuple[bytes, int] | None]
    last: Callable[[], int]


@dataclass
class Anchors:
    """The anchors a restore of one database may use."""

    live: list[LiveServer] = field(default_factory=list)
    key: PublicKey | None = None
    signed_database: str = ""          # the database as the primary names it (what its signatures name)
    checkpoint: tuple[int, bytes, str] | None = None   # (tx id, Alh, where) of the local checkpoint
    checkpoint_source: str = ""
    unanchored: bool = False            # the operator trusts the target alone
    allow_rollback: bool = False        # restoring short of what an anchor holds is intended

    def check_signed(self, state: SignedState | None, tx_id: int, alh: bytes, what: str) -> bool:
        """A recorded signed state of transaction `tx_id` (whose Alh is
        `alh`), checked; True when it vouches. Raises TrustError when it is
        there and wrong, or missing while a key is configured and `required`."""
        if self.key is None or state is None:
            return False
        state.check(self.key, self.signed_database, tx_id, alh, what)
        return True


def conclude(verdicts: list[Verdict], anchors: Anchors, point: int, what: str) -> list[Verdict]:
    """The verdicts, once at least one vouches for `point` (or the operator
    trusts the target alone). Raises TrustError otherwise."""
    if any(v.vouched and v.tx_id >= point for v in verdicts):
        return verdicts
    if anchors.unanchored:
        return verdicts + [Verdict("none", "--unanchored", None,
                                   "UNANCHORED: checked only against itself, as the operator asked")]
    tried = "; ".join(v.line() for v in verdicts) or "none configured"
    raise TrustError(f"{what}: nothing outside the target vouches for transaction {point} ({tried}); start the "
                     f"replica or primary, configure backup.trust, or give --unanchored to trust the target alone")
