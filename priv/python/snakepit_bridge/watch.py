"""Watching variables: the updates, and the iterators :meth:`SessionContext.watch_variables` returns.

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
    - ``deleted`` comes once for a deleted variable, then nothing more for it;
      ``session_closed`` is the last message when the session is cleaned up or
      expires (a watch does not keep its session alive: ``heartbeat`` does),
      and the stream then ends.

What this client adds
    - :class:`VariableUpdate`: each message as a read-only mapping with
      attribute access (``update["value"]`` or ``update.value``).
    - :class:`AsyncVariableWatch` (``grpc.aio`` channel) and
      :class:`VariableWatch` (blocking channel): the iterators. Nothing is sent
      until the first ``next``/``anext`` (or entering ``with``/``async with``,
      which opens the stream and waits until the server has registered it).
      Refusals of the opening (``NOT_FOUND``, ``INVALID_ARGUMENT``) are raised
      there. Iteration ends (``StopIteration`` / ``StopAsyncIteration``)
      right after the ``session_closed`` update has been yielded, and right
      after the ``deleted`` update of the last variable still watched (nothing
      else could come). Closing, leaving the ``with`` block, ``break`` plus
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
      yet gets its current value. The iterator reconnects while it is being
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
        raises :class:`VariableNotFoundError`.

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
"""

from __future__ import annotations

import asyncio
import datetime
import random
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import grpc
import grpc.aio

from .errors import (
    BridgeError,
    BridgeUnavailableError,
    SessionNotFoundError,
    VariableNotFoundError,
    error_from_rpc_error,
)
from .types import VariableInfo, VariableType

if TYPE_CHECKING:
    from .context import SessionContext

__all__ = [
    "DEFAULT_BACKOFF",
    "AsyncVariableWatch",
    "UpdateType",
    "VariableUpdate",
    "VariableWatch",
]

#: What an update says happened.
UpdateType = Literal["initial_value", "value_change", "deleted", "session_closed"]

#: ``reconnect=True`` waits this long (seconds) before the first reopening, then
#: doubles the delay up to the second number. Each wait is jittered to between
#: half and all of the delay.
DEFAULT_BACKOFF: tuple[float, float] = (0.05, 2.0)

_KEYS = ("variable_id", "name", "value", "version", "type", "metadata", "source", "timestamp", "update_type")
_REPR_FIELDS = ("update_type", "variable_id", "name", "value", "version", "type", "metadata", "source", "timestamp")


class _Deferred:
    """A field value not computed yet: ``fn(arg)``, computed on first access (see :class:`_LazyField`)."""

    __slots__ = ("arg", "fn")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg


class _LazyField:
    """A dataclass field that may be given a :class:`_Deferred`, computed (once) when first read.

    The value lives in the instance's ``__dict__`` under ``_lazy_<name>``.
    ``required``: the field has no default; otherwise its default is ``None``.
    """

    def __init__(self, required: bool) -> None:
        self._required = required
        self._key = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._key = "_lazy_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:  # the dataclass asks for the field's default
            if self._required:
                raise AttributeError(self._key)
            return None
        value = obj.__dict__[self._key]
        if type(value) is _Deferred:
            value = obj.__dict__[self._key] = value.fn(value.arg)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._key] = value


