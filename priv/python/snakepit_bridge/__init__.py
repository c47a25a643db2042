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

asyncio (``AsyncSessionContext``: the same methods, as coroutines)::

    async with grpc.aio.insecure_channel("127.0.0.1:50051") as channel:
        ctx = AsyncSessionContext("my-session", channel)
        value = await ctx.get_variable("temperature")

Connecting with the server's token and TLS (``connect`` / ``connect_async``;
address, token and root certificates default to ``$SNAKEPIT_BRIDGE_ADDRESS``,
``$SNAKEPIT_BRIDGE_TOKEN`` and ``$SNAKEPIT_BRIDGE_ROOT_CERTIFICATES``)::

    import os
    from snakepit_bridge import AsyncSessionContext, SessionContext, connect, connect_async

    with connect() as channel:
        ctx = SessionContext(os.environ["SNAKEPIT_BRIDGE_SESSION"], channel)

    async with connect_async("bridge.internal:50051", token=token, root_certificates=ca_pem) as channel:
        ctx = AsyncSessionContext("my-session", channel)

Watching (pushed by the server; the blocking form is ``for update in ...`` /
``with ctx.watch_variables([...]) as watch:``)::

    async for update in ctx.watch_variables(["temperature", "strategy"], reconnect=True):
        print(update["name"], update["value"], update["version"], update["source"])

Modules: :mod:`~snakepit_bridge.context` (``SessionContext``, ``AsyncSessionContext``),
:mod:`~snakepit_bridge.channels` (``connect``, ``connect_async``: channels
carrying the token, over plaintext or TLS),
:mod:`~snakepit_bridge.watch` (``VariableUpdate``, the watch iterators, and
what the server and this client guarantee about watches),
:mod:`~snakepit_bridge.errors` (the exception hierarchy),
:mod:`~snakepit_bridge.types` (records and ``VariableType``),
:mod:`~snakepit_bridge.values` (the wire encoding of values),
``snakepit_bridge._plans`` (the requests and responses of every call, shared
by both classes), ``snakepit_bridge._proto`` (generated stubs;
``generate_proto.py`` makes them).
"""

from .channels import connect, connect_async
from .context import DEFAULT_TIMEOUT, AsyncSessionContext, SessionContext
from .errors import (
    AlreadyExistsError,
    AuthenticationError,
    BridgeError,
    BridgeTimeoutError,
    BridgeUnavailableError,
    NotFoundError,
    PermissionDeniedError,
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
from .watch import (
    DEFAULT_BACKOFF,
    AsyncVariableWatch,
    UpdateType,
    VariableUpdate,
    VariableWatch,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_TIMEOUT",
    "NOT_APPLIED_ATOMIC",
    "AlreadyExistsError",
    "AsyncSessionContext",
    "AsyncVariableWatch",
    "AuthenticationError",
    "BatchGetResult",
    "BatchUpdateResult",
    "BridgeError",
    "BridgeTimeoutError",
    "BridgeUnavailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SessionContext",
    "SessionInfo",
    "SessionNotFoundError",
    "UpdateType",
    "ValidationError",
    "VariableInfo",
    "VariableNotFoundError",
    "VariableSource",
    "VariableType",
    "VariableUpdate",
    "VariableWatch",
    "VersionConflictError",
    "__version__",
    "connect",
    "connect_async",
]
