"""``SessionContext``: one session of the bridge, over a blocking or an asyncio channel.

Layout
    Each public method is written once. Its logic is a *plan*: a generator that
    builds requests, yields them as :class:`_Rpc` values, receives the responses
    (or has the call's :class:`~snakepit_bridge.errors.BridgeError` thrown into
    it) and returns the parsed result. Two small drivers run plans:
    :meth:`SessionContext._run_blocking` for a ``grpc.Channel`` and
    :meth:`SessionContext._run_async` (a coroutine) for a ``grpc.aio.Channel``.
    The ``@overload`` stubs above each method only tell type checkers which
    mode returns what.

Type cache
    Setting a value needs the variable's type (the ``type_url`` must name it),
    so the context remembers ``identifier -> type`` (and id <-> name) from every
    register, get, batch get and list response, and fetches a type it does not
    know with one ``GetVariable``. Types never change; an entry goes on delete.
    A batch get reads a variable's name and type only when the cache does not
    already hold that variable (same id) under the identifier asked.
    If someone else deletes and re-registers a name with another type, the
    first refused set re-reads the type once and retries.

Watches
    :meth:`SessionContext.watch_variables` is a plan too, one that also yields
    stream operations; :class:`~snakepit_bridge.watch.VariableWatch` and
    :class:`~snakepit_bridge.watch.AsyncVariableWatch` drive it. While a watch
    is live, the values it delivers are served by ``get_variable`` without an
    RPC (see :mod:`snakepit_bridge.watch`, "The local value cache").
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, overload

import grpc
import grpc.aio
from google.protobuf import message as _message
from google.protobuf import timestamp_pb2

from ._proto import snakepit_bridge_pb2 as pb2
from ._proto import snakepit_bridge_pb2_grpc as pb2_grpc
from .errors import (
    BridgeError,
    BridgeUnavailableError,
    ValidationError,
    VariableNotFoundError,
    error_from_rpc_error,
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
from .values import (
    decode_batch_values,
    decode_variable_value,
    encode_compact,
    encode_json,
    encode_parts,
)
from .watch import (
    _READ,
    DEFAULT_BACKOFF,
    AsyncVariableWatch,
    VariableUpdate,
    VariableWatch,
    _Deferred,
    _Emit,
    _OpenStream,
    _Sleep,
    _WatchCache,
    _WatchHolder,
    _WatchPlan,
    _WatchState,
)

__all__ = ["DEFAULT_TIMEOUT", "SessionContext"]

#: Seconds a call may take before it fails with BridgeTimeoutError.
DEFAULT_TIMEOUT = 30.0

_T = TypeVar("_T")
_ChannelT = TypeVar("_ChannelT", grpc.Channel, grpc.aio.Channel)

_MISSING: Any = object()
_SOURCES: dict[int, VariableSource] = {
    pb2.Variable.ELIXIR: "elixir",
    pb2.Variable.PYTHON: "python",
}


@dataclass(frozen=True)
class _Rpc:
    """One unary call a plan asks its driver to make."""

    method: str  # attribute name on BridgeServiceStub, e.g. "GetVariable"
    request: _message.Message


_Plan = Generator[_Rpc, Any, _T]


def _timestamp(ts: timestamp_pb2.Timestamp, present: bool) -> datetime.datetime | None:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=datetime.timezone.utc)


def _update_timestamp(message: pb2.VariableUpdate) -> datetime.datetime | None:
    return _timestamp(message.timestamp, message.HasField("timestamp"))


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _variable_info(var: pb2.Variable) -> VariableInfo:
    try:
        constraints = json.loads(var.constraints_json) if var.constraints_json else {}
    except ValueError as exc:
        raise BridgeError(f"server sent malformed constraints for {var.name!r}: {exc}") from exc
    return VariableInfo(
        id=var.id,
        name=var.name,
        type=VariableType.coerce(var.type),
        value=decode_variable_value(var),
        version=int(var.version),
        source=_SOURCES.get(var.source, "elixir"),
        metadata=dict(var.metadata),
        constraints=constraints if isinstance(constraints, dict) else {"value": constraints},
        last_updated_at=_timestamp(var.last_updated_at, var.HasField("last_updated_at")),
    )


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _check(response: Any, what: str) -> None:
    """Raise for an old-style refusal: ``success = false`` with ``error_message``."""
    if not response.success:
        raise BridgeError(response.error_message or f"{what} failed without a message")


class SessionContext(Generic[_ChannelT]):
    """One session of the Snakepit bridge, seen from Python.

    ``SessionContext(session_id, channel)`` works with either kind of channel:

    - a blocking ``grpc.Channel`` (``grpc.insecure_channel(addr)``): every method
      blocks and returns its result;
    - a ``grpc.aio.Channel`` (``grpc.aio.insecure_channel(addr)``): every method
      returns an awaitable (``await ctx.get_variable("x")``).

    Mapping sugar: on a blocking context ``ctx["name"]`` is ``get_variable`` (a
    missing name raises :class:`VariableNotFoundError`, which is a ``KeyError``)
    and ``"name" in ctx`` is ``has_variable``. On an aio context ``ctx["name"]``
    returns an awaitable (``await ctx["name"]``), and ``in`` raises ``TypeError``
    because ``in`` cannot await: use ``await ctx.has_variable(name)``.

    The context does not own the channel: close it yourself. It is not a
    session by itself either: :meth:`initialize` creates the session on the
    server (or attach to one created elsewhere, e.g. by Elixir) and
    :meth:`cleanup` removes it.

    Every method raises a :class:`~snakepit_bridge.errors.BridgeError`
    subclass on failure; the ones below are the usual ones, and any call can
    also raise :class:`BridgeUnavailableError` (server gone, channel closed) or
    :class:`BridgeTimeoutError` (``timeout`` passed).

    Args:
        session_id: the session's id (non-empty UTF-8, at most 256 bytes, no
            control characters; the server checks).
        channel: a ``grpc.Channel`` or ``grpc.aio.Channel``.
        timeout: per-call deadline in seconds (``None``: no deadline).

    Raises:
        TypeError: ``channel`` is neither kind of gRPC channel, or
            ``session_id`` is not a string.
    """

    # Not iterable, even though it has __getitem__ (which would otherwise make
    # iter() try ctx[0], ctx[1], ...).
    __iter__: ClassVar[None] = None

    def __init__(
        self,
        session_id: str,
        channel: _ChannelT,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(session_id, str):
            raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
        self._is_async: bool
        if isinstance(channel, grpc.aio.Channel):
            self._is_async = True
        elif isinstance(channel, grpc.Channel):
            self._is_async = False
        else:
            raise TypeError(f"channel must be a grpc.Channel or grpc.aio.Channel, not {type(channel).__name__}")
        self._session_id = session_id
        self._channel: _ChannelT = channel
        # The generated stub is untyped; calls go through _invoke_*, typed by plans.
        self._stub: Any = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        # identifier (id or name) -> type name; id <-> name. See "Type cache".
        self._types: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        # (ids, types) of the last values_only batch learned, while nothing else
        # changed the type cache since: the next equal batch has nothing to teach.
        self._batch_learned: tuple[list[str], list[str]] | None = None
        # Values delivered by live watches; see snakepit_bridge.watch.
        self._watch_cache = _WatchCache()

    # ------------------------------------------------------------------ basics

    @property
    def session_id(self) -> str:
        """The session this context talks to."""
        return self._session_id

    @property
    def channel(self) -> _ChannelT:
        """The channel given at construction (not owned: the caller closes it)."""
        return self._channel

    @property
    def is_async(self) -> bool:
        """``True`` for a ``grpc.aio`` channel (methods return awaitables)."""
        return self._is_async

    def __repr__(self) -> str:
        mode = "aio" if self._is_async else "blocking"
        return f"SessionContext({self._session_id!r}, {mode})"

    # ------------------------------------------------------------------ drivers

    def _run(self, plan: _Plan[_T]) -> Any:
        return self._run_async(plan) if self._is_async else self._run_blocking(plan)

    def _run_blocking(self, plan: _Plan[_T]) -> _T:
        try:
            rpc = next(plan)
            while True:
                try:
                    response = self._invoke_blocking(rpc)
                except BridgeError as err:
                    rpc = plan.throw(err)
                else:
                    rpc = plan.send(response)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _run_async(self, plan: _Plan[_T]) -> _T:
        try:
            rpc = next(plan)
            while True:
                try:
                    response = await self._invoke_async(rpc)
                except BridgeError as err:
                    rpc = plan.throw(err)
                else:
                    rpc = plan.send(response)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _invoke_blocking(self, rpc: _Rpc) -> Any:
        method = getattr(self._stub, rpc.method)
        try:
            return method(rpc.request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _translate(exc) from exc
        except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
            if "closed channel" in str(exc):
                raise BridgeUnavailableError(f"the gRPC channel is closed ({exc})") from exc
            raise

    async def _invoke_async(self, rpc: _Rpc) -> Any:
        method = getattr(self._stub, rpc.method)
        try:
            return await method(rpc.request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _translate(exc) from exc
        except grpc.aio.UsageError as exc:  # e.g. the channel is closed
            raise BridgeUnavailableError(f"the gRPC channel cannot be used: {exc}") from exc

    # ------------------------------------------------------------------ type cache

    def _remember(self, var: pb2.Variable, *asked: str) -> VariableInfo:
        info = _variable_info(var)
        self._learn(var, *asked)
        return info

    def _learn(self, var: pb2.Variable, *asked: str) -> None:
        """Put a variable the server sent into the type cache (under its id, its name and ``asked``)."""
        self._learn_type(var.id, var.name, var.type, *asked)

    def _learn_type(self, var_id: str, name: str, var_type: str, *asked: str) -> None:
        types = self._types
        aliases = self._aliases
        changed = False
        for key in (var_id, name, *asked):
            if key and types.get(key) != var_type:
                types[key] = var_type
                changed = True
        if var_id and name and (aliases.get(var_id) != name or aliases.get(name) != var_id):
            aliases[var_id] = name
            aliases[name] = var_id
            changed = True
        if changed:
            self._batch_learned = None

    def _forget(self, identifier: str) -> None:
        self._batch_learned = None
        for key in (identifier, self._aliases.pop(identifier, None)):
            if key:
                self._types.pop(key, None)
                self._aliases.pop(key, None)

    def _names_of(self, identifier: str) -> tuple[str, ...]:
        """The identifier and, when known, its alias (id for a name, name for an id)."""
        alias = self._aliases.get(identifier)
        return (identifier, alias) if alias else (identifier,)

    def _fetch_type(self, identifier: str) -> _Plan[str]:
        request = pb2.GetVariableRequest(session_id=self._session_id, variable_identifier=identifier)
        try:
            response = yield _Rpc("GetVariable", request)
        except VariableNotFoundError:
            self._forget(identifier)
            raise
        self._learn(response.variable, identifier)
        return str(response.variable.type)

    # ------------------------------------------------------------------ session

    @overload
    def ping(self: SessionContext[grpc.aio.Channel], message: str = "") -> Awaitable[str]: ...
    @overload
    def ping(self: SessionContext[grpc.Channel], message: str = "") -> str: ...
    def ping(self, message: str = "") -> Any:
        """Check the server is alive; returns ``message`` as the server echoed it.

        Raises:
            BridgeUnavailableError: the server cannot be reached.
        """
        return self._run(self._ping(message))

    def _ping(self, message: str) -> _Plan[str]:
        response = yield _Rpc("Ping", pb2.PingRequest(message=message))
        return str(response.message)

    @overload
    def initialize(
        self: SessionContext[grpc.aio.Channel], metadata: Mapping[str, str] | None = None
    ) -> Awaitable[dict[str, VariableInfo]]: ...
    @overload
    def initialize(
        self: SessionContext[grpc.Channel], metadata: Mapping[str, str] | None = None
    ) -> dict[str, VariableInfo]: ...
    def initialize(self, metadata: Mapping[str, str] | None = None) -> Any:
        """Create this session on the server (``InitializeSession``).

        Returns the session's initial variables by name (empty for a new session).

        Raises:
            AlreadyExistsError: a session with this id already exists.
            ValidationError: the session id is not acceptable (the server's message says why).
        """
        return self._run(self._initialize(metadata))

    def _initialize(self, metadata: Mapping[str, str] | None) -> _Plan[dict[str, VariableInfo]]:
        request = pb2.InitializeSessionRequest(session_id=self._session_id, metadata=dict(metadata or {}))
        response = yield _Rpc("InitializeSession", request)
        _check(response, "InitializeSession")
        return {name: self._remember(var, name) for name, var in response.initial_variables.items()}

    @overload
    def cleanup(self: SessionContext[grpc.aio.Channel], force: bool = False) -> Awaitable[int]: ...
    @overload
    def cleanup(self: SessionContext[grpc.Channel], force: bool = False) -> int: ...
    def cleanup(self, force: bool = False) -> Any:
        """Remove the session and its variables (``CleanupSession``); returns how many variables went.

        Idempotent: cleaning up an unknown session returns 0. Watchers of the
        session get ``session_closed``.

        Raises:
            BridgeUnavailableError: the server cannot be reached.
        """
        return self._run(self._cleanup(force))

    def _cleanup(self, force: bool) -> _Plan[int]:
        request = pb2.CleanupSessionRequest(session_id=self._session_id, force=force)
        response = yield _Rpc("CleanupSession", request)
        self._types.clear()
        self._aliases.clear()
        self._batch_learned = None
        self._watch_cache.clear()
        return int(response.resources_cleaned)

    @overload
    def get_session(self: SessionContext[grpc.aio.Channel]) -> Awaitable[SessionInfo]: ...
    @overload
    def get_session(self: SessionContext[grpc.Channel]) -> SessionInfo: ...
    def get_session(self) -> Any:
        """Describe the session: id, metadata, created_at (UTC datetime), variable_count, watcher_count.

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._get_session())

    def _get_session(self) -> _Plan[SessionInfo]:
        response = yield _Rpc("GetSession", pb2.GetSessionRequest(session_id=self._session_id))
        return SessionInfo(
            session_id=response.session_id,
            metadata=dict(response.metadata),
            created_at=_timestamp(response.created_at, response.HasField("created_at")),
            variable_count=int(response.variable_count),
            watcher_count=int(response.watcher_count),
        )

    @overload
    def heartbeat(self: SessionContext[grpc.aio.Channel]) -> Awaitable[bool]: ...
    @overload
    def heartbeat(self: SessionContext[grpc.Channel]) -> bool: ...
    def heartbeat(self) -> Any:
        """Keep the session alive; returns ``False`` if it no longer exists (never raises for that).

        Raises:
            BridgeUnavailableError: the server cannot be reached.
        """
        return self._run(self._heartbeat())

    def _heartbeat(self) -> _Plan[bool]:
        request = pb2.HeartbeatRequest(session_id=self._session_id, client_time=_now())
        response = yield _Rpc("Heartbeat", request)
        return bool(response.session_valid)

    # ------------------------------------------------------------------ variables

    @overload
    def register_variable(
        self: SessionContext[grpc.aio.Channel],
        name: str,
        var_type: VariableType | str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Awaitable[str]: ...
    @overload
    def register_variable(
        self: SessionContext[grpc.Channel],
        name: str,
        var_type: VariableType | str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str: ...
    def register_variable(
        self,
        name: str,
        var_type: VariableType | str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Create a variable; returns its id (``var_<name>_<suffix>``). Its version is 1.

        ``constraints`` depend on the type: ``min``/``max`` (float, integer),
        ``min_length``/``max_length``/``pattern``/``enum`` (string),
        ``choices`` (choice), ``allowed_modules`` (module), ``dimensions``
        (embedding), ``shape`` (tensor).

        Raises:
            AlreadyExistsError: the session already has a variable of that name.
            ValidationError: unknown type, bad constraints, or a value that
                breaks the type or the constraints (``.kind`` says which).
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._register_variable(name, var_type, initial_value, constraints, metadata))

    def _register_variable(
        self,
        name: str,
        var_type: VariableType | str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
    ) -> _Plan[str]:
        type_name = str(VariableType.coerce(var_type))
        url, payload, binary = encode_parts(type_name, initial_value)
        request = pb2.RegisterVariableRequest(
            session_id=self._session_id,
            name=name,
            type=type_name,
            constraints_json=encode_json(dict(constraints)).decode("utf-8") if constraints else "",
            metadata=dict(metadata or {}),
            initial_binary_value=binary or b"",
        )
        request.initial_value.type_url = url
        request.initial_value.value = payload
        response = yield _Rpc("RegisterVariable", request)
        _check(response, "RegisterVariable")
        var_id = str(response.variable_id)
        self._types[name] = type_name
        if var_id:
            self._types[var_id] = type_name
            self._aliases[var_id] = name
            self._aliases[name] = var_id
        return var_id

    @overload
    def get_variable(self: SessionContext[grpc.aio.Channel], identifier: str, default: Any = ...) -> Awaitable[Any]: ...
    @overload
    def get_variable(self: SessionContext[grpc.Channel], identifier: str, default: Any = ...) -> Any: ...
    def get_variable(self, identifier: str, default: Any = _MISSING) -> Any:
        """The current value of a variable, by id or name.

        With ``default`` given, a missing variable returns ``default`` instead of raising.
        While a live watch of this context covers the variable, the value is
        served locally, without an RPC (see :meth:`watch_variables`).

        Raises:
            VariableNotFoundError: no such variable (and no ``default``).
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._get_value(identifier, default))

    def _get_value(self, identifier: str, default: Any) -> _Plan[Any]:
        try:
            var = yield from self._get_message(identifier)
        except VariableNotFoundError:
            if default is _MISSING:
                raise
            return default
        return decode_variable_value(var)

    @overload
    def get_variable_info(self: SessionContext[grpc.aio.Channel], identifier: str) -> Awaitable[VariableInfo]: ...
    @overload
    def get_variable_info(self: SessionContext[grpc.Channel], identifier: str) -> VariableInfo: ...
    def get_variable_info(self, identifier: str) -> Any:
        """Everything about a variable: id, name, type, value, version, source, metadata, constraints, last_updated_at.

        Raises:
            VariableNotFoundError: no such variable.
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._get_info(identifier))

    def _get_info(self, identifier: str) -> _Plan[VariableInfo]:
        var = yield from self._get_message(identifier)
        return _variable_info(var)

    def _get_message(self, identifier: str) -> _Plan[pb2.Variable]:
        """The variable as a live watch last delivered it, else as ``GetVariable`` reads it (type cache refreshed)."""
        cached = self._watch_cache.lookup(identifier)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        request = pb2.GetVariableRequest(session_id=self._session_id, variable_identifier=identifier)
        try:
            response = yield _Rpc("GetVariable", request)
        except VariableNotFoundError:
            self._forget(identifier)
            raise
        var: pb2.Variable = response.variable
        self._learn(var, identifier)
        return var

    @overload
    def update_variable(
        self: SessionContext[grpc.aio.Channel],
        identifier: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> Awaitable[int]: ...
    @overload
    def update_variable(
        self: SessionContext[grpc.Channel],
        identifier: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> int: ...
    def update_variable(
        self,
        identifier: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> Any:
        """Set a variable's value; returns its new version.

        ``expected_version`` (optimistic locking): the set happens only if the
        variable's version is still that one. ``None`` (or 0) does not check.

        Raises:
            VersionConflictError: the version moved on (``.current_version`` says to what).
            ValidationError: the value breaks the type or the constraints.
            VariableNotFoundError: no such variable.
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._update_variable(identifier, value, metadata, expected_version))

    def _update_variable(
        self,
        identifier: str,
        value: Any,
        metadata: Mapping[str, str] | None,
        expected_version: int | None,
    ) -> _Plan[int]:
        var_type = self._types.get(identifier)
        from_cache = var_type is not None
        if var_type is None:
            var_type = yield from self._fetch_type(identifier)

        def request_for(type_name: str) -> pb2.SetVariableRequest:
            url, payload, binary = encode_parts(type_name, value)
            request = pb2.SetVariableRequest(
                session_id=self._session_id,
                variable_identifier=identifier,
                metadata=dict(metadata or {}),
                expected_version=expected_version or 0,
                binary_value=binary or b"",
            )
            request.value.type_url = url
            request.value.value = payload
            return request

        try:
            response = yield _Rpc("SetVariable", request_for(var_type))
        except VariableNotFoundError:
            self._forget(identifier)
            raise
        except ValidationError as refused:
            # A declared-type mismatch (kind invalid_argument, not invalid_value)
            # means the cached type may belong to a deleted variable whose name
            # was registered again with another type: re-read it once.
            if not from_cache or refused.kind != "invalid_argument":
                raise
            fresh = yield from self._fetch_type(identifier)
            if fresh == var_type:
                raise refused
            response = yield _Rpc("SetVariable", request_for(fresh))
        _check(response, "SetVariable")
        new_version = int(response.new_version)
        self._watch_cache.note_write(self._names_of(identifier), new_version)
        return new_version

    @overload
    def get_variables(
        self: SessionContext[grpc.aio.Channel], identifiers: Iterable[str]
    ) -> Awaitable[BatchGetResult]: ...
    @overload
    def get_variables(self: SessionContext[grpc.Channel], identifiers: Iterable[str]) -> BatchGetResult: ...
    def get_variables(self, identifiers: Iterable[str]) -> Any:
        """Read many variables in one call.

        Returns a :class:`BatchGetResult`: a ``dict`` identifier → value of the
        variables found (in the order asked), with ``.missing`` listing the
        identifiers that were not found. Missing identifiers never raise.

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._get_variables(list(identifiers)))

    def _get_variables(self, identifiers: list[str]) -> _Plan[BatchGetResult]:
        request = pb2.BatchGetVariablesRequest(
            session_id=self._session_id, variable_identifiers=identifiers, values_only=True
        )
        response = yield _Rpc("GetVariables", request)
        return BatchGetResult(self._batch_values(identifiers, response), list(response.missing_variables))

    def _batch_values(self, identifiers: list[str], response: pb2.BatchGetVariablesResponse) -> dict[str, Any]:
        """The decoded values of a ``values_only`` batch get, in the order asked; the type cache learns them.

        The hot loop of :meth:`get_variables`: the compact part is a few
        lists, packed floats and one JSON array
        (:func:`~snakepit_bridge.values.decode_batch_values`);
        only binary-path values come as ``Variable`` messages.
        """
        values = response.values
        ids = list(values.ids)
        floats = values.floats
        all_floats = len(floats) == len(ids) and values.values_json in (b"[]", b"")
        # All floats (the usual case): the types are known without reading them.
        var_types = ["float"] * len(ids) if all_floats else list(values.types)
        learned = (ids, var_types)
        if learned != self._batch_learned:
            types = self._types
            aliases = self._aliases
            # What _learn_type does per variable, inline (the key asked is its id or its name).
            for var_id, name, var_type in zip(ids, values.names, var_types, strict=False):
                types[var_id] = types[name] = var_type
                aliases[var_id] = name
                aliases[name] = var_id
        # With nothing missing or binary, the server answered every identifier asked, in order.
        keys = list(values.identifiers) if response.missing_variables or response.variables else identifiers
        found = dict(zip(keys, decode_batch_values(var_types, floats, values.values_json), strict=False))
        if response.variables:  # binary-path values
            for key, var in response.variables.items():
                self._learn(var, key)
                found[key] = decode_variable_value(var)
            found = {key: found[key] for key in dict.fromkeys(identifiers) if key in found}
        self._batch_learned = learned
        return found

    @overload
    def update_variables(
        self: SessionContext[grpc.aio.Channel],
        updates: Mapping[str, Any],
        atomic: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> Awaitable[BatchUpdateResult]: ...
    @overload
    def update_variables(
        self: SessionContext[grpc.Channel],
        updates: Mapping[str, Any],
        atomic: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchUpdateResult: ...
    def update_variables(
        self,
        updates: Mapping[str, Any],
        atomic: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Set many variables (identifier → value) in one call.

        Returns a :class:`BatchUpdateResult`: per key ``True`` if applied, else
        the reason (the server's message). ``atomic=True``: all or nothing — on
        a refusal the offending keys carry their messages and every other key
        ``"not applied: the atomic batch was rejected"``. ``atomic=False``: the
        valid updates are applied and the others reported. Per-key problems
        (including unknown identifiers) never raise.

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._update_variables(dict(updates), atomic, metadata))

    def _update_variables(
        self,
        updates: dict[str, Any],
        atomic: bool,
        metadata: Mapping[str, str] | None,
    ) -> _Plan[BatchUpdateResult]:
        if not updates:
            return BatchUpdateResult({}, True, {})
        local_errors: dict[str, str] = {}

        # Types matter only for encoding values other than floats (floats go
        # packed, typed by their variable on the server).
        types = self._types
        unknown = (
            []
            if types.keys() >= updates.keys()
            else [key for key, value in updates.items() if key not in types and type(value) is not float]
        )
        if unknown:
            lookup = pb2.BatchGetVariablesRequest(session_id=self._session_id, variable_identifiers=unknown)
            found = yield _Rpc("GetVariables", lookup)
            for key, var in found.variables.items():
                self._learn(var, key)
            for key in found.missing_variables:
                # Worded as the server words it (the key was never sent).
                local_errors[key] = f"variable {_quote(key)} not found in session {_quote(self._session_id)}"

        # JSON-path values travel in the compact form: one JSON array, not an Any each.
        request = pb2.BatchSetVariablesRequest(
            session_id=self._session_id, metadata=dict(metadata or {}), atomic=atomic
        )
        to_send = {k: v for k, v in updates.items() if k not in local_errors} if local_errors else updates
        local_errors.update(encode_compact(request, to_send, types))

        outcome: dict[str, bool | str] = {}
        if local_errors and atomic:
            outcome.update((key, local_errors.get(key, NOT_APPLIED_ATOMIC)) for key in updates)
            return BatchUpdateResult(outcome, False, {})
        if not (request.float_identifiers or request.value_identifiers or request.updates):
            outcome.update(local_errors)
            return BatchUpdateResult(outcome, False, {})

        response = yield _Rpc("SetVariables", request)
        # new_versions becomes a dict only if read (BatchUpdateResult); the cache needs it only while watched.
        versions = response.new_versions
        if self._watch_cache.watching:
            for key, version in versions.items():
                self._watch_cache.note_write(self._names_of(key), version)
        if response.success and not response.errors and not local_errors:
            return BatchUpdateResult(dict.fromkeys(updates, True), True, versions)
        errors = dict(response.errors)
        for key in updates:
            if key in local_errors:
                outcome[key] = local_errors[key]
            elif key in errors:
                outcome[key] = errors[key]
            elif key in versions or (response.success and not errors):
                outcome[key] = True
            else:
                outcome[key] = NOT_APPLIED_ATOMIC if atomic else "not applied"
        success = bool(response.success) and not local_errors
        return BatchUpdateResult(outcome, success, versions)

    @overload
    def list_variables(
        self: SessionContext[grpc.aio.Channel], pattern: str | None = None
    ) -> Awaitable[list[VariableInfo]]: ...
    @overload
    def list_variables(self: SessionContext[grpc.Channel], pattern: str | None = None) -> list[VariableInfo]: ...
    def list_variables(self, pattern: str | None = None) -> Any:
        """The session's variables, optionally only names matching a glob (``*`` any run, ``?`` one character).

        The glob covers the whole name: ``"temp_*"`` matches ``temp_a`` but not ``my_temp_a``.

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._list_variables(pattern))

    def _list_variables(self, pattern: str | None) -> _Plan[list[VariableInfo]]:
        request = pb2.ListVariablesRequest(session_id=self._session_id, pattern=pattern or "")
        response = yield _Rpc("ListVariables", request)
        return [self._remember(var) for var in response.variables]

    @overload
    def delete_variable(self: SessionContext[grpc.aio.Channel], identifier: str) -> Awaitable[None]: ...
    @overload
    def delete_variable(self: SessionContext[grpc.Channel], identifier: str) -> None: ...
    def delete_variable(self, identifier: str) -> Any:
        """Delete a variable by id or name. Watchers of it get ``deleted``.

        Raises:
            VariableNotFoundError: no such variable.
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._delete_variable(identifier))

    def _delete_variable(self, identifier: str) -> _Plan[None]:
        request = pb2.DeleteVariableRequest(session_id=self._session_id, variable_identifier=identifier)
        try:
            response = yield _Rpc("DeleteVariable", request)
        finally:
            self._watch_cache.drop(identifier)
            self._forget(identifier)
        _check(response, "DeleteVariable")

    @overload
    def has_variable(self: SessionContext[grpc.aio.Channel], identifier: str) -> Awaitable[bool]: ...
    @overload
    def has_variable(self: SessionContext[grpc.Channel], identifier: str) -> bool: ...
    def has_variable(self, identifier: str) -> Any:
        """Whether the session has a variable with this name (or id).

        Raises:
            SessionNotFoundError: the session does not exist (that is not ``False``).
        """
        return self._run(self._has_variable(identifier))

    def _has_variable(self, identifier: str) -> _Plan[bool]:
        try:
            yield from self._get_message(identifier)
        except VariableNotFoundError:
            return False
        return True

    # ------------------------------------------------------------------ watching

    @overload
    def watch_variables(
        self: SessionContext[grpc.aio.Channel],
        identifiers: Iterable[str],
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_versions: Mapping[str, int] | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> AsyncVariableWatch: ...
    @overload
    def watch_variables(
        self: SessionContext[grpc.Channel],
        identifiers: Iterable[str],
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_versions: Mapping[str, int] | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> VariableWatch: ...
    def watch_variables(
        self,
        identifiers: Iterable[str],
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_versions: Mapping[str, int] | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> Any:
        """Watch variables (by id or name): an iterator of :class:`~snakepit_bridge.VariableUpdate`.

        On an aio context it is an :class:`~snakepit_bridge.AsyncVariableWatch`
        (``async for update in ctx.watch_variables([...])``), on a blocking one
        a :class:`~snakepit_bridge.VariableWatch` (``for update in ...``; close
        it, or use ``with``). Nothing is sent before the first ``next``/``anext``
        (or entering ``with``/``async with``, which waits until the server has
        registered the watch). Each update is a mapping: ``update["value"]`` and
        ``update.value`` both work.

        Per variable, versions strictly increase and none comes twice; a
        consumer that falls behind gets intermediate changes coalesced, and
        always the latest value. The iterator yields the ``session_closed``
        update when the session is cleaned up or expires and then stops; it
        also stops after the ``deleted`` update of the last watched variable.
        Closing it (``close()``/``aclose()``, leaving ``with``, ``break`` and
        garbage collection, cancelling the awaiting task) cancels the RPC.

        While the watch is live, the values it delivers are served by
        :meth:`get_variable` (and ``get_variable_info``, ``ctx[name]``,
        ``has_variable``, ``in``) without an RPC; see :mod:`snakepit_bridge.watch`.

        Args:
            identifiers: names or ids (a list, not a single string).
            include_initial: start with each variable's current value
                (``update_type == "initial_value"``).
            reconnect: on UNAVAILABLE (server restart, dropped connection),
                reopen the watch after an exponential backoff, forever or until
                closed, resuming from the last version seen of each variable:
                nothing is delivered twice and no final value is lost. See
                :mod:`snakepit_bridge.watch` for restarts, which lose the
                server's state.
            since_versions: per identifier, the last version the caller has
                already seen (e.g. from an earlier watch): its current value is
                sent first only if newer (this overrides ``include_initial`` for it).
            backoff: ``(first, longest)`` delay in seconds between reconnection
                attempts (doubling, jittered).

        Iteration raises (then ends):
            SessionNotFoundError: the session does not exist (on opening).
            VariableNotFoundError: a variable does not exist (on opening: the
                whole watch is refused), or, with ``reconnect``, a variable never
                delivered was deleted while the watch was disconnected.
            ValidationError: ``identifiers`` is empty (INVALID_ARGUMENT).
            BridgeUnavailableError: the server went away and ``reconnect`` is off,
                or the channel was closed (never retried).
            asyncio.CancelledError: (aio) the awaiting task was cancelled.

        Raises:
            TypeError: ``identifiers`` is a string, or holds a non-string.
            ValueError: ``backoff`` is not two positive numbers, first <= longest.
        """
        if isinstance(identifiers, (str, bytes)):
            raise TypeError("identifiers must be a list of names or ids, not a single string; use watch_variable()")
        idents = list(identifiers)
        for ident in idents:
            if not isinstance(ident, str):
                raise TypeError(f"identifiers must be strings, not {type(ident).__name__}")
        first, longest = (float(x) for x in backoff)
        if not 0 < first <= longest:
            raise ValueError(f"backoff must be (first, longest) with 0 < first <= longest, not {backoff!r}")
        since = {str(k): int(v) for k, v in (since_versions or {}).items()}
        state = _WatchState(idents, bool(include_initial), since, bool(reconnect), (first, longest))
        holder = _WatchHolder()
        plan = self._watch_plan(state, holder)
        if self._is_async:
            return AsyncVariableWatch(self, plan, holder, idents)
        return VariableWatch(self, plan, holder, idents)

    @overload
    def watch_variable(
        self: SessionContext[grpc.aio.Channel],
        identifier: str,
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_version: int | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> AsyncVariableWatch: ...
    @overload
    def watch_variable(
        self: SessionContext[grpc.Channel],
        identifier: str,
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_version: int | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> VariableWatch: ...
    def watch_variable(
        self,
        identifier: str,
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_version: int | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> Any:
        """Watch one variable: :meth:`watch_variables` with ``[identifier]``.

        The iterator stops after the variable's ``deleted`` update (or the
        session's ``session_closed``). ``since_version``: the last version
        already seen, as in ``since_versions``.

        Raises:
            TypeError: ``identifier`` is not a string.
        """
        if not isinstance(identifier, str):
            raise TypeError(f"identifier must be a str, not {type(identifier).__name__}")
        since = {identifier: since_version} if since_version is not None else None
        return self.watch_variables(
            [identifier],
            include_initial=include_initial,
            reconnect=reconnect,
            since_versions=since,
            backoff=backoff,
        )

    def _watch_plan(self, state: _WatchState, holder: _WatchHolder) -> _WatchPlan:
        """The logic of a watch, for both drivers: open, read, resume, track, refresh the cache."""
        cache = self._watch_cache
        cache.attach(holder)
        try:
            while True:
                try:
                    if state.reconnect:
                        vanished = yield from self._watch_session_check(state, holder)
                        for update in vanished:  # deleted while disconnected
                            self._watch_cache.drop(update.variable_id or "")
                            self._forget(update.variable_id or "")
                            over = state.note(update)
                            if over:
                                cache.release(holder)
                            yield _Emit(update)
                            if over:
                                return
                    idents, include, since = state.request_fields()
                    request = pb2.WatchVariablesRequest(
                        session_id=self._session_id,
                        variable_identifiers=idents,
                        include_initial_values=include,
                        since_versions=since,
                    )
                    if (yield _OpenStream(request)):
                        state.connected()
                        cache.set_live(holder, True)
                    while True:
                        message = yield _READ
                        if message is None:  # ended with OK (after session_closed)
                            return
                        state.connected()
                        cache.set_live(holder, True)
                        update = self._watch_update(message, holder)
                        over = state.note(update)
                        if over:
                            cache.release(holder)
                        yield _Emit(update)
                        if over:
                            return
                except BridgeError as err:
                    cache.set_live(holder, False)
                    if not state.retryable(err):
                        raise
                    yield _Sleep(state.next_delay())
        finally:
            cache.release(holder)

    def _watch_session_check(self, state: _WatchState, holder: _WatchHolder) -> _Plan[list[VariableUpdate]]:
        """Before (re)opening a reconnecting watch: is it the same session, and are its variables still there?

        Returns ``deleted`` updates for the variables deleted while the watch was away.
        """
        response = yield _Rpc("GetSession", pb2.GetSessionRequest(session_id=self._session_id))
        created = (response.created_at.seconds, response.created_at.nanos) if response.HasField("created_at") else None
        if state.session_seen(created):
            # A new session under the same id (e.g. the server restarted):
            # versions start again, so what was cached or seen means nothing.
            self._watch_cache.reset(holder)
            return []
        if not state.opened or state.awaiting_recreation:
            return []
        idents = [i for i in state.identifiers if i not in state.deleted]
        batch = yield _Rpc(
            "GetVariables", pb2.BatchGetVariablesRequest(session_id=self._session_id, variable_identifiers=idents)
        )
        return state.vanished({ident: var.id for ident, var in batch.variables.items()})

    def _watch_update(self, message: pb2.VariableUpdate, holder: _WatchHolder) -> VariableUpdate:
        """Decode one message, and refresh the type cache and the watch cache with it.

        Only the value is decoded here; the update's ``variable`` and
        ``timestamp`` are built from the message if and when they are read,
        and the watch cache keeps the message (see ``_WatchCache.lookup``).
        """
        kind = message.update_type
        if message.HasField("variable"):
            var = message.variable
            var_id, name = var.id, var.name
            if var_id or name:
                value = decode_variable_value(var)
                version = var.version
                var_type = var.type
                if kind == "deleted":
                    self._watch_cache.drop(var_id)
                    self._forget(var_id)
                else:
                    self._learn_type(var_id, name, var_type)
                    if kind != "session_closed":
                        self._watch_cache.refresh(holder, var_id, name, version, var)
                update_metadata = message.update_metadata
                return VariableUpdate._received(
                    kind,
                    message.variable_id or var_id,
                    name,
                    value,
                    version,
                    VariableType.coerce(var_type),
                    dict(update_metadata) if update_metadata else {},
                    message.update_source or None,
                    _Deferred(_update_timestamp, message),
                    _Deferred(_variable_info, var),
                )
        return VariableUpdate._received(
            kind,
            message.variable_id or None,
            None,
            None,
            None,
            None,
            dict(message.update_metadata),
            message.update_source or None,
            _Deferred(_update_timestamp, message),
            None,
        )

    # ------------------------------------------------------------------ mapping sugar

    @overload
    def __getitem__(self: SessionContext[grpc.aio.Channel], identifier: str) -> Awaitable[Any]: ...
    @overload
    def __getitem__(self: SessionContext[grpc.Channel], identifier: str) -> Any: ...
    def __getitem__(self, identifier: str) -> Any:
        """``ctx[name]``: :meth:`get_variable` (an awaitable on an aio context).

        Raises:
            VariableNotFoundError: no such variable (it is a ``KeyError``).
        """
        return self._run(self._get_value(identifier, _MISSING))

    def __contains__(self, identifier: object) -> bool:
        """``name in ctx``: :meth:`has_variable`, on a blocking context only.

        Raises:
            TypeError: on an aio context, where ``in`` cannot await; use
                ``await ctx.has_variable(name)``.
            SessionNotFoundError: the session does not exist.
        """
        if self._is_async:
            raise TypeError("'in' cannot await on a grpc.aio SessionContext; use 'await ctx.has_variable(name)'")
        if not isinstance(identifier, str):
            return False
        return self._run_blocking(self._has_variable(identifier))


def _translate(exc: grpc.RpcError) -> BridgeError:
    """The package's exception for a failed call (a grpc.Call or aio.AioRpcError)."""
    return error_from_rpc_error(exc)
