"""The package's exceptions, and the mapping from gRPC statuses to them.

Every failure of a :class:`~snakepit_bridge.SessionContext` call is a
:class:`BridgeError`. The server attaches the trailing metadata
``snakepit-error-kind`` to every error status; the class is chosen by that kind
first and by the status code when the kind is absent (an older or foreign
server)::

    BridgeError                      .code .message .kind
    ├── NotFoundError                NOT_FOUND
    │   ├── SessionNotFoundError     kind session_not_found
    │   └── VariableNotFoundError    kind variable_not_found (also a KeyError)
    ├── ValidationError              INVALID_ARGUMENT (also a ValueError)
    ├── AlreadyExistsError           ALREADY_EXISTS
    ├── VersionConflictError         FAILED_PRECONDITION, .current_version
    ├── ResourceExhaustedError       RESOURCE_EXHAUSTED, OUT_OF_RANGE
    ├── AuthenticationError          UNAUTHENTICATED: no token, or a wrong one
    │   └── PermissionDeniedError    PERMISSION_DENIED: e.g. a session token outside its session
    └── BridgeUnavailableError       UNAVAILABLE, closed channel
        └── BridgeTimeoutError       DEADLINE_EXCEEDED
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "BridgeError",
    "BridgeTimeoutError",
    "BridgeUnavailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SessionNotFoundError",
    "ValidationError",
    "VariableNotFoundError",
    "VersionConflictError",
    "ERROR_KIND_KEY",
    "CURRENT_VERSION_KEY",
    "error_from_rpc_error",
    "error_from_status",
]

#: Trailing-metadata key naming the kind of every error status the server sends.
ERROR_KIND_KEY = "snakepit-error-kind"
#: Trailing-metadata key carrying the variable's current version on a version conflict.
CURRENT_VERSION_KEY = "snakepit-current-version"


class BridgeError(Exception):
    """Base of every error this package raises for a failed bridge call.

    Attributes:
        code: the gRPC status code, or ``None`` for a failure detected before
            anything reached the server.
        message: the server's own text (the status details), meant for people.
        kind: the server's ``snakepit-error-kind`` (e.g. ``"invalid_value"``),
            or ``None`` when the status carried none.
    """

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.kind = kind

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        code = self.code.name if self.code is not None else None
        return f"{type(self).__name__}({self.message!r}, code={code}, kind={self.kind!r})"


class NotFoundError(BridgeError):
    """A session or variable does not exist (NOT_FOUND)."""


class SessionNotFoundError(NotFoundError):
    """The session does not exist: never created, cleaned up, or expired."""


class VariableNotFoundError(NotFoundError, KeyError):
    """No variable has that id or name in the session.

    It is also a ``KeyError``, so ``session["name"]`` behaves like a mapping.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ValidationError(BridgeError, ValueError):
    """A value, type, constraint or argument was refused (INVALID_ARGUMENT).

    ``.kind`` says which rule: ``invalid_value``, ``invalid_constraints``,
    ``invalid_type`` or ``invalid_argument``. Also raised, with code
    INVALID_ARGUMENT, for a value this client cannot encode at all.
    """


class AlreadyExistsError(BridgeError):
    """A variable with that name, or a session with that id, already exists."""


class VersionConflictError(BridgeError):
    """``expected_version`` did not match (FAILED_PRECONDITION); nothing changed.

    Attributes:
        current_version: the variable's version at the time of the refusal, when
            the server said so (``snakepit-current-version``), else ``None``.
    """

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        kind: str | None = None,
        current_version: int | None = None,
    ) -> None:
        super().__init__(message, code, kind)
        self.current_version = current_version


class ResourceExhaustedError(BridgeError):
    """A limit was hit (RESOURCE_EXHAUSTED), e.g. a message over the size limit.

    Also raised for OUT_OF_RANGE without a kind: tonic's own status for a
    request larger than the server's message limit.
    """


class AuthenticationError(BridgeError):
    """The server refused the caller (UNAUTHENTICATED, and PERMISSION_DENIED as a subclass).

    UNAUTHENTICATED: the call carried no token, or one the server does not
    accept (see :func:`~snakepit_bridge.connect`). Catching this class also
    catches :class:`PermissionDeniedError`.
    """


class PermissionDeniedError(AuthenticationError):
    """The token is valid but does not allow this call (PERMISSION_DENIED).

    E.g. a session token used for another session, or for a call that names
    no session (``Ping``, server reflection).
    """


class BridgeUnavailableError(BridgeError):
    """The server cannot be reached (UNAVAILABLE) or the channel is closed."""


class BridgeTimeoutError(BridgeUnavailableError):
    """The call's deadline passed before the server answered (DEADLINE_EXCEEDED)."""


_BY_KIND: dict[str, type[BridgeError]] = {
    "session_not_found": SessionNotFoundError,
    "variable_not_found": VariableNotFoundError,
    "invalid_value": ValidationError,
    "invalid_constraints": ValidationError,
    "invalid_type": ValidationError,
    "invalid_argument": ValidationError,
    "already_exists": AlreadyExistsError,
    "version_conflict": VersionConflictError,
    "resource_exhausted": ResourceExhaustedError,
}

_BY_CODE: dict[grpc.StatusCode, type[BridgeError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: VersionConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.OUT_OF_RANGE: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: BridgeUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: BridgeTimeoutError,
}


def error_from_status(
    code: grpc.StatusCode | None,
    details: str | None,
    trailing_metadata: Iterable[Any] | None = None,
) -> BridgeError:
    """Build the :class:`BridgeError` subclass for a failed call.

    The class comes from the ``snakepit-error-kind`` trailing metadata when
    present and known, otherwise from ``code``; an unknown combination gives a
    plain :class:`BridgeError`. ``trailing_metadata`` is what grpc gives: an
    iterable of ``(key, value)`` pairs (tuples or grpc's metadatum named
    tuples), values ``str`` or ``bytes``. Never raises.
    """
    metadata: dict[str, str] = {}
    for key, value in trailing_metadata or ():
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        metadata[str(key).lower()] = text

    kind = metadata.get(ERROR_KIND_KEY) or None
    cls = _BY_KIND.get(kind) if kind else None
    if cls is None:
        cls = _BY_CODE.get(code, BridgeError) if code is not None else BridgeError
    message = details or (f"bridge call failed with {code.name}" if code is not None else "bridge call failed")

    if cls is VersionConflictError:
        current: int | None = None
        raw = metadata.get(CURRENT_VERSION_KEY)
        if raw is not None:
            try:
                current = int(raw)
            except ValueError:
                current = None
        return VersionConflictError(message, code, kind, current_version=current)
    return cls(message, code, kind)


def error_from_rpc_error(exc: grpc.RpcError) -> BridgeError:
    """The :class:`BridgeError` for a failed call, from the ``grpc.RpcError`` grpc raised.

    Works for a blocking ``grpc.Call`` error and for ``grpc.aio.AioRpcError``
    alike (code, details and trailing metadata are read when present). Never raises.
    """
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
    return error_from_status(code, details, trailing)
