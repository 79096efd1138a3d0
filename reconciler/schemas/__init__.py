"""The JSON Schemas and the OpenAPI description, shipped inside the package
(package data), so that a wheel, an editable install and a plain checkout
all find them the same way. The repository's top-level `schemas/` is a
link to this folder."""
from __future__ import annotations

import json
from functools import cache
from importlib import resources


def text(name: str) -> str:
    """The content of schema file `name` (e.g. `openapi.yaml`)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def load(name: str) -> dict:
    """A JSON Schema by file name, parsed once per process."""
    return json.loads(text(name))