@dataclass(frozen=True, eq=False)
class VariableUpdate(Mapping[str, Any]):
    """One message of a watch: a read-only mapping, also readable as attributes.

    The keys (and attributes) are ``variable_id``, ``name``, ``value`` (decoded
    as :meth:`SessionContext.get_variable` decodes it), ``version``, ``type``,
    ``metadata`` (what the writer sent with this change; empty for initial
    values), ``source`` (``"elixir"`` or ``"python"``: who made the change),
    ``timestamp`` (timezone-aware UTC datetime of the change) and
    ``update_type`` (``"initial_value"``, ``"value_change"``, ``"deleted"`` or
    ``"session_closed"``). A ``deleted`` update carries the variable as it was
    last. For ``session_closed``, ``variable_id``, ``name``, ``value``,
    ``version`` and ``type`` are ``None``.

    ``variable`` (an attribute, not a key) is the whole
    :class:`~snakepit_bridge.VariableInfo` (constraints, the variable's own
    metadata, last_updated_at), ``None`` for ``session_closed``.

    It compares equal to any mapping with the same keys and values
    (``update == dict(update)``); it is not hashable.

    For a quick receive path, an update read from the stream decodes only the
    value eagerly; ``variable`` and ``timestamp`` are built from the message
    the first time they are read (the same objects on every later read).
    """

    update_type: UpdateType
    variable_id: str | None
    name: str | None
    value: Any
    version: int | None
    type: VariableType | str | None
    metadata: dict[str, str]
    source: str | None
    timestamp: datetime.datetime | None = _LazyField(required=True)  # type: ignore[assignment]
    variable: VariableInfo | None = _LazyField(required=False)  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        # Pickle and copy computed values, never the message they would come from.
        self.timestamp, self.variable  # noqa: B018 - computes what is still deferred
        return dict(self.__dict__)

    def __repr__(self) -> str:  # the dataclass's, without ``variable``
        fields = ", ".join(f"{key}={getattr(self, key)!r}" for key in _REPR_FIELDS)
        return f"{type(self).__qualname__}({fields})"

    def __getitem__(self, key: str) -> Any:
        if key in _KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    @classmethod
    def _received(
        cls,
        update_type: str,
        variable_id: str | None,
        name: str | None,
        value: Any,
        version: int | None,
        type: VariableType | str | None,  # noqa: A002 - the field's name
        metadata: dict[str, str],
        source: str | None,
        timestamp: Any,
        variable: Any,
    ) -> VariableUpdate:
        """What the constructor makes, without its one frozen-attribute set per field (for the receive path)."""
        update = object.__new__(cls)
        object.__setattr__(
            update,
            "__dict__",
            {
                "update_type": update_type,
                "variable_id": variable_id,
                "name": name,
                "value": value,
                "version": version,
                "type": type,
                "metadata": metadata,
                "source": source,
                "_lazy_timestamp": timestamp,
                "_lazy_variable": variable,
            },
        )
        return update


# --------------------------------------------------------------------------- plan operations
#
# A watch is a plan (SessionContext._watch_plan), like every other call of the
# context: a generator that yields what it needs done. Besides the unary
# ``_Rpc`` of context.py (run by the context's _invoke_* drivers), a watch plan
# yields the operations below; the two iterators are its drivers.


@dataclass(frozen=True)
class _OpenStream:
    """Start WatchVariables; the driver answers whether the server accepted it (headers came)."""

    request: Any


class _ReadStream:
    """Read one message; the driver answers it, or ``None`` when the stream ended with OK."""


_READ = _ReadStream()


@dataclass(frozen=True)
class _Sleep:
    """Wait before reconnecting (cut short when the watch is closed)."""

    seconds: float


@dataclass(frozen=True)
class _Emit:
    """Hand one update to the consumer."""

    update: VariableUpdate


_WatchPlan = Generator[Any, Any, None]


# --------------------------------------------------------------------------- state of one watch


