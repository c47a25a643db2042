"""Watching variables: the updates, and the iterators ``watch_variables`` returns (both context classes).

What the server guarantees (``WatchVariables``)
    A watcher is owed the latest value of every variable it watches, in
    version order — not necessarily every intermediate value:

    - per variable, versions strictly increase and none is delivered twice;
    - a watcher that keeps up gets every change; one that falls behind gets
      intermediate changes coalesced into the latest (the version gap shows
      it), is never disconnected for being slow, and always ends with the
      final value;
    - the changes of one atomic batch update arrive adjacent;
    - the subscription is live before the first message: with initial values,
      a write racing the start is in the initial value or delivered after it;
    - with ``patterns`` (globs over whole names, ``*`` and ``?``, as
      ``list_variables``), the watch covers every variable that matches, now
      and later: one registered after the watch started first arrives as
      ``registered`` with its first value, then its changes;
    - ``deleted`` comes once for a deleted variable, then nothing more for it;
      ``session_closed`` is the last message when the session is cleaned up or
      expires (a watch does not keep its session alive: ``heartbeat`` does),
      and the stream then ends.

What this client adds
    - :class:`VariableUpdate`: each message as a read-only mapping with
      attribute access (``update["value"]`` or ``update.value``).
    - :class:`AsyncVariableWatch` (from an
      :class:`~snakepit_bridge.AsyncSessionContext`) and :class:`VariableWatch`
      (from a blocking :class:`~snakepit_bridge.SessionContext`): the iterators. Nothing is sent
      until the first ``next``/``anext`` (or entering ``with``/``async with``,
      which opens the stream and waits until the server has registered it).
      Refusals of the opening (``NOT_FOUND``, ``INVALID_ARGUMENT``) are raised
      there. Iteration ends (``StopIteration`` / ``StopAsyncIteration``)
      right after the ``session_closed`` update has been yielded, and, for a
      watch without patterns, right after the ``deleted`` update of the last
      variable still watched (nothing else could come). A watch with patterns
      goes on after deletions (a matching variable may be registered): only
      ``session_closed`` (or closing it) ends it. Neither identifiers nor
      patterns raises :class:`~snakepit_bridge.ValidationError` (a
      ``ValueError``) at once. Closing, leaving the ``with`` block, ``break`` plus
      garbage collection, or cancelling the task awaiting ``anext`` cancels the
      RPC, so the server drops the subscription at once.
    - ``reconnect=True``: after ``UNAVAILABLE`` (server restarted, connection
      dropped; also when the server is not up yet at the first opening) the
      watch is opened again after an exponential backoff with jitter
      (``backoff=(first, longest)`` seconds, 50 ms doubling to 2 s by default),
      forever or until closed, passing ``since_versions`` = the last version
      seen of each variable: what changed meanwhile arrives as an
      ``initial_value`` update of the current value (intermediate versions
      coalesced), nothing is delivered twice, and a variable never delivered
      yet gets its current value. With patterns, the patterns are sent again
      and ``since_versions`` lists, by name, every variable the watch has
      delivered; a matching variable registered while the watch was away
      arrives as ``initial_value`` with its current value. A resume always asks
      for initial values (``include_initial`` applies to the first opening
      only): so a pattern watch that has delivered nothing yet, and has no
      versions to list, still gets what was registered meanwhile — and also
      the current value of the variables that matched from the start. The iterator reconnects while it is being
      iterated (a ``next``/``anext`` is pending: that call waits through the
      outage). Before the first opening it reads the session (``GetSession``),
      and before each reopening it makes two unary calls:

      * ``GetSession``: versions are only comparable within one life of a
        session. If ``created_at`` changed (the server restarted, which loses
        its state, and the session was created again), the versions seen are
        forgotten and every watched variable's current value is sent. While the
        session does not exist, or, in a new session, a variable does not exist
        yet, the ``NOT_FOUND`` is retried like ``UNAVAILABLE``: their owner
        re-creates them after a restart. (Watch by name to survive restarts: a
        restarted server hands out ids anew.)
      * ``GetVariables`` (same session): a variable deleted while the watch was
        away — gone, or its name now belonging to a new variable — is reported
        by a ``deleted`` update the client makes from the last update seen
        (``source`` and ``timestamp`` ``None``), then nothing more for it, as
        on a live stream. A watched variable never delivered that is gone
        raises :class:`VariableNotFoundError`. With patterns, every name
        delivered is checked too (in chunks), and a variable matched by a
        pattern that is gone, or whose name a new variable now holds, is
        reported ``deleted`` the same way (the new one then arrives as
        ``initial_value``).

      A closed channel or a cancelled call is never retried. grpc's channel has
      a reconnection backoff of its own (1 s, growing to 120 s): after a long
      outage the channel may be what waits. Create it with e.g.
      ``options=[("grpc.max_reconnect_backoff_ms", 2000)]`` to bound that.
    - The local value cache: while a watch is live, the values it delivers
      refresh the context's cache, and ``get_variable``, ``get_variable_info``,
      ``ctx[name]``, ``has_variable`` and ``name in ctx`` for a variable the
      watch has delivered a value of are answered locally, with no RPC. The
      value served is the newest one the watch has delivered to its consumer
      (a consumer that lags behind reads as of the updates it has consumed), and
      never older than this context's own acknowledged writes (read-your-writes:
      after ``update_variable`` the cache is bypassed until the watch delivers
      that version). An entry stops being served as soon as no live watch
      covers it: while a reconnecting watch is disconnected, and for good when
      the watch ends, the variable is deleted (``deleted`` update or this
      context's ``delete_variable``) or this context cleans the session up.

Layout
    This module is the watch's interface: the iterators (its two drivers), and
    :func:`open_blocking` / :func:`open_async`, which the contexts call with a
    :class:`WatchHost` (session, caches) and a link (how to make a unary call
    and open the stream). The plan and its state, which hold the reconnect
    and resume logic, are in ``snakepit_bridge._watchplan``; the cache in
    ``snakepit_bridge._cache``; :class:`VariableUpdate` in ``snakepit_bridge._update``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

import grpc
import grpc.aio

from ._cache import WatchHolder
from ._plans import Rpc
from ._update import UpdateType, VariableUpdate
from ._watchplan import READ, Emit, OpenStream, Sleep, WatchHost, WatchPlan, WatchState, new_state, watch_plan
from .errors import BridgeError, BridgeUnavailableError, error_from_rpc_error

__all__ = [
    "DEFAULT_BACKOFF",
    "AsyncLink",
    "AsyncVariableWatch",
    "BlockingLink",
    "UpdateType",
    "VariableUpdate",
    "VariableWatch",
    "WatchHost",
    "open_async",
    "open_blocking",
]

#: ``reconnect=True`` waits this long (seconds) before the first reopening, then
#: doubles the delay up to the second number. Each wait is jittered to between
#: half and all of the delay.
DEFAULT_BACKOFF: tuple[float, float] = (0.05, 2.0)


class BlockingLink(Protocol):
    """How a blocking watch reaches the server (given by :class:`~snakepit_bridge.SessionContext`)."""

    def invoke(self, rpc: Rpc) -> Any:
        """Make one unary call; raises BridgeError."""
        ...

    def open_stream(self, request: Any) -> Any:
        """Start ``WatchVariables``: the grpc streaming call (raises ValueError on a closed channel)."""
        ...


class AsyncLink(Protocol):
    """How an asyncio watch reaches the server (given by :class:`~snakepit_bridge.AsyncSessionContext`)."""

    def invoke(self, rpc: Rpc) -> Awaitable[Any]:
        """Make one unary call; raises BridgeError."""
        ...

    def open_stream(self, request: Any) -> Any:
        """Start ``WatchVariables``: the ``grpc.aio`` streaming call (raises UsageError on a closed channel)."""
        ...

    def channel_closed(self) -> bool:
        """Whether the channel is shut down (grpc.aio cancels its calls then)."""
        ...


def open_blocking(
    host: WatchHost,
    link: BlockingLink,
    identifiers: Iterable[str],
    *,
    patterns: Iterable[str] | None = None,
    include_initial: bool,
    reconnect: bool,
    since_versions: Mapping[str, int] | None,
    backoff: tuple[float, float],
) -> VariableWatch:
    """A :class:`VariableWatch` (nothing sent yet); raises TypeError/ValueError for bad arguments.

    ``ValueError`` (a :class:`~snakepit_bridge.ValidationError`) also when
    neither identifiers nor patterns are given.
    """
    state = new_state(identifiers, include_initial, reconnect, since_versions, backoff, patterns)
    return VariableWatch(host, link, state)


def open_async(
    host: WatchHost,
    link: AsyncLink,
    identifiers: Iterable[str],
    *,
    patterns: Iterable[str] | None = None,
    include_initial: bool,
    reconnect: bool,
    since_versions: Mapping[str, int] | None,
    backoff: tuple[float, float],
) -> AsyncVariableWatch:
    """An :class:`AsyncVariableWatch` (nothing sent yet); raises TypeError/ValueError for bad arguments."""
    state = new_state(identifiers, include_initial, reconnect, since_versions, backoff, patterns)
    return AsyncVariableWatch(host, link, state)


# --------------------------------------------------------------------------- drivers


def _cancelled_error(exc: grpc.RpcError) -> BridgeError:
    """A CANCELLED status this watch did not ask for: the channel was closed."""
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return BridgeUnavailableError(
        f"the watch stream was cancelled ({details or 'no details'}); is the gRPC channel closed?",
        grpc.StatusCode.CANCELLED,
    )


def _stream_error(exc: grpc.RpcError) -> BridgeError:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    if code == grpc.StatusCode.CANCELLED:
        return _cancelled_error(exc)
    return error_from_rpc_error(exc)


_CLOSED_CHANNEL = "the gRPC channel is closed"
_CLOSED_CHANNEL_CANCELLED = f"{_CLOSED_CHANNEL}; the watch stream was cancelled"


def _grpc_version() -> tuple[int, int]:
    major, minor = grpc.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


# Before grpcio 1.83, closing a grpc.aio channel cancels only the calls it finds
# as the outermost coroutine of a task (it walks asyncio.all_tasks()): a stream
# awaited from inside a watch, or not awaited at that moment, is not cancelled,
# and its next read waits forever instead of failing. On those versions the
# watch looks at the channel before each wait on the stream, and runs the wait
# in a task of its own whose coroutine is the call's, so a close during the
# wait finds and cancels it (one task per message; newer grpcio tracks its
# calls itself and cancels them all).
_WAIT_IN_OWN_TASK = _grpc_version() < (1, 83)


def _seen_by_close(wait: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
    """``wait`` (a coroutine of a grpc.aio call), as a task of its own where grpc needs that to cancel it."""
    return asyncio.ensure_future(wait) if _WAIT_IN_OWN_TASK else wait


#: Response header of a watch the server registered (the server's WATCH_OPEN_KEY).
_WATCH_OPEN = "snakepit-watch"


def _registered(metadata: Iterable[tuple[str, Any]] | None) -> bool:
    """Whether a stream's initial metadata says the server registered the watch.

    A refusal is a trailers-only response without the header: depending on the
    grpcio version, its status may only be reported after the (empty) initial
    metadata, so ``call.done()`` cannot tell the two apart yet.
    """
    return metadata is not None and any(key == _WATCH_OPEN for key, _ in metadata)


def _step(plan: WatchPlan, value: Any, error: BaseException | None, end: type[Exception]) -> Any:
    """Resume the plan with a result (or an error); its next operation. Raises ``end`` when it is over."""
    try:
        return plan.throw(error) if error is not None else plan.send(value)
    except StopIteration:
        raise end from None


class _WatchIterator:
    """What the blocking and the asyncio watch iterators share: state and introspection."""

    def __init__(self, host: WatchHost, state: WatchState) -> None:
        self._host = host
        self._holder = WatchHolder()
        self._plan = watch_plan(host, state, self._holder)
        self._identifiers = state.identifiers
        self._patterns = state.patterns
        self._call: Any = None
        self._closed = False  # no more updates: closed, finished or failed
        self._finished = False  # the plan is closed
        self._busy = False  # someone is inside next()/anext()
        self._next_op: Any = None  # what the plan asked for, not yet done (after start())

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        patterns = f", patterns={self._patterns!r}" if self._patterns else ""
        return f"{type(self).__name__}({self._host.session_id!r}, {self._identifiers!r}{patterns}, {state})"

    @property
    def closed(self) -> bool:
        """``True`` once the watch has ended (closed, finished, or failed)."""
        return self._closed

    @property
    def connected(self) -> bool:
        """``True`` while a stream is open and the server has accepted it.

        It changes as the watch is iterated (or started): with ``reconnect``,
        it is ``False`` from the moment the stream failed until it is reopened.
        """
        return self._holder.live


class VariableWatch(_WatchIterator):
    """A watch over a blocking channel: a blocking iterator of :class:`VariableUpdate`.

    Made by :meth:`SessionContext.watch_variables` / ``watch_variable`` (a
    blocking context, on a ``grpc.Channel``). Iterate it (``for update in watch``),
    and :meth:`close` it when done, or use it as a context manager::

        with ctx.watch_variables(["temperature"]) as watch:   # the watch is live here
            for update in watch:
                print(update["name"], update["value"])

    ``next()`` blocks until an update comes. One thread iterates at a time;
    :meth:`close` may be called from any thread and makes a blocked ``next()``
    raise ``StopIteration``.

    The ``session_closed`` update is yielded, then iteration stops; without
    patterns it also stops after the ``deleted`` update of the last variable
    watched (with patterns it goes on). Not made directly: the context makes it.

    Iteration raises (and then ends):
        SessionNotFoundError: the session does not exist (on opening).
        VariableNotFoundError: a watched variable does not exist (on opening),
            or, with ``reconnect``, one never delivered was deleted while the
            watch was disconnected.
        ValidationError: a request the server refused as malformed
            (INVALID_ARGUMENT), e.g. an empty pattern.
        ResourceExhaustedError: over the server's limits (``max_batch``
            identifiers and patterns together, ``max_pattern_bytes`` of patterns).
        BridgeUnavailableError: the server went away (without ``reconnect``), or
            the channel was closed (always).
        BridgeError: any other failure, e.g. a malformed value from the server.
    """

    def __init__(self, host: WatchHost, link: BlockingLink, state: WatchState) -> None:
        super().__init__(host, state)
        self._link = link
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def __iter__(self) -> VariableWatch:
        return self

    def __next__(self) -> VariableUpdate:
        """The next update; blocks until one comes.

        Raises:
            StopIteration: the watch is closed, or ended (after ``session_closed``,
                or, without patterns, after the last watched variable's ``deleted``).
            BridgeError: see the class docs.
        """
        update = self._advance(until_open=False)
        assert update is not None
        return update

    def start(self) -> VariableWatch:
        """Open the stream now and wait until the server has registered it; returns ``self``.

        After it returns, every later change of a watched variable is delivered.
        Iterating calls it implicitly. Raises as iteration does (``StopIteration``
        aside: on a closed watch it simply returns).
        """
        try:
            self._advance(until_open=True)
        except StopIteration:
            pass
        return self

    def __enter__(self) -> VariableWatch:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the watch: cancel the RPC (the server drops the subscription) and stop serving its cache entries.

        Idempotent; safe from any thread. A ``next()`` blocked in another
        thread then raises ``StopIteration``.
        """
        with self._lock:
            if self._closed and self._finished:
                return
            self._closed = True
            call, busy = self._call, self._busy
        self._wake.set()
        self._host.cache.release(self._holder)
        if call is not None:
            call.cancel()
        if not busy:
            self._finish()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing to report to
            pass

    def _finish(self) -> None:
        with self._lock:
            self._closed = True
            if self._finished:
                return
            self._finished = True
            call, self._call = self._call, None
        if call is not None:
            call.cancel()
        self._plan.close()  # its finally releases the cache entries

    def _advance(self, until_open: bool) -> VariableUpdate | None:
        with self._lock:
            if self._closed:
                raise StopIteration
            if self._busy:
                raise RuntimeError("another thread is already iterating this watch")
            self._busy = True
        try:
            op, self._next_op = self._next_op, None
            value: Any = None
            error: BaseException | None = None
            while True:
                if self._closed:
                    raise StopIteration
                if op is None:
                    op = _step(self._plan, value, error, StopIteration)
                if until_open and (isinstance(op, Emit) or (op is READ and self._holder.live)):
                    self._next_op = op  # live (or an update is waiting): stop before reading
                    return None
                if isinstance(op, Emit):
                    return op.update
                if op is READ:
                    value, error = self._read()
                elif isinstance(op, OpenStream):
                    value, error = self._open(op.request)
                    if until_open and value:
                        # Let the plan take note (the watch is live), then stop there.
                        self._next_op = _step(self._plan, value, None, StopIteration)
                        return None
                elif isinstance(op, Sleep):
                    self._wake.wait(op.seconds)
                    value, error = None, None
                else:  # a unary _Rpc
                    try:
                        value, error = self._link.invoke(op), None
                    except BridgeError as err:
                        value, error = None, err
                op = None
        except BaseException:
            self._finish()
            raise
        finally:
            with self._lock:
                self._busy = False
                finish = self._closed and not self._finished
            if finish:
                self._finish()

    def _open(self, request: Any) -> tuple[Any, BaseException | None]:
        try:
            call = self._link.open_stream(request)
        except ValueError as exc:  # grpc: "Cannot invoke RPC: Channel closed!"
            return None, BridgeUnavailableError(f"{_CLOSED_CHANNEL} ({exc})")
        with self._lock:
            if self._closed:
                call.cancel()
                raise StopIteration
            previous, self._call = self._call, call
        if previous is not None:
            previous.cancel()
        # Returns once headers came, or the call ended (then without the header).
        return _registered(call.initial_metadata()), None

    def _read(self) -> tuple[Any, BaseException | None]:
        try:
            return next(self._call), None
        except StopIteration:
            return None, None
        except grpc.RpcError as exc:
            if self._closed:
                raise StopIteration from None
            return None, _stream_error(exc)


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _task_cancelling() -> bool:
    """Whether the current task is being cancelled (Python 3.11+; ``False`` when unknown)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class AsyncVariableWatch(_WatchIterator):
    """A watch over a ``grpc.aio`` channel: an async iterator of :class:`VariableUpdate`.

    Made by :meth:`AsyncSessionContext.watch_variables` / ``watch_variable``
    (on a ``grpc.aio.Channel``)::

        async for update in ctx.watch_variables(["temperature", "strategy"]):
            print(update["name"], update["value"])

        async with ctx.watch_variable("temperature") as watch:   # live here
            first = await anext(watch)

    The RPC is cancelled by :meth:`aclose`, by leaving ``async with``, by
    ``break`` once the iterator is garbage collected, and by cancelling the
    task awaiting ``anext`` (the cancellation propagates; the watch is over).
    One task iterates at a time.

    The ``session_closed`` update is yielded, then iteration stops; without
    patterns it also stops after the ``deleted`` update of the last variable
    watched (with patterns it goes on). Not made directly: the context makes it.

    Iteration raises (and then ends):
        SessionNotFoundError: the session does not exist (on opening).
        VariableNotFoundError: a watched variable does not exist (on opening),
            or, with ``reconnect``, one never delivered was deleted while the
            watch was disconnected.
        ValidationError: a request the server refused as malformed
            (INVALID_ARGUMENT), e.g. an empty pattern.
        ResourceExhaustedError: over the server's limits (``max_batch``
            identifiers and patterns together, ``max_pattern_bytes`` of patterns).
        BridgeUnavailableError: the server went away (without ``reconnect``), or
            the channel was closed (always).
        BridgeError: any other failure, e.g. a malformed value from the server.
    """

    def __init__(self, host: WatchHost, link: AsyncLink, state: WatchState) -> None:
        super().__init__(host, state)
        self._link = link
        self._wakeup: asyncio.Future[None] | None = None

    def __aiter__(self) -> AsyncVariableWatch:
        return self

    async def __anext__(self) -> VariableUpdate:
        """The next update; waits until one comes.

        Raises:
            StopAsyncIteration: the watch is closed, or ended (after
                ``session_closed``, or, without patterns, after the last watched
                variable's ``deleted``).
            asyncio.CancelledError: the awaiting task was cancelled (the RPC is cancelled too).
            BridgeError: see the class docs.
        """
        update = await self._advance(until_open=False)
        assert update is not None
        return update

    async def start(self) -> AsyncVariableWatch:
        """Open the stream now and wait until the server has registered it; returns ``self``.

        After it returns, every later change of a watched variable is delivered.
        Iterating calls it implicitly. Raises as iteration does (on a closed
        watch it simply returns).
        """
        try:
            await self._advance(until_open=True)
        except StopAsyncIteration:
            pass
        return self

    async def __aenter__(self) -> AsyncVariableWatch:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the watch: cancel the RPC (the server drops the subscription) and stop serving its cache entries.

        Idempotent. An ``anext`` pending in another task then raises ``StopAsyncIteration``.
        """
        self._close()

    def _close(self) -> None:
        if self._closed and self._finished:
            return
        self._closed = True
        self._host.cache.release(self._holder)
        if self._wakeup is not None:
            _wake_up(self._wakeup)
        if self._call is not None:
            self._call.cancel()
        if not self._busy:
            self._finish()

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - e.g. the loop is already closed
            pass

    def _finish(self) -> None:
        self._closed = True
        if self._finished:
            return
        self._finished = True
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        self._plan.close()

    async def _advance(self, until_open: bool) -> VariableUpdate | None:
        if self._closed:
            raise StopAsyncIteration
        if self._busy:
            raise RuntimeError("another task is already iterating this watch")
        self._busy = True
        try:
            op, self._next_op = self._next_op, None
            value: Any = None
            error: BaseException | None = None
            while True:
                if self._closed:
                    raise StopAsyncIteration
                if op is None:
                    op = _step(self._plan, value, error, StopAsyncIteration)
                if until_open and (isinstance(op, Emit) or (op is READ and self._holder.live)):
                    self._next_op = op  # live (or an update is waiting): stop before reading
                    return None
                if isinstance(op, Emit):
                    return op.update
                if op is READ:
                    if _WAIT_IN_OWN_TASK:
                        value, error = await self._read()
                    else:  # _read() inline: one coroutine less per message
                        try:
                            value, error = await self._call.read(), None
                        except (grpc.RpcError, asyncio.CancelledError, grpc.aio.UsageError) as exc:
                            value, error = None, self._read_failed(exc)
                        else:
                            if value is grpc.aio.EOF:
                                value = None
                elif isinstance(op, OpenStream):
                    value, error = await self._open(op.request)
                    if until_open and value:
                        # Let the plan take note (the watch is live), then stop there.
                        self._next_op = _step(self._plan, value, None, StopAsyncIteration)
                        return None
                elif isinstance(op, Sleep):
                    await self._sleep(op.seconds)
                    value, error = None, None
                else:  # a unary _Rpc
                    try:
                        value, error = await self._link.invoke(op), None
                    except BridgeError as err:
                        value, error = None, err
                op = None
        except BaseException:
            self._finish()
            raise
        finally:
            self._busy = False
            if self._closed and not self._finished:
                self._finish()

    async def _open(self, request: Any) -> tuple[Any, BaseException | None]:
        try:
            call = self._link.open_stream(request)
        except grpc.aio.UsageError as exc:  # the channel is closed
            return None, BridgeUnavailableError(f"{_CLOSED_CHANNEL} ({exc})")
        previous, self._call = self._call, call
        if previous is not None:
            previous.cancel()
        try:
            # Returns once headers came, or the call ended (then without the header).
            metadata = await _seen_by_close(call.initial_metadata())
        except asyncio.CancelledError as exc:
            return None, self._cancelled(exc)
        return _registered(metadata), None

    async def _read(self) -> tuple[Any, BaseException | None]:
        if _WAIT_IN_OWN_TASK and self._link.channel_closed():  # see _WAIT_IN_OWN_TASK
            if self._closed:
                raise StopAsyncIteration
            return None, BridgeUnavailableError(_CLOSED_CHANNEL_CANCELLED)
        try:
            message = await _seen_by_close(self._call.read())
        except (grpc.RpcError, asyncio.CancelledError, grpc.aio.UsageError) as exc:
            return None, self._read_failed(exc)
        if message is grpc.aio.EOF:
            return None, None
        return message, None

    def _read_failed(self, exc: BaseException) -> BaseException:
        """The error a failed read hands the plan (or raises StopAsyncIteration / re-raises, see _cancelled)."""
        if isinstance(exc, grpc.RpcError):
            if self._closed:
                raise StopAsyncIteration from None
            return _stream_error(exc)
        if isinstance(exc, asyncio.CancelledError):
            return self._cancelled(exc)
        return BridgeUnavailableError(f"{_CLOSED_CHANNEL} ({exc})")

    def _cancelled(self, exc: asyncio.CancelledError) -> BaseException:
        """Sort out a CancelledError from grpc: a task cancellation, a close, or a closed channel.

        Re-raises ``exc`` when the task itself is being cancelled; raises
        StopAsyncIteration when this watch was closed; returns the error for a
        closed channel (grpc.aio cancels the calls of a channel it closes).
        """
        if _task_cancelling():
            raise exc
        if self._closed:
            raise StopAsyncIteration from None
        if self._link.channel_closed():
            return BridgeUnavailableError(_CLOSED_CHANNEL_CANCELLED)
        raise exc  # a task cancellation (Python 3.10 has no Task.cancelling())

    async def _sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _wake_up, wakeup)
        self._wakeup = wakeup
        try:
            await wakeup
        finally:
            handle.cancel()
            self._wakeup = None
