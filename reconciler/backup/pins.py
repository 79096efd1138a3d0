"""Pinned archives: never deleted by retention (`replicator pin` / `unpin`).

A pin is a small object beside the archives, `pins/<archive>.pin` under the
target's folder or prefix, written through the target interface (whole or
absent), so that whichever machine applies retention sees it. Whoever can
write to the target can add or remove pins as they can delete archives:
a pin guards against our own retention, not against them (S3 Object Lock
does that).
"""
from __future__ import annotations

import json
import time

from reconciler import targets
from reconciler.errors import ReplicatorError
from reconciler.targets.base import TargetConfig

SUFFIX = ".pin"
_PIN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,250}\.pin"
targets.register_placeholder("{pin}", _PIN)


def _pins(cfg: TargetConfig) -> TargetConfig:
    directory = cfg.path.rpartition("/")[0]
    return TargetConfig(name=cfg.name, kind=cfg.kind, path=f"{directory}/pins/{{pin}}" if directory else "pins/{pin}",
                        options=cfg.options)


def pinned(cfg: TargetConfig) -> set[str]:
    """The names of the archives pinned at target `cfg`. Raises TargetError
    when they cannot be listed (retention then deletes nothing)."""
    with targets.build(_pins(cfg)) as target:
        return {info.name.removesuffix(SUFFIX) for info in target.list()}


def pin(cfg: TargetConfig, archive: str) -> bool:
    """Pin `archive` (which must be at the target); False if it was already."""
    import re
    if not re.fullmatch(_PIN, archive + SUFFIX):
        raise ReplicatorError(f"{archive!r} cannot be pinned: pins are for names of letters, digits, '.', '_' and "
                              f"'-' (at most 250), as the default templates make them")
    with targets.build(cfg) as target:
        if archive not in {a.name for a in target.list()}:
            raise ReplicatorError(f"no archive {archive!r} at target {cfg.name} (`replicator list --target "
                                  f"{cfg.name}` shows them)")
    body = json.dumps({"archive": archive, "pinned_at": time.time()}).encode()
    with targets.build(_pins(cfg)) as pins:
        return targets.put_new(pins, archive + SUFFIX, body)


def unpin(cfg: TargetConfig, archive: str) -> None:
    if archive not in pinned(cfg):
        raise ReplicatorError(f"{archive!r} is not pinned at target {cfg.name}")
    with targets.build(_pins(cfg)) as pins:
        pins.delete(archive + SUFFIX)