class _WatchState:
    """What one watch remembers between streams: versions seen, deletions, backoff.

    Pure bookkeeping, no I/O; the plan in context.py drives it.
    """

    _UNSET: Any = object()

    def __init__(
        self,
        identifiers: list[str],
        include_initial: bool,
        since_versions: Mapping[str, int],
        reconnect: bool,
        backoff: tuple[float, float],
    ) -> None:
        self.identifiers = identifiers
        self._wanted = frozenset(identifiers)
        self.include_initial = include_initial
        self.reconnect = reconnect
        self.user_since = dict(since_versions)
        self.first_delay, self.max_delay = backoff
        self.delay = self.first_delay
        #: identifier -> the last update delivered for it (not deleted, not session_closed).
        self.last: dict[str, VariableUpdate] = {}
        #: identifiers whose variable was deleted: never asked for again.
        self.deleted: set[str] = set()
        #: a stream of this watch was accepted at least once (later opens resume).
        self.opened = False
        #: the session disappeared or is a new one: wait for it and its variables.
        self.awaiting_recreation = False
        #: the session's created_at when the watch started (reconnect only).
        self.incarnation: Any = self._UNSET

    def request_fields(self) -> tuple[list[str], bool, dict[str, int]]:
        """Identifiers, include_initial_values and since_versions for the next open."""
        idents = [i for i in self.identifiers if i not in self.deleted]
        wanted = set(idents)
        since = {i: v for i, v in self.user_since.items() if i in wanted}
        if not self.opened:
            return idents, self.include_initial, since
        # Resuming: what changed since the last version seen arrives; a variable
        # never seen on this watch gets its current value (it was never delivered).
        since.update((i, u.version) for i, u in self.last.items() if i in wanted and u.version is not None)
        return idents, True, since

    def connected(self) -> None:
        self.opened = True
        self.awaiting_recreation = False
        self.delay = self.first_delay

    def session_seen(self, created_at: Any) -> bool:
        """Record the session's identity; ``True`` if it is a new session (versions restart)."""
        if self.incarnation is self._UNSET:
            self.incarnation = created_at
            return False
        if created_at == self.incarnation:
            return False
        self.incarnation = created_at
        self.last.clear()
        self.user_since.clear()
        self.awaiting_recreation = True
        return True

    def note(self, update: VariableUpdate) -> bool:
        """Track an update; ``True`` when the watch is over (session closed, or every variable deleted)."""
        kind = update.update_type
        if kind == "session_closed":
            return True
        # The identifiers this update answers to: its id and/or its name (O(1) per update).
        var_id, name = update.variable_id, update.name
        wanted = self._wanted
        matches = [i for i in (var_id, name) if i is not None and i in wanted]
        if len(matches) == 2 and var_id == name:
            del matches[1]
        if kind == "deleted":
            for ident in matches:
                self.deleted.add(ident)
                self.last.pop(ident, None)
            return all(i in self.deleted for i in self.identifiers)
        if var_id is not None and update.version is not None:
            for ident in matches:
                self.last[ident] = update
        return False

    def vanished(self, current_ids: Mapping[str, str]) -> list[VariableUpdate]:
        """On resuming in the same session: the variables deleted while disconnected.

        ``current_ids`` maps each identifier still watched to its variable's id
        now (absent: no such variable). A variable seen before that is gone, or
        whose name now belongs to another variable, was deleted meanwhile: the
        stream would have said ``deleted``, so a ``deleted`` update is made
        from the last one seen (``source`` and ``timestamp`` ``None``).

        Raises:
            VariableNotFoundError: a watched variable never delivered is gone
                (nothing is known to report it with).
        """
        gone: list[VariableUpdate] = []
        reported: set[str] = set()
        for ident in self.identifiers:
            if ident in self.deleted:
                continue
            now = current_ids.get(ident)
            last = self.last.get(ident)
            if last is None:
                if now is None:
                    raise VariableNotFoundError(
                        f"variable {ident!r} was deleted while the watch was disconnected",
                        grpc.StatusCode.NOT_FOUND,
                        "variable_not_found",
                    )
                continue
            if now == last.variable_id or last.variable_id in reported:
                continue
            assert last.variable_id is not None
            reported.add(last.variable_id)
            gone.append(
                VariableUpdate(
                    update_type="deleted",
                    variable_id=last.variable_id,
                    name=last.name,
                    value=last.value,
                    version=last.version,
                    type=last.type,
                    metadata={},
                    source=None,
                    timestamp=None,
                    variable=last.variable,
                )
            )
        return gone

    def retryable(self, err: BridgeError) -> bool:
        """Whether ``reconnect`` applies to this failure."""
        if not self.reconnect:
            return False
        if isinstance(err, BridgeUnavailableError):
            # A closed channel (code None) or a cancelled call never recovers.
            return err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        if not self.opened:
            return False  # the first opening's refusals are the caller's to see
        if isinstance(err, SessionNotFoundError):
            self.awaiting_recreation = True
            return True
        return isinstance(err, VariableNotFoundError) and self.awaiting_recreation

    def next_delay(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.max_delay)
        return delay * (0.5 + random.random() / 2)


# --------------------------------------------------------------------------- local cache


class _WatchHolder:
    """One watch's claim on cache entries. Holds no reference to the iterator."""

    __slots__ = ("defunct", "ids", "live")

    def __init__(self) -> None:
        self.live = False  # a stream is open and accepted
        self.defunct = False  # the watch ended (or the session was cleaned up)
        self.ids: set[str] = set()


