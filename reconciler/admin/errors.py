"""What immudb's answers mean, as exceptions: the only place that reads
the text of immudb's errors. Callers catch these types, never a message."""
from __future__ import annotations

from reconciler.admin.schema import grpc
from reconciler.errors import ReplicatorError

RELOGIN_MESSAGES = ("please login", "invalid token", "token has expired", "session not found",
                    "not logged in", "no session")
_PERMANENT_MESSAGES = ("invalid user name or password", "permission denied", "not allowed",
                       "user is not", "already exists", "illegal arguments", "invalid database name",
                       "database does not exist", "not a replica", "is a replica", "can not be")


class ImmudbError(ReplicatorError):
    """A call to an immudb server failed. `temporary` says whether retrying
    later may help (unreachable, timeout) or the config or the world must
    change first (bad credentials, name conflict)."""

    def __init__(self, server: str, operation: str, detail: str, temporary: bool):
        self.server, self.operation, self.detail, self.temporary = server, operation, detail, temporary
        super().__init__(f"{server}: {operation} failed: {detail}")


class Unreachable(ImmudbError):
    """The server did not answer (down, refused, or slower than the timeout)."""


class AuthenticationFailed(ImmudbError):
    """The server refused the configured user name or password."""


class NotFound(ImmudbError):
    """The database or user does not exist."""


class AlreadyExists(ImmudbError):
    """A database of that name exists already."""


class AlreadyLoaded(ImmudbError):
    """LoadDatabase on a database that is loaded (someone else loaded it
    meanwhile: the goal is reached)."""


class DatabaseClosed(ImmudbError):
    """immudb answered "already closed": the database (or, before immudb
    1.11.1, any listing while one is unloaded) is unloaded."""


class NotLoaded(ImmudbError):
    """immudb answered "not loaded": the database is unloaded already."""


class ProofFailed(ImmudbError):
    """immudb's cryptographic proofs for an entry did not hold: the data is
    not the history the trusted state records."""



def error_from(where: str, username: str, timeout: float, operation: str, exc: grpc.RpcError) -> ImmudbError:
    """The ImmudbError that immudb's answer `exc` to `operation` means;
    `where` names the server, `username` the user it logged in as."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = (exc.details() if hasattr(exc, "details") else None) or str(code)
    low = detail.lower()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = f"no answer within {timeout:g}s"
        elif "connection refused" in low:
            detail = "connection refused"
        return Unreachable(where, operation, detail, temporary=True)
    if "invalid user name or password" in low:
        return AuthenticationFailed(where, operation, f"user '{username}' or its password refused",
                                    temporary=False)
    if "already exists" in low:
        return AlreadyExists(where, operation, detail, temporary=False)
    if "already loaded" in low:
        return AlreadyLoaded(where, operation, detail, temporary=False)
    permanent = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT) or any(
        m in low for m in _PERMANENT_MESSAGES)
    if "already closed" in low:
        return DatabaseClosed(where, operation, detail, temporary=not permanent)
    if "not loaded" in low:
        return NotLoaded(where, operation, detail, temporary=not permanent)
    if "does not exist" in low or "not found" in low:
        return NotFound(where, operation, detail, temporary=False)
    return ImmudbError(where, operation, detail, temporary=not permanent)
