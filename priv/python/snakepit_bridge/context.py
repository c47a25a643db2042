"""The two context classes: :class:`SessionContext` (blocking) and :class:`AsyncSessionContext` (asyncio).

As in ``grpc``/``grpc.aio``, each mode has its own class with plain
signatures: ``SessionContext(session_id, grpc.Channel)`` blocks and returns
results, ``AsyncSessionContext(session_id, grpc.aio.Channel)`` has coroutine
methods. Given the other kind of channel, each raises ``TypeError`` naming
the class to use.

Layout
    Neither class holds any logic of its own: each method hands a plan of
    :class:`~snakepit_bridge._plans.SessionCore` (which builds the requests,
    parses the responses and keeps the type cache) to a driver, blocking or
    awaiting (see :mod:`snakepit_bridge._plans`). Watches are made by
    :mod:`snakepit_bridge.watch`, given the core (a
    :class:`~snakepit_bridge.watch.WatchHost`) and a link that makes calls
    and opens the stream on this context's channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import grpc
import grpc.aio

from ._plans import (
    CALL_METADATA,
    DEFAULT_TIMEOUT,
    MISSING,
    Plan,
    Rpc,
    SessionCore,
    invoke_async,
    invoke_blocking,
    run_async,
    run_blocking,
)
from ._proto import snakepit_bridge_pb2_grpc as pb2_grpc
from .types import BatchGetResult, BatchUpdateResult, SessionInfo, VariableInfo, VariableType
from .watch import DEFAULT_BACKOFF, AsyncVariableWatch, VariableWatch, open_async, open_blocking

__all__ = ["DEFAULT_TIMEOUT", "AsyncSessionContext", "SessionContext"]

_T = TypeVar("_T")


def _check_args(session_id: object, channel: object, want: type, other: type, wanted: str) -> None:
    """Refuse a non-string id, and a channel of the other mode with the class to use (``wanted`` says both)."""
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
    if isinstance(channel, other) and not isinstance(channel, want):
        raise TypeError(wanted)
    if not isinstance(channel, want):
        raise TypeError(f"channel must be a grpc.Channel or grpc.aio.Channel, not {type(channel).__name__}")


class SessionContext:
    """One session of the Snakepit bridge, seen from Python, over a blocking ``grpc.Channel``.

    Every method blocks and returns its result. For asyncio use
    :class:`AsyncSessionContext` with a ``grpc.aio.Channel``: the same methods,
    as coroutines.

    Mapping sugar: ``ctx["name"]`` is ``get_variable`` (a missing name raises
    :class:`VariableNotFoundError`, which is a ``KeyError``) and ``"name" in
    ctx`` is ``has_variable``.

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
        channel: a ``grpc.Channel`` (``grpc.insecure_channel(addr)``).
        timeout: per-call deadline in seconds (``None``: no deadline).

    Raises:
        TypeError: ``channel`` is a ``grpc.aio.Channel`` (use
            :class:`AsyncSessionContext`) or no gRPC channel, or ``session_id``
            is not a string.
    """

    #: ``False``: methods return their results (``True`` on :class:`AsyncSessionContext`).
    is_async: ClassVar[bool] = False

    # Not iterable, even though it has __getitem__ (which would otherwise make
    # iter() try ctx[0], ctx[1], ...).
    __iter__: ClassVar[None] = None

    def __init__(self, session_id: str, channel: grpc.Channel, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        _check_args(
            session_id,
            channel,
            grpc.Channel,
            grpc.aio.Channel,
            "SessionContext needs a blocking grpc.Channel; with a grpc.aio.Channel use AsyncSessionContext",
        )
        self._channel = channel
        self._timeout = timeout
        self._core = SessionCore(session_id)
        # The generated stub is untyped; calls go through _invoke, typed by the plans.
        self._stub: Any = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]

    @property
    def session_id(self) -> str:
        """The session this context talks to."""
        return self._core.session_id

    @property
    def channel(self) -> grpc.Channel:
        """The channel given at construction (not owned: the caller closes it)."""
        return self._channel

    def __repr__(self) -> str:
        return f"SessionContext({self.session_id!r})"

    def _invoke(self, rpc: Rpc) -> Any:
        return invoke_blocking(self._stub, rpc, self._timeout)

    def _run(self, plan: Plan[_T]) -> _T:
        return run_blocking(plan, self._invoke)

    # ------------------------------------------------------------------ session

    def ping(self, message: str = "") -> str:
        """Check the server is alive; returns ``message`` as the server echoed it.

        Raises:
            BridgeUnavailableError: the server cannot be reached.
        """
        return self._run(self._core.ping(message))

    def initialize(self, metadata: Mapping[str, str] | None = None) -> dict[str, VariableInfo]:
        """Create this session on the server (``InitializeSession``).

        Returns the session's initial variables by name (empty for a new session).

        Raises:
            AlreadyExistsError: a session with this id already exists.
            ValidationError: the session id is not acceptable (the server's message says why).
        """
        return self._run(self._core.initialize(metadata))

    def cleanup(self, force: bool = False) -> int:
        """Remove the session and its variables (``CleanupSession``); returns how many variables went.

        Idempotent: cleaning up an unknown session returns 0. Watchers of the
        session get ``session_closed``.

        Raises:
            BridgeUnavailableError: the server cannot be reached.
        """
        return self._run(self._core.cleanup(force))

    def get_session(self) -> SessionInfo:
        """Describe the session: id, metadata, created_at (UTC datetime), variable_count, watcher_count.

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._core.get_session())

    def heartbeat(self) -> bool:
        """Keep the session alive; returns ``False`` if it no longer exists (never raises for that).

        Raises:
            BridgeUnavailableError: the server cannot be reached.
        """
        return self._run(self._core.heartbeat())

    # ------------------------------------------------------------------ variables

    def register_variable(
        self,
        name: str,
        var_type: VariableType | str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
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
        return self._run(self._core.register_variable(name, var_type, initial_value, constraints, metadata))

    def get_variable(self, identifier: str, default: Any = MISSING) -> Any:
        """The current value of a variable, by id or name.

        With ``default`` given, a missing variable returns ``default`` instead of raising.
        While a live watch of this context covers the variable, the value is
        served locally, without an RPC (see :meth:`watch_variables`).

        Raises:
            VariableNotFoundError: no such variable (and no ``default``).
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._core.get_value(identifier, default))

    def get_variable_info(self, identifier: str) -> VariableInfo:
        """Everything about a variable: id, name, type, value, version, source, metadata, constraints, last_updated_at.

        Raises:
            VariableNotFoundError: no such variable.
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._core.get_info(identifier))

    def update_variable(
        self,
        identifier: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Set a variable's value; returns its new version.

        ``expected_version`` (optimistic locking): the set happens only if the
        variable's version is still that one. ``None`` (or 0) does not check.

        Raises:
            VersionConflictError: the version moved on (``.current_version`` says to what).
            ValidationError: the value breaks the type or the constraints.
            VariableNotFoundError: no such variable.
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._core.update_variable(identifier, value, metadata, expected_version))

    def get_variables(self, identifiers: Iterable[str]) -> BatchGetResult:
        """Read many variables in one call.

        Returns a :class:`BatchGetResult`: a ``dict`` identifier → value of the
        variables found (in the order asked), with ``.missing`` listing the
        identifiers that were not found. Missing identifiers never raise.

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._core.get_variables(list(identifiers)))

    def update_variables(
        self,
        updates: Mapping[str, Any],
        atomic: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchUpdateResult:
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
        return self._run(self._core.update_variables(dict(updates), atomic, metadata))

    def list_variables(self, pattern: str | None = None) -> list[VariableInfo]:
        """The session's variables, optionally only names matching a glob (``*`` any run, ``?`` one character).

        The glob covers the whole name: ``"temp_*"`` matches ``temp_a`` but not ``my_temp_a``.

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._core.list_variables(pattern))

    def delete_variable(self, identifier: str) -> None:
        """Delete a variable by id or name. Watchers of it get ``deleted``.

        Raises:
            VariableNotFoundError: no such variable.
            SessionNotFoundError: the session does not exist.
        """
        return self._run(self._core.delete_variable(identifier))

    def has_variable(self, identifier: str) -> bool:
        """Whether the session has a variable with this name (or id).

        Raises:
            SessionNotFoundError: the session does not exist (that is not ``False``).
        """
        return self._run(self._core.has_variable(identifier))

    # ------------------------------------------------------------------ watching

    def watch_variables(
        self,
        identifiers: Iterable[str] = (),
        *,
        patterns: Iterable[str] | None = None,
        include_initial: bool = True,
        reconnect: bool = False,
        since_versions: Mapping[str, int] | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> VariableWatch:
        """Watch variables (by id or name): an iterator of :class:`~snakepit_bridge.VariableUpdate`.

        A :class:`~snakepit_bridge.VariableWatch` (``for update in ...``; close
        it, or use ``with``); on an :class:`AsyncSessionContext` it is an
        :class:`~snakepit_bridge.AsyncVariableWatch` (``async for update in
        ctx.watch_variables([...])``). Nothing is sent before the first ``next``/``anext``
        (or entering ``with``/``async with``, which waits until the server has
        registered the watch). Each update is a mapping: ``update["value"]`` and
        ``update.value`` both work.

        Per variable, versions strictly increase and none comes twice; a
        consumer that falls behind gets intermediate changes coalesced, and
        always the latest value. The iterator yields the ``session_closed``
        update when the session is cleaned up or expires and then stops;
        without ``patterns`` it also stops after the ``deleted`` update of the
        last watched variable (with patterns it goes on: only
        ``session_closed`` or closing it ends it).

        ``ctx.watch_variables(patterns=["model.*"])`` watches every variable
        whose name matches, now and later: one registered after the watch
        started arrives as ``update_type == "registered"`` with its first
        value, then its changes; a deleted one as ``deleted``.
        Closing it (``close()``/``aclose()``, leaving ``with``, ``break`` and
        garbage collection, cancelling the awaiting task) cancels the RPC.

        While the watch is live, the values it delivers are served by
        :meth:`get_variable` (and ``get_variable_info``, ``ctx[name]``,
        ``has_variable``, ``in``) without an RPC; see :mod:`snakepit_bridge.watch`.

        Args:
            identifiers: names or ids (a list, not a single string); may be
                empty when ``patterns`` are given.
            patterns: glob patterns (``*`` any run, ``?`` one character)
                matched against whole names, as in ``list_variables``
                (a list, not a single string). Identifiers and patterns count
                together against the server's ``max_batch``, the patterns'
                total length against ``max_pattern_bytes``.
            include_initial: start with each variable's current value
                (``update_type == "initial_value"``); on the first opening
                only (a ``reconnect`` resume always asks for them, see
                :mod:`snakepit_bridge.watch`).
            reconnect: on UNAVAILABLE (server restart, dropped connection),
                reopen the watch after an exponential backoff, forever or until
                closed, resuming from the last version seen of each variable:
                nothing is delivered twice and no final value is lost. See
                :mod:`snakepit_bridge.watch` for restarts, which lose the
                server's state. With patterns, the patterns are sent again, and
                a matching variable registered while away arrives as
                ``initial_value``.
            since_versions: per identifier (or, for a pattern, per name), the
                last version the caller has already seen (e.g. from an earlier
                watch): its current value is sent first only if newer (this
                overrides ``include_initial`` for it). Not empty, it makes the
                opening a resume: a variable a pattern matches that it does not
                list gets its current value.
            backoff: ``(first, longest)`` delay in seconds between reconnection
                attempts (doubling, jittered).

        Iteration raises (then ends):
            SessionNotFoundError: the session does not exist (on opening).
            VariableNotFoundError: a variable does not exist (on opening: the
                whole watch is refused), or, with ``reconnect``, a variable never
                delivered was deleted while the watch was disconnected.
            ValidationError: a request the server refused as malformed (INVALID_ARGUMENT),
                e.g. an empty pattern.
            ResourceExhaustedError: more identifiers and patterns than ``max_batch``,
                or patterns longer than ``max_pattern_bytes`` in total.
            BridgeUnavailableError: the server went away and ``reconnect`` is off,
                or the channel was closed (never retried).

        Raises:
            TypeError: ``identifiers`` or ``patterns`` is a string, or holds a non-string.
            ValidationError: neither identifiers nor patterns (a ``ValueError``).
            ValueError: ``backoff`` is not two positive numbers, first <= longest.
        """
        return open_blocking(
            self._core,
            _Link(self._stub, self._invoke, None),
            identifiers,
            patterns=patterns,
            include_initial=include_initial,
            reconnect=reconnect,
            since_versions=since_versions,
            backoff=backoff,
        )

    def watch_variable(
        self,
        identifier: str,
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_version: int | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> VariableWatch:
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

    # ------------------------------------------------------------------ mapping sugar

    def __getitem__(self, identifier: str) -> Any:
        """``ctx[name]``: :meth:`get_variable`.

        Raises:
            VariableNotFoundError: no such variable (it is a ``KeyError``).
        """
        return self._run(self._core.get_value(identifier, MISSING))

    def __contains__(self, identifier: object) -> bool:
        """``name in ctx``: :meth:`has_variable` (``False`` for a non-string, without a call).

        Raises:
            SessionNotFoundError: the session does not exist.
        """
        if not isinstance(identifier, str):
            return False
        return self._run(self._core.has_variable(identifier))


class AsyncSessionContext:
    """One session of the Snakepit bridge over a ``grpc.aio.Channel``: :class:`SessionContext` with coroutine methods.

    Every method of :class:`SessionContext` is here, with the same arguments,
    results and errors, as a coroutine (``await ctx.get_variable("x")``);
    :meth:`watch_variables` returns an :class:`~snakepit_bridge.AsyncVariableWatch`.
    A forgotten ``await`` is a type error (``mypy``'s ``unused-coroutine``) and
    a ``RuntimeWarning`` at run time, never a silent success.

    Mapping sugar: ``await ctx["name"]`` is ``await ctx.get_variable(name)``;
    ``name in ctx`` raises ``TypeError``, because ``in`` cannot await: use
    ``await ctx.has_variable(name)``.

    Args:
        session_id: the session's id (as for :class:`SessionContext`).
        channel: a ``grpc.aio.Channel`` (``grpc.aio.insecure_channel(addr)``).
        timeout: per-call deadline in seconds (``None``: no deadline).

    Raises:
        TypeError: ``channel`` is a blocking ``grpc.Channel`` (use
            :class:`SessionContext`) or no gRPC channel, or ``session_id``
            is not a string.
    """

    #: ``True``: methods are coroutines.
    is_async: ClassVar[bool] = True

    __iter__: ClassVar[None] = None

    def __init__(self, session_id: str, channel: grpc.aio.Channel, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        _check_args(
            session_id,
            channel,
            grpc.aio.Channel,
            grpc.Channel,
            "AsyncSessionContext needs a grpc.aio.Channel; with a blocking grpc.Channel use SessionContext",
        )
        self._channel = channel
        self._timeout = timeout
        self._core = SessionCore(session_id)
        self._stub: Any = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]

    @property
    def session_id(self) -> str:
        """The session this context talks to."""
        return self._core.session_id

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel given at construction (not owned: the caller closes it)."""
        return self._channel

    def __repr__(self) -> str:
        return f"AsyncSessionContext({self.session_id!r})"

    async def _invoke(self, rpc: Rpc) -> Any:
        return await invoke_async(self._stub, rpc, self._timeout)

    # ------------------------------------------------------------------ session

    async def ping(self, message: str = "") -> str:
        """Check the server is alive; returns ``message`` as the server echoed it.

        Raises as :meth:`SessionContext.ping` does.
        """
        return await run_async(self._core.ping(message), self._invoke)

    async def initialize(self, metadata: Mapping[str, str] | None = None) -> dict[str, VariableInfo]:
        """Create this session on the server (``InitializeSession``).

        Raises as :meth:`SessionContext.initialize` does.
        """
        return await run_async(self._core.initialize(metadata), self._invoke)

    async def cleanup(self, force: bool = False) -> int:
        """Remove the session and its variables (``CleanupSession``); returns how many variables went.

        Raises as :meth:`SessionContext.cleanup` does.
        """
        return await run_async(self._core.cleanup(force), self._invoke)

    async def get_session(self) -> SessionInfo:
        """Describe the session: id, metadata, created_at (UTC datetime), variable_count, watcher_count.

        Raises as :meth:`SessionContext.get_session` does.
        """
        return await run_async(self._core.get_session(), self._invoke)

    async def heartbeat(self) -> bool:
        """Keep the session alive; returns ``False`` if it no longer exists (never raises for that).

        Raises as :meth:`SessionContext.heartbeat` does.
        """
        return await run_async(self._core.heartbeat(), self._invoke)

    # ------------------------------------------------------------------ variables

    async def register_variable(
        self,
        name: str,
        var_type: VariableType | str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Create a variable; returns its id (``var_<name>_<suffix>``). Its version is 1.

        Raises as :meth:`SessionContext.register_variable` does.
        """
        return await run_async(
            self._core.register_variable(name, var_type, initial_value, constraints, metadata), self._invoke
        )

    async def get_variable(self, identifier: str, default: Any = MISSING) -> Any:
        """The current value of a variable, by id or name.

        Raises as :meth:`SessionContext.get_variable` does.
        """
        return await run_async(self._core.get_value(identifier, default), self._invoke)

    async def get_variable_info(self, identifier: str) -> VariableInfo:
        """Everything about a variable: id, name, type, value, version, source, metadata, constraints, last_updated_at.

        Raises as :meth:`SessionContext.get_variable_info` does.
        """
        return await run_async(self._core.get_info(identifier), self._invoke)

    async def update_variable(
        self,
        identifier: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Set a variable's value; returns its new version.

        Raises as :meth:`SessionContext.update_variable` does.
        """
        return await run_async(self._core.update_variable(identifier, value, metadata, expected_version), self._invoke)

    async def get_variables(self, identifiers: Iterable[str]) -> BatchGetResult:
        """Read many variables in one call.

        Raises as :meth:`SessionContext.get_variables` does.
        """
        return await run_async(self._core.get_variables(list(identifiers)), self._invoke)

    async def update_variables(
        self,
        updates: Mapping[str, Any],
        atomic: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchUpdateResult:
        """Set many variables (identifier → value) in one call.

        Raises as :meth:`SessionContext.update_variables` does.
        """
        return await run_async(self._core.update_variables(dict(updates), atomic, metadata), self._invoke)

    async def list_variables(self, pattern: str | None = None) -> list[VariableInfo]:
        """The session's variables, optionally only names matching a glob (``*`` any run, ``?`` one character).

        Raises as :meth:`SessionContext.list_variables` does.
        """
        return await run_async(self._core.list_variables(pattern), self._invoke)

    async def delete_variable(self, identifier: str) -> None:
        """Delete a variable by id or name. Watchers of it get ``deleted``.

        Raises as :meth:`SessionContext.delete_variable` does.
        """
        return await run_async(self._core.delete_variable(identifier), self._invoke)

    async def has_variable(self, identifier: str) -> bool:
        """Whether the session has a variable with this name (or id).

        Raises as :meth:`SessionContext.has_variable` does.
        """
        return await run_async(self._core.has_variable(identifier), self._invoke)

    # ------------------------------------------------------------------ watching

    def watch_variables(
        self,
        identifiers: Iterable[str] = (),
        *,
        patterns: Iterable[str] | None = None,
        include_initial: bool = True,
        reconnect: bool = False,
        since_versions: Mapping[str, int] | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> AsyncVariableWatch:
        """Watch variables: an :class:`~snakepit_bridge.AsyncVariableWatch` (``async for update in ...``).

        Not a coroutine: nothing is sent before the first ``anext`` (or
        ``async with``, which waits until the server has registered the
        watch). Arguments, guarantees and errors as for
        :meth:`SessionContext.watch_variables`; cancelling the task awaiting
        ``anext`` cancels the RPC (``asyncio.CancelledError`` propagates).
        """
        return open_async(
            self._core,
            _Link(self._stub, self._invoke, self._channel),
            identifiers,
            patterns=patterns,
            include_initial=include_initial,
            reconnect=reconnect,
            since_versions=since_versions,
            backoff=backoff,
        )

    def watch_variable(
        self,
        identifier: str,
        *,
        include_initial: bool = True,
        reconnect: bool = False,
        since_version: int | None = None,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
    ) -> AsyncVariableWatch:
        """Watch one variable: :meth:`watch_variables` with ``[identifier]``.

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

    # ------------------------------------------------------------------ mapping sugar

    async def __getitem__(self, identifier: str) -> Any:
        """``await ctx[name]``: :meth:`get_variable`.

        Raises:
            VariableNotFoundError: no such variable (it is a ``KeyError``).
        """
        return await run_async(self._core.get_value(identifier, MISSING), self._invoke)

    def __contains__(self, identifier: object) -> bool:
        """Always raises: ``in`` cannot await.

        Raises:
            TypeError: use ``await ctx.has_variable(name)``.
        """
        raise TypeError("'in' cannot await on an AsyncSessionContext; use 'await ctx.has_variable(name)'")


class _Link:
    """How a watch of a context makes unary calls and opens its stream (a ``watch.BlockingLink`` / ``watch.AsyncLink``)."""

    __slots__ = ("_channel", "_stub", "invoke")

    def __init__(self, stub: Any, invoke: Callable[[Rpc], Any], channel: grpc.aio.Channel | None) -> None:
        self._stub = stub
        self._channel = channel
        self.invoke = invoke

    def open_stream(self, request: Any) -> Any:
        return self._stub.WatchVariables(request, metadata=CALL_METADATA)

    def channel_closed(self) -> bool:
        if self._channel is None:  # a blocking channel: closing it fails the call itself
            return False
        try:
            return bool(self._channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.SHUTDOWN)
        except Exception:  # noqa: BLE001 - a channel that cannot even say is not usable
            return True
