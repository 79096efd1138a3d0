"""The anchors a configuration provides: its state folder's checkpoints,
the primary's public key, and its running servers."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from reconciler.manifest import Manifest
from reconciler.signed import PublicKey
from reconciler.trust.anchors import Anchors, LiveServer
from reconciler.trust.checkpoints import Checkpoints


def checkpoints(cfg) -> Checkpoints:
    """The local checkpoints of configuration `cfg` (backup.trust)."""
    trust = cfg.backup.trust
    key = trust.hmac_key.reveal().encode() if trust.hmac_key is not None else None
    return Checkpoints(trust.state_folder, key)


def public_key(cfg) -> PublicKey | None:
    path = cfg.backup.trust.public_key_file
    return PublicKey(path) if path is not None else None


@contextlib.contextmanager
def live_servers(cfg, database: str, enabled: bool = True) -> Iterator[list[LiveServer]]:
    """The replica (database `database`) and the primary (the database it
    follows, under the primary's name), as anchors; clients closed on exit.
    A server that cannot be reached is an anchor not available, not an
    error."""
    from reconciler.admin import ImmudbAdmin
    opened: list[ImmudbAdmin] = []
    servers: list[LiveServer] = []
    if enabled:
        for role, server, name in (("replica", cfg.replica, database),
                                   ("primary", cfg.primary, cfg.reconcile.primary_name(database))):
            admin = ImmudbAdmin.from_config(role, server)
            opened.append(admin)
            servers.append(_live(admin, f"{role} {server.address} database {name}", name))
    try:
        yield servers
    finally:
        for admin in opened:
            admin.close()


def _live(admin, label: str, name: str) -> LiveServer:
    def header(tx_id: int):
        h = admin.tx_header(name, tx_id)
        return None if h is None else (h.alh, h.ts)

    return LiveServer(label, name, header, lambda: admin.state(name).tx_id)


@contextlib.contextmanager
def journal_anchors(cfg, target_cfg, database: str, *, live: bool = True, unanchored: bool = False,
                    allow_rollback: bool = False) -> Iterator[Anchors]:
    """Everything that may vouch for the journal of `database` at
    `target_cfg`. Raises TrustError when a configured anchor cannot be read
    (a checkpoint whose seal does not match, an unreadable public key)."""
    points = checkpoints(cfg)
    mark = points.journal(target_cfg, database)
    key = public_key(cfg)
    with live_servers(cfg, database, live) as servers:
        yield Anchors(live=servers, key=key, signed_database=cfg.reconcile.primary_name(database),
                      checkpoint=(mark.tx_id, mark.alh, f"state {points.root.parent}") if mark else None,
                      unanchored=unanchored, allow_rollback=allow_rollback)




@contextlib.contextmanager
def archive_anchors(cfg, target_cfg, archive: str, *, live: bool = True, unanchored: bool = False):
    """(Anchors, the archive's local checkpoint or None, `live_for(name)`:
    the live servers that may hold database `name`, or None) for archive
    `archive` at `target_cfg`. `cfg` may be None (an archive read without a
    configuration: nothing vouches but --unanchored)."""
    if cfg is None:
        yield Anchors(unanchored=unanchored), None, None
        return
    from reconciler.admin import ImmudbAdmin
    mark = checkpoints(cfg).archive(target_cfg, archive) if target_cfg is not None else None
    anchors = Anchors(key=public_key(cfg), unanchored=unanchored)
    if not live:
        yield anchors, mark, None
        return
    replica = ImmudbAdmin.from_config("replica", cfg.replica)
    primary = ImmudbAdmin.from_config("primary", cfg.primary)

    def live_for(name: str) -> list[LiveServer]:
        primary_name = cfg.reconcile.primary_name(name)
        return [_live(replica, f"replica {cfg.replica.address} database {name}", name),
                _live(primary, f"primary {cfg.primary.address} database {primary_name}", primary_name)]
    try:
        yield anchors, mark, live_for
    finally:
        replica.close()
        primary.close()


def vouch_for_archive(cfg, target_cfg, name: str, location: str, manifest: Manifest, reader, *, live: bool = True,
                      unanchored: bool = False) -> list:
    """The verdicts on archive `name` at `target_cfg` (shown as
    `location`), whose manifest `manifest` was read through `reader` (a
    trust.archives.HashingReader, drained here to the end of the file the
    checkpoint knows). Raises TrustError (see trust.archives.verdicts)."""
    from reconciler.trust.archives import verdicts
    with archive_anchors(cfg, target_cfg, name, live=live, unanchored=unanchored) as (anchors, mark, live_for):
        if mark is not None:
            reader.drain(max(0, mark.size - reader.size) + 1)
        return verdicts(location, manifest, anchors, mark, reader.sha.hexdigest(), reader.size, live_for,
                        cfg.reconcile.primary_name if cfg is not None else (lambda n: n))
