"""Where a database's journal lives: segments on a backup target, under
`journal/<database>/` beside the target's archives, written through the
target interface (whole or absent), and how they chain (pure)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from reconciler import targets
from reconciler.config.model import TargetConfig
from reconciler.encryption import Sealing, load_recipients
from reconciler.journal.format import SUFFIX, SegmentInfo, SegmentName, parse_name, read_header

SEGMENT_TEMPLATE = "{segment}" + SUFFIX
# a segment's name without its suffix (format.py's _NAME): the targets list only names their template matches
targets.register_placeholder("{segment}", r"\d{20}-\d{20}-[0-9a-f]{8}-[0-9a-f]{8}")


def writing_sealing(encryption) -> Sealing:
    """What the journal's objects (segments, base records) are written
    with: encrypted to backup.encryption's recipients, read now, or as
    they are when encryption is off. Raises EncryptionError when it is on
    and cannot be applied: nothing is then written in the clear."""
    if not encryption.enabled:
        return Sealing()
    return Sealing(load_recipients(encryption.recipients,
                                   [encryption.recipients_file] if encryption.recipients_file else []))


def journal_target(cfg: TargetConfig, database: str) -> TargetConfig:
    """The target `cfg`, its path pointing at database's journal folder."""
    return under(cfg, f"journal/{database}/{SEGMENT_TEMPLATE}")


def journal_root(cfg: TargetConfig) -> TargetConfig:
    """The target `cfg`, its path pointing at the journal's folder (whose
    folders are the databases)."""
    return under(cfg, f"journal/{SEGMENT_TEMPLATE}")


def under(cfg: TargetConfig, path: str) -> TargetConfig:
    directory = cfg.path.rpartition("/")[0]
    return TargetConfig(name=cfg.name, kind=cfg.kind, path=f"{directory}/{path}" if directory else path,
                        options=cfg.options)


class JournalStore:
    """One database's segments on one target. Not thread-safe: one user at a
    time (the journal's uploader, or a restore)."""

    def __init__(self, cfg: TargetConfig, database: str, sealing: Sealing | None = None):
        self.database = database
        self.sealing = sealing or Sealing()  # segments encrypted to its recipients, read with its identities
        self.origin = cfg  # the target as configured (its archives are the journal's snapshot bases)
        self.cfg = journal_target(cfg, database)
        self.target = targets.build(self.cfg)

    @property
    def name(self) -> str:
        return self.target.name

    def segments(self) -> list[SegmentName]:
        """Every segment on the target, by first transaction."""
        return [s for s, _ in self.segments_with_times()]

    def segments_with_times(self) -> list[tuple[SegmentName, float]]:
        """Every segment and when it was written, by first transaction."""
        found = ((parse_name(info.name), info.modified) for info in self.target.list())
        return sorted(((s, t) for s, t in found if s is not None), key=lambda p: (p[0].first_tx, p[0].last_tx,
                                                                                  p[0].name))

    def current_tip(self) -> tuple[list[SegmentName], SegmentName | None]:
        """Every segment, and the end of the history written last: from the
        segment uploaded last, forward along the chain. (A database created
        again under the same name starts another history beside the old
        one, which may be longer; the newest upload tells them apart.)"""
        timed = self.segments_with_times()
        segments = [s for s, _ in timed]
        if not timed:
            return segments, None
        when = {s.name: t for s, t in timed}
        following: dict[tuple[int, str], list[SegmentName]] = {}
        for s in segments:
            following.setdefault((s.first_tx - 1, s.prev), []).append(s)
        tip = max(segments, key=lambda s: (when[s.name], s.last_tx))
        seen = set()
        while tip.name not in seen:
            seen.add(tip.name)
            after = following.get((tip.last_tx, tip.last))
            if not after:
                break
            tip = max(after, key=lambda s: (s.last_tx, when[s.name]))
        return segments, tip

    def put(self, name: str, blob: bytes) -> bool:
        """Upload one segment, atomically. False when it was there already
        (an upload that committed before a crash): a segment's name holds
        its range and hashes, so the same name is the same segment."""
        blob = self.sealing.seal(blob)  # before anything is opened: never a plaintext segment by mistake
        return targets.put_new(self.target, name, blob)

    def open(self, name: str) -> BinaryIO:
        """Segment `name`'s bytes, decrypted when they are encrypted. Raises
        EncryptionError when they are and this store has no identity."""
        raw = self.target.read(name)
        try:
            return self.sealing.opened(raw, f"segment {name}")
        except BaseException:
            raw.close()
            raise

    def header(self, name: str) -> SegmentInfo:
        with self.open(name) as stream:
            return read_header(stream)

    def delete(self, name: str) -> None:
        self.target.delete(name)

    def archives(self) -> set[str]:
        """The names of the archives at the target (snapshot bases count
        only while their archive is there)."""
        with targets.build(self.origin) as target:
            return {a.name for a in target.list()}

    def cleanup_partial(self) -> list[str]:
        return self.target.cleanup_partial()

    def close(self) -> None:
        self.target.close()

    def __enter__(self) -> JournalStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Chain:
    """Segments that follow each other without a hole, oldest first, and
    what lies before the first of them."""

    segments: tuple[SegmentName, ...]
    hole: tuple[int, int] | None       # transactions missing before the chain (first, last), if any
    before_hole: SegmentName | None    # the segment that ends just before the hole, if any

    @property
    def first_tx(self) -> int:
        return self.segments[0].first_tx if self.segments else 0

    @property
    def last_tx(self) -> int:
        return self.segments[-1].last_tx if self.segments else 0


def chain_to(segments: list[SegmentName], tip: SegmentName) -> Chain:
    """The chain that ends at `tip`: each segment's predecessor ends at the
    transaction before its first and with the Alh its name says came before.
    Where no predecessor is found the chain starts; the hole is what is
    missing between it and the newest older segment (which may start
    another history)."""
    by_end: dict[tuple[int, str], SegmentName] = {}
    for s in segments:
        by_end.setdefault((s.last_tx, s.last), s)
    chain = [tip]
    while chain[0].first_tx > 1:
        before = by_end.get((chain[0].first_tx - 1, chain[0].prev))
        if before is None:
            break
        chain.insert(0, before)
    first = chain[0].first_tx
    if first == 1:
        return Chain(tuple(chain), None, None)
    older = [s for s in segments if s.last_tx < first]
    before_hole = max(older, key=lambda s: (s.last_tx, s.name)) if older else None
    start = before_hole.last_tx + 1 if before_hole else 1
    return Chain(tuple(chain), (start, first - 1), before_hole)


def newest(segments: list[SegmentName]) -> SegmentName | None:
    """The segment that ends last (the journal's tip)."""
    return max(segments, key=lambda s: (s.last_tx, s.name)) if segments else None
