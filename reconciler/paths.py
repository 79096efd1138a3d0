"""Where a path really is: the one answer to "is this inside that folder"."""
from __future__ import annotations

import os
from pathlib import Path


def inside(path: str | Path, directory: str | Path) -> bool:
    """True when `path` is `directory` or below it, symbolic links resolved
    as far as the path exists (the rest taken as written): a link out of the
    folder is outside it."""
    resolved, base = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return resolved == base or base in resolved.parents
