"""One immudb server's channel and session: connecting, logging in, the
token per call, one RPC with its timeout and retries. The operations
(operations.py) and the export stream (export.py) call through it."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from reconciler.admin.errors import RELOGIN_MESSAGES, ImmudbError, error_from
from reconciler.admin.schema import SERVICE, grpc, message_factory, pb
from reconciler.config.model import ServerConfig
from reconciler.log import event
from reconciler.secret import Secret

log = logging.getLogger(__name__)

S = TypeVar("S", bound="Session")


class Session:
    """A session on one immudb server. Thread-safe."""

    def __init__(self, name: str, host: str, port: int, username: str, password: Secret,
                 timeout: float = 10.0):
        self.name = name
        self.address = f"{host}:{port}"
        self.username = username
        self._password = password
        self.timeout = timeout
        self._token: str | None = None
        self._lock = threading.Lock()
        self._warned = False
        self.calls = 0  # RPCs sent, for tests and benchmarks
        self.logins = 0
        self._connect()

    def _connect(self) -> None:
        self.channel = grpc.insecure_channel(self.address, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 0),
            # a channel of its own: with gRPC's global subchannel pool a fresh channel would
            # inherit the old one's reconnect backoff and fail just the same
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ])
        self._methods: dict[str, Callable] = {}

    def _reconnect(self) -> None:
        """A fresh channel. After a server restart, gRPC's channel sits in
        reconnect backoff and fails calls at once for up to minutes; a new
        channel connects on the first call."""
        old = self.channel
        self._connect()
        old.close()

    @classmethod
    def from_config(cls: type[S], name: str, server: ServerConfig) -> S:
        return cls(name, server.host, server.port, server.username, server.password, server.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name} {self.username}@{self.address})"

    # ------------------------------------------------------------------
    # plumbing

    def error(self, operation: str, exc: grpc.RpcError) -> ImmudbError:
        """immudb's answer `exc` to `operation`, as the ImmudbError it means."""
        return error_from(f"{self.name} ({self.address})", self.username, self.timeout, operation, exc)

    def _login(self) -> str:
        request = pb.LoginRequest(user=self.username.encode(), password=self._password.reveal().encode())
        self.logins += 1
        response = self._unary("login", "Login", request, None)
        if response.warning and not self._warned:
            self._warned = True
            event(log, "login_warning", logging.WARNING, server=self.name,
                  message=response.warning.decode(errors="replace"))
        return response.token

    def _token_for_call(self, stale: str | None) -> str:
        with self._lock:
            if self._token is None or self._token == stale:
                self._token = self._login()
            return self._token

    def _method(self, name: str) -> Callable:
        """ImmuService's method `name` on the current channel, as the
        generated stub (schema_pb2_grpc) would build it. The response
        classes come from the service's descriptor, not from attributes of
        schema_pb2, which immudb-py's own login() overwrites."""
        method = self._methods.get(name)
        if method is None:
            descriptor = SERVICE.methods_by_name[name]
            method = self.channel.unary_unary(
                f"/{SERVICE.full_name}/{name}",
                request_serializer=message_factory.GetMessageClass(descriptor.input_type).SerializeToString,
                response_deserializer=message_factory.GetMessageClass(descriptor.output_type).FromString)
            self._methods[name] = method
        return method

    def _unary(self, operation: str, method: str, request: Any, token: str | None) -> Any:
        """One RPC; when the server refuses the connection, once more on a
        fresh channel (see _reconnect). Raises grpc.RpcError."""
        metadata = (("authorization", "Bearer " + token),) if token else None
        for attempt in (1, 2):
            self.calls += 1
            try:
                return self._method(method)(request, timeout=self.timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if attempt == 2 or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    if method == "Login":
                        raise self.error(operation, exc) from None
                    raise
                self._reconnect()
        raise AssertionError("unreachable")

    def call(self, operation: str, method: str, request: Any, token: str | None = None) -> Any:
        """One RPC with the session token (or `token`); on an expired token,
        log in again once and retry."""
        for attempt in (1, 2):
            use = token or self._token_for_call(None)
            try:
                return self._unary(operation, method, request, use)
            except grpc.RpcError as exc:
                detail = (exc.details() or "").lower() if hasattr(exc, "details") else ""
                relogin = exc.code() == grpc.StatusCode.UNAUTHENTICATED or any(m in detail for m in RELOGIN_MESSAGES)
                if attempt == 1 and relogin and token is None:
                    event(log, "relogin", server=self.name, reason=detail or str(exc.code()))
                    self._token_for_call(use)
                    continue
                raise self.error(operation, exc) from None
        raise AssertionError("unreachable")

    def database_token(self, database: str) -> str:
        """A token scoped to `database` (immudb's UseDatabase), for calls such
        as CurrentState that act on the session's current database."""
        return self.call(f"use database {database}", "UseDatabase", pb.Database(databaseName=database)).token

