"""Python client of the Snakepit bridge: typed, versioned session variables over gRPC.

Blocking::

    import grpc
    from snakepit_bridge import SessionContext, VariableType

    with grpc.insecure_channel("127.0.0.1:50051") as channel:
        ctx = SessionContext("my-session", channel)
        ctx.initialize()
        ctx.register_variable("temperature", VariableType.FLOAT, 0.7, constraints={"min": 0, "max": 2})
        ctx.update_variable("temperature", 0.9)
        print(ctx["temperature"], "temperature" in ctx)

asyncio (the same methods, as coroutines)::

    async with grpc.aio.insecure_channel("127.0.0.1:50051") as channel:
        ctx = SessionContext("my-session", channel)
        value = await ctx.get_variable("temperature")

Modules: :mod:`~snakepit_bridge.context` (``SessionContext``),
:mod:`~snakepit_bridge.errors` (the exception hierarchy),
:mod:`~snakepit_bridge.types` (records and ``VariableType``),
:mod:`~snakepit_bridge.values` (the wire encoding of values),
``snakepit_bridge._proto`` (generated stubs; ``generate_proto.py`` makes them).
"""

from .context import DEFAULT_TIMEOUT, SessionContext
from .errors import (
    AlreadyExistsError,
    AuthenticationError,
    BridgeError,
    BridgeTimeoutError,
    BridgeUnavailableError,
    NotFoundError,
    ResourceExhaustedError,
    SessionNotFoundError,
    ValidationError,
    VariableNotFoundError,
    VersionConflictError,
)
from .types import (
    NOT_APPLIED_ATOMIC,
    BatchGetResult,
    BatchUpdateResult,
    SessionInfo,
    VariableInfo,
    VariableSource,
    VariableType,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "NOT_APPLIED_ATOMIC",
    "AlreadyExistsError",
    "AuthenticationError",
    "BatchGetResult",
    "BatchUpdateResult",
    "BridgeError",
    "BridgeTimeoutError",
    "BridgeUnavailableError",
    "NotFoundError",
    "ResourceExhaustedError",
    "SessionContext",
    "SessionInfo",
    "SessionNotFoundError",
    "ValidationError",
    "VariableInfo",
    "VariableNotFoundError",
    "VariableSource",
    "VariableType",
    "VersionConflictError",
    "__version__",
]