class _Entry:
    __slots__ = ("floor", "holders", "message", "name", "var_id", "version")

    def __init__(self, var_id: str, name: str, version: int, message: Any, floor: int) -> None:
        self.var_id = var_id
        self.name = name
        self.version = version
        self.message = message  # the Variable as the server sent it; decoded afresh on every read
        self.holders: set[_WatchHolder] = set()
        self.floor = floor  # served only once version reaches it (read-your-writes)


class _WatchCache:
    """Values delivered by live watches, served by ``get_variable`` without an RPC.

    Thread-safe (a blocking context may be iterated on one thread and read on
    another); the lock is never held across I/O.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}  # variable id -> entry
        self._names: dict[str, str] = {}  # name -> variable id
        self._holders: set[_WatchHolder] = set()
        self._floors: dict[str, int] = {}  # identifier -> version an own write reached

    def _find(self, identifier: str) -> str | None:
        if identifier in self._entries:
            return identifier
        return self._names.get(identifier)

    def attach(self, holder: _WatchHolder) -> None:
        with self._lock:
            if not holder.defunct:
                self._holders.add(holder)

    def set_live(self, holder: _WatchHolder, live: bool) -> None:
        """Whether the holder's stream is open and accepted (entries are served only then)."""
        if live and holder.live:
            return  # already (a defunct holder is never live: release() clears it under the lock)
        with self._lock:
            holder.live = live and not holder.defunct

    def lookup(self, identifier: str) -> Any | None:
        """The ``Variable`` message last delivered of a variable covered by a live watch, else ``None``.

        Messages are never changed once received; every reader decodes its own
        objects from it, so cache and callers share nothing mutable.
        """
        if not self._entries:
            return None
        with self._lock:
            var_id = self._find(identifier)
            entry = self._entries.get(var_id) if var_id is not None else None
            if entry is None or entry.version < entry.floor:
                return None
            if not any(h.live for h in entry.holders):
                return None
            return entry.message

    def refresh(self, holder: _WatchHolder, var_id: str, name: str, version: int, message: Any) -> None:
        """A watch delivered ``message`` (a ``Variable``) at ``version``."""
        with self._lock:
            if holder.defunct:
                return
            entry = self._entries.get(var_id)
            if entry is None:
                floor = max(self._floors.pop(var_id, 0), self._floors.pop(name, 0))
                entry = self._entries[var_id] = _Entry(var_id, name, version, message, floor)
                self._names[name] = var_id
            elif version >= entry.version:
                entry.version = version
                entry.message = message
            entry.holders.add(holder)
            holder.ids.add(var_id)

    @property
    def watching(self) -> bool:
        """Whether any watch holds entries or may soon (writes must then be noted)."""
        return bool(self._holders)

    def note_write(self, identifiers: tuple[str, ...], version: int) -> None:
        """This context's write reached ``version``: serve nothing older from now on."""
        if not self._holders:
            return
        with self._lock:
            if not self._holders:
                return
            for identifier in identifiers:
                var_id = self._find(identifier)
                if var_id is not None:
                    entry = self._entries[var_id]
                    entry.floor = max(entry.floor, version)
                else:
                    self._floors[identifier] = max(self._floors.get(identifier, 0), version)

    def drop(self, identifier: str) -> None:
        """Forget a variable (deleted)."""
        with self._lock:
            self._floors.pop(identifier, None)
            var_id = self._find(identifier)
            if var_id is not None:
                self._remove(var_id)

    def _remove(self, var_id: str) -> None:
        entry = self._entries.pop(var_id, None)
        if entry is None:
            return
        if self._names.get(entry.name) == var_id:
            del self._names[entry.name]
        for holder in entry.holders:
            holder.ids.discard(var_id)

    def reset(self, holder: _WatchHolder) -> None:
        """Forget every entry the holder refreshed (its session is a new one)."""
        with self._lock:
            for var_id in list(holder.ids):
                self._remove(var_id)
            holder.ids.clear()

    def release(self, holder: _WatchHolder) -> None:
        """The watch ended: its entries go unless another live watch covers them. Idempotent."""
        with self._lock:
            holder.live = False
            holder.defunct = True
            self._holders.discard(holder)
            for var_id in holder.ids:
                entry = self._entries.get(var_id)
                if entry is not None:
                    entry.holders.discard(holder)
                    if not entry.holders:
                        self._remove(var_id)
            holder.ids.clear()
            if not self._holders:
                self._floors.clear()

    def clear(self) -> None:
        """The session is gone: nothing is served until new watches deliver again."""
        with self._lock:
            for holder in self._holders:
                holder.live = False
                holder.defunct = True
                holder.ids.clear()
            self._holders.clear()
            self._entries.clear()
            self._names.clear()
            self._floors.clear()


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


