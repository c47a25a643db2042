"""The plan of a watch and its bookkeeping: sans-IO, driven by the iterators of :mod:`snakepit_bridge.watch`.

A watch is a plan like every unary call of a context (see
:mod:`snakepit_bridge._plans`): a generator that yields what it needs done.
Besides unary :class:`~snakepit_bridge._plans.Rpc` calls (the session check
before a reopening) it yields the stream operations below. It reaches the
context only through a :class:`WatchHost`.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from ._cache import WatchCache, WatchHolder
from ._plans import Plan, Rpc, update_timestamp, variable_info
from ._proto import snakepit_bridge_pb2 as pb2
from ._update import Deferred, VariableUpdate, received_update
from .errors import BridgeError, BridgeUnavailableError, SessionNotFoundError, VariableNotFoundError
from .types import VariableType
from .values import decode_variable_value

__all__ = [
    "READ",
    "Emit",
    "OpenStream",
    "Sleep",
    "WatchHost",
    "WatchPlan",
    "WatchState",
    "decode_update",
    "new_state",
    "watch_plan",
]


class WatchHost(Protocol):
    """What a watch needs of its context: the session, the local value cache and the type cache."""

    @property
    def session_id(self) -> str: ...

    @property
    def cache(self) -> WatchCache: ...

    def learn_type(self, var_id: str, name: str, var_type: str, *asked: str) -> None: ...

    def forget(self, identifier: str) -> None: ...


# --------------------------------------------------------------------------- plan operations


@dataclass(frozen=True)
class OpenStream:
    """Start WatchVariables; the driver answers whether the server accepted it (headers came)."""

    request: Any


class ReadStream:
    """Read one message; the driver answers it, or ``None`` when the stream ended with OK."""


READ = ReadStream()


@dataclass(frozen=True)
class Sleep:
    """Wait before reconnecting (cut short when the watch is closed)."""

    seconds: float


@dataclass(frozen=True)
class Emit:
    """Hand one update to the consumer."""

    update: VariableUpdate


WatchPlan = Generator[Any, Any, None]


# --------------------------------------------------------------------------- state of one watch


class WatchState:
    """What one watch remembers between streams: versions seen, deletions, backoff.

    Pure bookkeeping, no I/O; :func:`watch_plan` drives it.
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


def new_state(
    identifiers: Iterable[str],
    include_initial: bool,
    reconnect: bool,
    since_versions: Mapping[str, int] | None,
    backoff: tuple[float, float],
) -> WatchState:
    """Check a watch's arguments and make its state.

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
    return WatchState(idents, bool(include_initial), since, bool(reconnect), (first, longest))


# --------------------------------------------------------------------------- the plan


def watch_plan(host: WatchHost, state: WatchState, holder: WatchHolder) -> WatchPlan:
    """The logic of a watch, for both drivers: open, read, resume, track, refresh the cache."""
    cache = host.cache
    cache.attach(holder)
    try:
        while True:
            try:
                if state.reconnect:
                    vanished = yield from _session_check(host, state, holder)
                    for update in vanished:  # deleted while disconnected
                        cache.drop(update.variable_id or "")
                        host.forget(update.variable_id or "")
                        over = state.note(update)
                        if over:
                            cache.release(holder)
                        yield Emit(update)
                        if over:
                            return
                idents, include, since = state.request_fields()
                request = pb2.WatchVariablesRequest(
                    session_id=host.session_id,
                    variable_identifiers=idents,
                    include_initial_values=include,
                    since_versions=since,
                )
                if (yield OpenStream(request)):
                    state.connected()
                    cache.set_live(holder, True)
                while True:
                    message = yield READ
                    if message is None:  # ended with OK (after session_closed)
                        return
                    state.connected()
                    cache.set_live(holder, True)
                    update = decode_update(host, message, holder)
                    over = state.note(update)
                    if over:
                        cache.release(holder)
                    yield Emit(update)
                    if over:
                        return
            except BridgeError as err:
                cache.set_live(holder, False)
                if not state.retryable(err):
                    raise
                yield Sleep(state.next_delay())
    finally:
        cache.release(holder)


def _session_check(host: WatchHost, state: WatchState, holder: WatchHolder) -> Plan[list[VariableUpdate]]:
    """Before (re)opening a reconnecting watch: is it the same session, and are its variables still there?

    Returns ``deleted`` updates for the variables deleted while the watch was away.
    """
    response = yield Rpc("GetSession", pb2.GetSessionRequest(session_id=host.session_id))
    created = (response.created_at.seconds, response.created_at.nanos) if response.HasField("created_at") else None
    if state.session_seen(created):
        # A new session under the same id (e.g. the server restarted):
        # versions start again, so what was cached or seen means nothing.
        host.cache.reset(holder)
        return []
    if not state.opened or state.awaiting_recreation:
        return []
    idents = [i for i in state.identifiers if i not in state.deleted]
    batch = yield Rpc(
        "GetVariables", pb2.BatchGetVariablesRequest(session_id=host.session_id, variable_identifiers=idents)
    )
    return state.vanished({ident: var.id for ident, var in batch.variables.items()})


def decode_update(host: WatchHost, message: pb2.VariableUpdate, holder: WatchHolder) -> VariableUpdate:
    """Decode one message, and refresh the type cache and the watch cache with it.

    Only the value is decoded here; the update's ``variable`` and
    ``timestamp`` are built from the message if and when they are read,
    and the watch cache keeps the message (see ``WatchCache.lookup``).
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
                host.cache.drop(var_id)
                host.forget(var_id)
            else:
                host.learn_type(var_id, name, var_type)
                if kind != "session_closed":
                    host.cache.refresh(holder, var_id, name, version, var)
            update_metadata = message.update_metadata
            return received_update(
                kind,
                message.variable_id or var_id,
                name,
                value,
                version,
                VariableType.coerce(var_type),
                dict(update_metadata) if update_metadata else {},
                message.update_source or None,
                Deferred(update_timestamp, message),
                Deferred(variable_info, var),
            )
    return received_update(
        kind,
        message.variable_id or None,
        None,
        None,
        None,
        None,
        dict(message.update_metadata),
        message.update_source or None,
        Deferred(update_timestamp, message),
        None,
    )
