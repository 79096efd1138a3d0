"""immudb's protobuf messages and gRPC, imported the way this tool needs:
immudb-py's generated messages without its client, and `google` as the
namespace package it is meant to be. Every module of reconciler.admin
takes grpc and the messages from here."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _namespace_google() -> None:
    """Let `google` be the namespace package it is meant to be. immudb-py
    depends on an unrelated PyPI package, `google-api`, whose
    `google/__init__.py` imports its web framework (appier): every command
    would spend ~50 ms running it (and see a DeprecationWarning) before
    `google.protobuf` could load. The folders searched stay the same."""
    if "google" in sys.modules:
        return
    spec = importlib.util.find_spec("google")
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return  # absent, or already a namespace package
    module = types.ModuleType("google")
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules["google"] = module


def _immudb_schema() -> types.ModuleType:
    """immudb-py's generated messages (`immudb.grpc.schema_pb2`), without
    running `immudb/__init__.py`, which imports its whole client (~80 ms
    more). Registered under its own name, so a later `import immudb` (the
    tests use its client) shares it."""
    name = "immudb.grpc.schema_pb2"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("immudb")
    if package is None or not package.submodule_search_locations:
        raise ImportError("immudb-py is not installed (pip install immudb-py)")
    path = Path(package.submodule_search_locations[0]) / "grpc" / "schema_pb2.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module




_namespace_google()
import grpc  # noqa: E402
from google.protobuf import empty_pb2, message_factory  # noqa: E402

pb = _immudb_schema()
SERVICE = pb.DESCRIPTOR.services_by_name["ImmuService"]

__all__ = ["SERVICE", "empty_pb2", "grpc", "message_factory", "pb"]