def _step(plan: _WatchPlan, value: Any, error: BaseException | None, end: type[Exception]) -> Any:
    """Resume the plan with a result (or an error); its next operation. Raises ``end`` when it is over."""
    try:
        return plan.throw(error) if error is not None else plan.send(value)
    except StopIteration:
        raise end from None


class _WatchIterator:
    """What the blocking and the asyncio watch iterators share: state and introspection."""

    def __init__(
        self, ctx: SessionContext[Any], plan: _WatchPlan, holder: _WatchHolder, identifiers: list[str]
    ) -> None:
        self._ctx = ctx
        self._plan = plan
        self._holder = holder
        self._identifiers = identifiers
        self._call: Any = None
        self._closed = False  # no more updates: closed, finished or failed
        self._finished = False  # the plan is closed
        self._busy = False  # someone is inside next()/anext()
        self._next_op: Any = None  # what the plan asked for, not yet done (after start())

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({self._ctx.session_id!r}, {self._identifiers!r}, {state})"

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

    Made by :meth:`SessionContext.watch_variables` / ``watch_variable`` on a
    context with a ``grpc.Channel``. Iterate it (``for update in watch``),
    and :meth:`close` it when done, or use it as a context manager::

        with ctx.watch_variables(["temperature"]) as watch:   # the watch is live here
            for update in watch:
                print(update["name"], update["value"])

    ``next()`` blocks until an update comes. One thread iterates at a time;
    :meth:`close` may be called from any thread and makes a blocked ``next()``
    raise ``StopIteration``.

    The ``session_closed`` update is yielded, then iteration stops; it also
    stops after the ``deleted`` update of the last variable watched. Not made
    directly: the context makes it.

    Iteration raises (and then ends):
        SessionNotFoundError: the session does not exist (on opening).
        VariableNotFoundError: a watched variable does not exist (on opening),
            or, with ``reconnect``, one never delivered was deleted while the
            watch was disconnected.
        ValidationError: an empty identifier list (INVALID_ARGUMENT).
        BridgeUnavailableError: the server went away (without ``reconnect``), or
            the channel was closed (always).
        BridgeError: any other failure, e.g. a malformed value from the server.
    """

    def __init__(
        self, ctx: SessionContext[Any], plan: _WatchPlan, holder: _WatchHolder, identifiers: list[str]
    ) -> None:
        super().__init__(ctx, plan, holder, identifiers)
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def __iter__(self) -> VariableWatch:
        return self

    def __next__(self) -> VariableUpdate:
        """The next update; blocks until one comes.

        Raises:
            StopIteration: the watch is closed, or ended (after ``session_closed``,
                or after the last watched variable's ``deleted``).
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
        self._ctx._watch_cache.release(self._holder)
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
                if until_open and (isinstance(op, _Emit) or (op is _READ and self._holder.live)):
                    self._next_op = op  # live (or an update is waiting): stop before reading
                    return None
                if isinstance(op, _Emit):
                    return op.update
                if op is _READ:
                    value, error = self._read()
                elif isinstance(op, _OpenStream):
                    value, error = self._open(op.request)
                    if until_open and value:
                        # Let the plan take note (the watch is live), then stop there.
                        self._next_op = _step(self._plan, value, None, StopIteration)
                        return None
                elif isinstance(op, _Sleep):
                    self._wake.wait(op.seconds)
                    value, error = None, None
                else:  # a unary _Rpc
                    try:
                        value, error = self._ctx._invoke_blocking(op), None
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
            call = self._ctx._stub.WatchVariables(request)
        except ValueError as exc:  # grpc: "Cannot invoke RPC: Channel closed!"
            return None, BridgeUnavailableError(f"{_CLOSED_CHANNEL} ({exc})")
        with self._lock:
            if self._closed:
                call.cancel()
                raise StopIteration
            previous, self._call = self._call, call
        if previous is not None:
            previous.cancel()
        call.initial_metadata()  # returns once headers came, or the call ended
        return not call.done(), None

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

    Made by :meth:`SessionContext.watch_variables` / ``watch_variable`` on a
    context with a ``grpc.aio.Channel``::

        async for update in ctx.watch_variables(["temperature", "strategy"]):
            print(update["name"], update["value"])

        async with ctx.watch_variable("temperature") as watch:   # live here
            first = await anext(watch)

    The RPC is cancelled by :meth:`aclose`, by leaving ``async with``, by
    ``break`` once the iterator is garbage collected, and by cancelling the
    task awaiting ``anext`` (the cancellation propagates; the watch is over).
    One task iterates at a time.

    The ``session_closed`` update is yielded, then iteration stops; it also
    stops after the ``deleted`` update of the last variable watched. Not made
    directly: the context makes it.

    Iteration raises (and then ends):
        SessionNotFoundError: the session does not exist (on opening).
        VariableNotFoundError: a watched variable does not exist (on opening),
            or, with ``reconnect``, one never delivered was deleted while the
            watch was disconnected.
        ValidationError: an empty identifier list (INVALID_ARGUMENT).
        BridgeUnavailableError: the server went away (without ``reconnect``), or
            the channel was closed (always).
        BridgeError: any other failure, e.g. a malformed value from the server.
    """

    def __init__(
        self, ctx: SessionContext[Any], plan: _WatchPlan, holder: _WatchHolder, identifiers: list[str]
    ) -> None:
        super().__init__(ctx, plan, holder, identifiers)
        self._wakeup: asyncio.Future[None] | None = None

    def __aiter__(self) -> AsyncVariableWatch:
        return self

    async def __anext__(self) -> VariableUpdate:
        """The next update; waits until one comes.

        Raises:
            StopAsyncIteration: the watch is closed, or ended (after
                ``session_closed``, or after the last watched variable's ``deleted``).
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
        self._ctx._watch_cache.release(self._holder)
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
                if until_open and (isinstance(op, _Emit) or (op is _READ and self._holder.live)):
                    self._next_op = op  # live (or an update is waiting): stop before reading
                    return None
                if isinstance(op, _Emit):
                    return op.update
                if op is _READ:
                    value, error = await self._read()
                elif isinstance(op, _OpenStream):
                    value, error = await self._open(op.request)
                    if until_open and value:
                        # Let the plan take note (the watch is live), then stop there.
                        self._next_op = _step(self._plan, value, None, StopAsyncIteration)
                        return None
                elif isinstance(op, _Sleep):
                    await self._sleep(op.seconds)
                    value, error = None, None
                else:  # a unary _Rpc
                    try:
                        value, error = await self._ctx._invoke_async(op), None
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
            call = self._ctx._stub.WatchVariables(request)
        except grpc.aio.UsageError as exc:  # the channel is closed
            return None, BridgeUnavailableError(f"{_CLOSED_CHANNEL} ({exc})")
        previous, self._call = self._call, call
        if previous is not None:
            previous.cancel()
        try:
            await call.initial_metadata()  # returns once headers came, or the call ended
        except asyncio.CancelledError as exc:
            return None, self._cancelled(exc)
        return not call.done(), None

    async def _read(self) -> tuple[Any, BaseException | None]:
        try:
            message = await self._call.read()
        except grpc.RpcError as exc:
            if self._closed:
                raise StopAsyncIteration from None
            return None, _stream_error(exc)
        except asyncio.CancelledError as exc:
            return None, self._cancelled(exc)
        except grpc.aio.UsageError as exc:
            return None, BridgeUnavailableError(f"{_CLOSED_CHANNEL} ({exc})")
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # exported, missing from grpc-stubs
            return None, None
        return message, None

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
        try:
            shut = self._ctx.channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.SHUTDOWN
        except Exception:  # noqa: BLE001 - a channel that cannot even say is not usable
            shut = True
        if shut:
            return BridgeUnavailableError(f"{_CLOSED_CHANNEL}; the watch stream was cancelled")
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
