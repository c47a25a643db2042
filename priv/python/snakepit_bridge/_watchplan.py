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
from .errors import (
    BridgeError,
    BridgeUnavailableError,
    ResourceExhaustedError,
    SessionNotFoundError,
    ValidationError,
    VariableNotFoundError,
)
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


class Emit:
    """Hand one update to the consumer."""

    __slots__ = ("update",)

    def __init__(self, update: VariableUpdate) -> None:
        self.update = update


WatchPlan = Generator[Any, Any, None]


# --------------------------------------------------------------------------- state of one watch


class WatchState:
    """What one watch remembers between streams: versions seen, deletions, backoff.

    Pure bookkeeping, no I/O; :func:`watch_plan` drives it. A watch with
    ``patterns`` also tracks every variable delivered by its name (``by_name``):
    on a resume those names are listed in ``since_versions`` (the server
    resolves a name to the variable holding it now), and the variables it
    matched that are gone are reported deleted.
    """

    _UNSET: Any = object()

    def __init__(
        self,
        identifiers: list[str],
        include_initial: bool,
        since_versions: Mapping[str, int],
        reconnect: bool,
        backoff: tuple[float, float],
        patterns: list[str] | None = None,
    ) -> None:
        self.identifiers = identifiers
        self.patterns: list[str] = patterns or []
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
        #: with patterns: name -> the last update delivered of the variable holding it.
        self.by_name: dict[str, VariableUpdate] = {}
        #: a stream of this watch was accepted at least once (later opens resume).
        self.opened = False
        #: the session disappeared or is a new one: wait for it and its variables.
        self.awaiting_recreation = False
        #: the session's created_at when the watch started (reconnect only).
        self.incarnation: Any = self._UNSET

    def live_identifiers(self) -> list[str]:
        """The identifiers still watched (not deleted)."""
        return [i for i in self.identifiers if i not in self.deleted]

    def request_fields(self) -> tuple[list[str], bool, dict[str, int]]:
        """Identifiers, include_initial_values and since_versions for the next open.

        With patterns, the caller's ``since_versions`` go as given (the server
        ignores entries for variables the watch does not cover).
        """
        idents = self.live_identifiers()
        wanted = set(idents)
        if self.patterns:
            since = {i: v for i, v in self.user_since.items() if i not in self.deleted}
        else:
            since = {i: v for i, v in self.user_since.items() if i in wanted}
        if not self.opened:
            return idents, self.include_initial, since
        # Resuming: what changed since the last version seen arrives; a variable
        # never seen on this watch gets its current value (it was never
        # delivered). include_initial_values is True on every resume: with
        # patterns, a variable registered while the watch was away is owed (the
        # server sends a match absent from since_versions its current value
        # only when since_versions is not empty; a watch that has seen nothing
        # has an empty one, so it asks for every current value instead).
        since.update((i, u.version) for i, u in self.last.items() if i in wanted and u.version is not None)
        since.update((n, u.version) for n, u in self.by_name.items() if u.version is not None)
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
        self.by_name.clear()
        self.user_since.clear()
        self.awaiting_recreation = True
        return True

    def note(self, update: VariableUpdate) -> bool:
        """Track an update; ``True`` when the watch is over.

        It is over after ``session_closed``, and, for a watch without
        patterns, after the ``deleted`` of its last variable (a watch with
        patterns goes on: a matching variable may be registered).
        """
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
            if self.patterns:
                if name is not None:
                    seen = self.by_name.get(name)
                    if seen is not None and seen.variable_id == var_id:
                        del self.by_name[name]
                    self.user_since.pop(name, None)
                if var_id is not None:
                    self.user_since.pop(var_id, None)
                return False
            return all(i in self.deleted for i in self.identifiers)
        if var_id is not None and update.version is not None:
            for ident in matches:
                self.last[ident] = update
            if self.patterns and name is not None:
                self.by_name[name] = update
        return False

    def resume_names(self) -> list[str]:
        """What a same-session resume checks still exists: live identifiers, then names seen by pattern."""
        idents = self.live_identifiers()
        listed = set(idents)
        return idents + [n for n in self.by_name if n not in listed]

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
        # Identifiers first, then the names delivered by a pattern: one deleted
        # update per variable, whichever way it was seen.
        seen: list[tuple[str, VariableUpdate | None]] = [
            (i, self.last.get(i)) for i in self.identifiers if i not in self.deleted
        ]
        seen.extend(self.by_name.items())
        for ident, last in seen:
            now = current_ids.get(ident)
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
    patterns: Iterable[str] | None = None,
) -> WatchState:
    """Check a watch's arguments and make its state.

    Raises:
        TypeError: ``identifiers`` or ``patterns`` is a string, or holds a non-string.
        ValidationError: neither identifiers nor patterns (a ``ValueError``;
            code INVALID_ARGUMENT, as the server would say).
        ValueError: ``backoff`` is not two positive numbers, first <= longest.
    """
    if isinstance(identifiers, (str, bytes)):
        raise TypeError("identifiers must be a list of names or ids, not a single string; use watch_variable()")
    idents = list(identifiers)
    for ident in idents:
        if not isinstance(ident, str):
            raise TypeError(f"identifiers must be strings, not {type(ident).__name__}")
    if isinstance(patterns, (str, bytes)):
        raise TypeError("patterns must be a list of glob patterns, not a single string")
    globs = list(patterns) if patterns is not None else []
    for glob in globs:
        if not isinstance(glob, str):
            raise TypeError(f"patterns must be strings, not {type(glob).__name__}")
    if not idents and not globs:
        raise ValidationError(
            "watch at least one variable or pattern (identifiers and patterns are both empty)",
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_argument",
        )
    first, longest = (float(x) for x in backoff)
    if not 0 < first <= longest:
        raise ValueError(f"backoff must be (first, longest) with 0 < first <= longest, not {backoff!r}")
    since = {str(k): int(v) for k, v in (since_versions or {}).items()}
    return WatchState(idents, bool(include_initial), since, bool(reconnect), (first, longest), globs)


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
                    patterns=state.patterns,  # again on every resume
                )
                if (yield OpenStream(request)):
                    state.connected()
                    cache.set_live(holder, True)
                while True:
                    message = yield READ
                    if message is None:  # ended with OK (after session_closed)
                        return
                    if not holder.live:  # live implies connected() since the last failure
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
    names = state.resume_names()
    current: dict[str, str] = {}
    # Names seen by a pattern may be many: asked in chunks. A chunk over the
    # server's max_batch is asked again in chunks as big as the watch itself
    # (identifiers and patterns), which the server accepted under max_batch.
    chunk = _CHECK_CHUNK
    start = 0
    while start < len(names):
        part = names[start : start + chunk]
        try:
            batch = yield Rpc(
                "GetVariables", pb2.BatchGetVariablesRequest(session_id=host.session_id, variable_identifiers=part)
            )
        except ResourceExhaustedError:
            smaller = max(1, len(state.identifiers) + len(state.patterns))
            if smaller >= chunk:
                raise
            chunk = smaller
            continue
        current.update((ident, var.id) for ident, var in batch.variables.items())
        start += len(part)
    return state.vanished(current)


#: Names per GetVariables of the check before a same-session resume.
_CHECK_CHUNK = 1000


_new_update = object.__new__
_set_dict = object.__setattr__
#: Wire name -> member: what ``VariableType.coerce`` gives for a ``str`` (a name it does not know stays a str).
_TYPE_MEMBERS: dict[str, VariableType | str] = {member.value: member for member in VariableType}


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
            # What received_update() makes, inline (the hot path of a watch).
            update = _new_update(VariableUpdate)
            _set_dict(
                update,
                "__dict__",
                {
                    "update_type": kind,
                    "variable_id": message.variable_id or var_id,
                    "name": name,
                    "value": value,
                    "version": version,
                    "type": _TYPE_MEMBERS.get(var_type, var_type),
                    # {k: m[k] for k in m}: the dict(m) of a protobuf map, in half the time
                    "metadata": {k: update_metadata[k] for k in update_metadata} if update_metadata else {},
                    "source": message.update_source or None,
                    "_lazy_timestamp": Deferred(update_timestamp, message),
                    "_lazy_variable": Deferred(variable_info, var),
                },
            )
            return update
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
