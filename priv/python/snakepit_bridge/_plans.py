"""The sans-IO core shared by :class:`~snakepit_bridge.SessionContext` and :class:`~snakepit_bridge.AsyncSessionContext`.

Plans
    The logic of every call is written once, as a *plan*: a generator that
    builds requests, yields them as :class:`Rpc` values, receives the responses
    (or has the call's :class:`~snakepit_bridge.errors.BridgeError` thrown into
    it) and returns the parsed result. :func:`run_blocking` and
    :func:`run_async` drive a plan with a blocking or an awaiting ``invoke``;
    each context class uses one of them, and nothing else differs between
    the two modes. The watch's own plan (it also opens and reads a stream)
    lives with the watch, in :mod:`snakepit_bridge.watch`.

Type cache
    Setting a value needs the variable's type (the ``type_url`` must name it),
    so :class:`SessionCore` remembers ``identifier -> type`` (and id <-> name)
    from every register, get, batch get and list response, and fetches a type
    it does not know with one ``GetVariable``. Types never change; an entry
    goes on delete. A batch get reads a variable's name and type only when the
    cache does not already hold that variable (same id) under the identifier
    asked. If someone else deletes and re-registers a name with another type,
    the first refused set re-reads the type once and retries.

Local value cache
    While a watch is live, the values it delivers are served by the reads
    without an RPC (:class:`~snakepit_bridge._cache.WatchCache`, refreshed by
    the watch; see :mod:`snakepit_bridge.watch`, "The local value cache").
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2

from ._cache import WatchCache
from ._proto import snakepit_bridge_pb2 as pb2
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

__all__ = [
    "CALL_METADATA",
    "DEFAULT_TIMEOUT",
    "MISSING",
    "Plan",
    "Rpc",
    "SessionCore",
    "invoke_async",
    "invoke_blocking",
    "run_async",
    "run_blocking",
    "update_timestamp",
    "variable_info",
]

#: Seconds a call may take before it fails with BridgeTimeoutError.
DEFAULT_TIMEOUT = 30.0

#: Metadata of every call this package makes (unary and the watch stream): it
#: reads the binary path, so the server sends big embeddings and tensors as raw
#: little-endian float64s; without it (snakepit v0.4 clients) the server sends
#: every value as JSON (docs/protocol.md, "Values").
CALL_METADATA: tuple[tuple[str, str], ...] = (("snakepit-accept-binary", "raw_le"),)

_T = TypeVar("_T")

#: The "no default given" marker of ``get_variable``.
MISSING: Any = object()

_SOURCES: dict[int, VariableSource] = {
    pb2.Variable.ELIXIR: "elixir",
    pb2.Variable.PYTHON: "python",
}


@dataclass(frozen=True)
class Rpc:
    """One unary call a plan asks its driver to make."""

    method: str  # attribute name on BridgeServiceStub, e.g. "GetVariable"
    request: pb_message.Message


Plan = Generator[Rpc, Any, _T]


# --------------------------------------------------------------------------- drivers


def run_blocking(plan: Plan[_T], invoke: Callable[[Rpc], Any]) -> _T:
    """Run a plan to its end, making each call with ``invoke`` (which raises BridgeError)."""
    try:
        rpc = next(plan)
        while True:
            try:
                response = invoke(rpc)
            except BridgeError as err:
                rpc = plan.throw(err)
            else:
                rpc = plan.send(response)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_async(plan: Plan[_T], invoke: Callable[[Rpc], Awaitable[Any]]) -> _T:
    """:func:`run_blocking`, awaiting each call."""
    try:
        rpc = next(plan)
        while True:
            try:
                response = await invoke(rpc)
            except BridgeError as err:
                rpc = plan.throw(err)
            else:
                rpc = plan.send(response)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def invoke_blocking(stub: Any, rpc: Rpc, timeout: float | None) -> Any:
    """Make one unary call on a blocking stub; failures become BridgeError."""
    method = getattr(stub, rpc.method)
    try:
        return method(rpc.request, timeout=timeout, metadata=CALL_METADATA)
    except grpc.RpcError as exc:
        raise error_from_rpc_error(exc) from exc
    except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
        if "closed channel" in str(exc):
            raise BridgeUnavailableError(f"the gRPC channel is closed ({exc})") from exc
        raise


async def invoke_async(stub: Any, rpc: Rpc, timeout: float | None) -> Any:
    """Make one unary call on a ``grpc.aio`` stub; failures become BridgeError."""
    method = getattr(stub, rpc.method)
    try:
        return await method(rpc.request, timeout=timeout, metadata=CALL_METADATA)
    except grpc.RpcError as exc:
        raise error_from_rpc_error(exc) from exc
    except grpc.aio.UsageError as exc:  # e.g. the channel is closed
        raise BridgeUnavailableError(f"the gRPC channel cannot be used: {exc}") from exc


# --------------------------------------------------------------------------- parsing


def _timestamp(ts: timestamp_pb2.Timestamp, present: bool) -> datetime.datetime | None:
    if not present:
        return None
    when: datetime.datetime = ts.ToDatetime(tzinfo=datetime.timezone.utc)
    return when


def update_timestamp(message: pb2.VariableUpdate) -> datetime.datetime | None:
    """The time of a watch update (``None`` if the server sent none)."""
    return _timestamp(message.timestamp, message.HasField("timestamp"))


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def variable_info(var: pb2.Variable) -> VariableInfo:
    """A ``Variable`` message as a :class:`VariableInfo`."""
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


# --------------------------------------------------------------------------- the session's state and plans


class SessionCore:
    """One session's client-side state (type cache, local value cache) and the plan of every unary call.

    No I/O: each plan method returns a :data:`Plan` for a driver to run. The
    watch plan reads and refreshes this state through the small
    :class:`~snakepit_bridge.watch.WatchHost` interface
    (``session_id``, ``cache``, ``learn_type``, ``forget``).
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        # identifier (id or name) -> type name; id <-> name. See "Type cache".
        self.types: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        # (ids, types) of the last values_only batch learned, while nothing else
        # changed the type cache since: the next equal batch has nothing to teach.
        self.batch_learned: tuple[list[str], list[str]] | None = None
        # Values delivered by live watches; see snakepit_bridge.watch.
        self.cache = WatchCache()

    # ------------------------------------------------------------------ type cache

    def remember(self, var: pb2.Variable, *asked: str) -> VariableInfo:
        info = variable_info(var)
        self.learn(var, *asked)
        return info

    def learn(self, var: pb2.Variable, *asked: str) -> None:
        """Put a variable the server sent into the type cache (under its id, its name and ``asked``)."""
        self.learn_type(var.id, var.name, var.type, *asked)

    def learn_type(self, var_id: str, name: str, var_type: str, *asked: str) -> None:
        types = self.types
        aliases = self.aliases
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
            self.batch_learned = None

    def forget(self, identifier: str) -> None:
        self.batch_learned = None
        for key in (identifier, self.aliases.pop(identifier, None)):
            if key:
                self.types.pop(key, None)
                self.aliases.pop(key, None)

    def names_of(self, identifier: str) -> tuple[str, ...]:
        """The identifier and, when known, its alias (id for a name, name for an id)."""
        alias = self.aliases.get(identifier)
        return (identifier, alias) if alias else (identifier,)

    def fetch_type(self, identifier: str) -> Plan[str]:
        request = pb2.GetVariableRequest(session_id=self.session_id, variable_identifier=identifier)
        try:
            response = yield Rpc("GetVariable", request)
        except VariableNotFoundError:
            self.forget(identifier)
            raise
        self.learn(response.variable, identifier)
        return str(response.variable.type)

    # ------------------------------------------------------------------ session

    def ping(self, message: str) -> Plan[str]:
        response = yield Rpc("Ping", pb2.PingRequest(message=message))
        return str(response.message)

    def initialize(self, metadata: Mapping[str, str] | None) -> Plan[dict[str, VariableInfo]]:
        request = pb2.InitializeSessionRequest(session_id=self.session_id, metadata=dict(metadata or {}))
        response = yield Rpc("InitializeSession", request)
        _check(response, "InitializeSession")
        return {name: self.remember(var, name) for name, var in response.initial_variables.items()}

    def cleanup(self, force: bool) -> Plan[int]:
        request = pb2.CleanupSessionRequest(session_id=self.session_id, force=force)
        response = yield Rpc("CleanupSession", request)
        self.types.clear()
        self.aliases.clear()
        self.batch_learned = None
        self.cache.clear()
        return int(response.resources_cleaned)

    def get_session(self) -> Plan[SessionInfo]:
        response = yield Rpc("GetSession", pb2.GetSessionRequest(session_id=self.session_id))
        return SessionInfo(
            session_id=response.session_id,
            metadata=dict(response.metadata),
            created_at=_timestamp(response.created_at, response.HasField("created_at")),
            variable_count=int(response.variable_count),
            watcher_count=int(response.watcher_count),
        )

    def heartbeat(self) -> Plan[bool]:
        request = pb2.HeartbeatRequest(session_id=self.session_id, client_time=_now())
        response = yield Rpc("Heartbeat", request)
        return bool(response.session_valid)

    def register_variable(
        self,
        name: str,
        var_type: VariableType | str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
    ) -> Plan[str]:
        type_name = str(VariableType.coerce(var_type))
        url, payload, binary = encode_parts(type_name, initial_value)
        request = pb2.RegisterVariableRequest(
            session_id=self.session_id,
            name=name,
            type=type_name,
            constraints_json=encode_json(dict(constraints)).decode("utf-8") if constraints else "",
            metadata=dict(metadata or {}),
            initial_binary_value=binary or b"",
        )
        request.initial_value.type_url = url
        request.initial_value.value = payload
        response = yield Rpc("RegisterVariable", request)
        _check(response, "RegisterVariable")
        var_id = str(response.variable_id)
        self.types[name] = type_name
        if var_id:
            self.types[var_id] = type_name
            self.aliases[var_id] = name
            self.aliases[name] = var_id
        return var_id

    def get_value(self, identifier: str, default: Any) -> Plan[Any]:
        try:
            var = yield from self.get_message(identifier)
        except VariableNotFoundError:
            if default is MISSING:
                raise
            return default
        return decode_variable_value(var)

    def get_info(self, identifier: str) -> Plan[VariableInfo]:
        var = yield from self.get_message(identifier)
        return variable_info(var)

    def get_message(self, identifier: str) -> Plan[pb2.Variable]:
        """The variable as a live watch last delivered it, else as ``GetVariable`` reads it (type cache refreshed)."""
        cached = self.cache.lookup(identifier)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        request = pb2.GetVariableRequest(session_id=self.session_id, variable_identifier=identifier)
        try:
            response = yield Rpc("GetVariable", request)
        except VariableNotFoundError:
            self.forget(identifier)
            raise
        var: pb2.Variable = response.variable
        self.learn(var, identifier)
        return var

    def update_variable(
        self,
        identifier: str,
        value: Any,
        metadata: Mapping[str, str] | None,
        expected_version: int | None,
    ) -> Plan[int]:
        var_type = self.types.get(identifier)
        from_cache = var_type is not None
        if var_type is None:
            var_type = yield from self.fetch_type(identifier)

        def request_for(type_name: str) -> pb2.SetVariableRequest:
            url, payload, binary = encode_parts(type_name, value)
            request = pb2.SetVariableRequest(
                session_id=self.session_id,
                variable_identifier=identifier,
                metadata=dict(metadata or {}),
                expected_version=expected_version or 0,
                binary_value=binary or b"",
            )
            request.value.type_url = url
            request.value.value = payload
            return request

        try:
            response = yield Rpc("SetVariable", request_for(var_type))
        except VariableNotFoundError:
            self.forget(identifier)
            raise
        except ValidationError as refused:
            # A declared-type mismatch (kind invalid_argument, not invalid_value)
            # means the cached type may belong to a deleted variable whose name
            # was registered again with another type: re-read it once.
            if not from_cache or refused.kind != "invalid_argument":
                raise
            fresh = yield from self.fetch_type(identifier)
            if fresh == var_type:
                raise refused
            response = yield Rpc("SetVariable", request_for(fresh))
        _check(response, "SetVariable")
        new_version = int(response.new_version)
        self.cache.note_write(self.names_of(identifier), new_version)
        return new_version

    def get_variables(self, identifiers: list[str]) -> Plan[BatchGetResult]:
        request = pb2.BatchGetVariablesRequest(
            session_id=self.session_id, variable_identifiers=identifiers, values_only=True
        )
        response = yield Rpc("GetVariables", request)
        return BatchGetResult(self.batch_values(identifiers, response), list(response.missing_variables))

    def batch_values(self, identifiers: list[str], response: pb2.BatchGetVariablesResponse) -> dict[str, Any]:
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
        if learned != self.batch_learned:
            types = self.types
            aliases = self.aliases
            # What learn_type does per variable, inline (the key asked is its id or its name).
            for var_id, name, var_type in zip(ids, values.names, var_types, strict=False):
                types[var_id] = types[name] = var_type
                aliases[var_id] = name
                aliases[name] = var_id
        # With nothing missing or binary, the server answered every identifier asked, in order.
        keys = list(values.identifiers) if response.missing_variables or response.variables else identifiers
        found = dict(zip(keys, decode_batch_values(var_types, floats, values.values_json), strict=False))
        if response.variables:  # binary-path values
            for key, var in response.variables.items():
                self.learn(var, key)
                found[key] = decode_variable_value(var)
            found = {key: found[key] for key in dict.fromkeys(identifiers) if key in found}
        self.batch_learned = learned
        return found

    def update_variables(
        self,
        updates: dict[str, Any],
        atomic: bool,
        metadata: Mapping[str, str] | None,
    ) -> Plan[BatchUpdateResult]:
        if not updates:
            return BatchUpdateResult({}, True, {})
        local_errors: dict[str, str] = {}

        # Types matter only for encoding values other than floats (floats go
        # packed, typed by their variable on the server).
        types = self.types
        unknown = (
            []
            if types.keys() >= updates.keys()
            else [key for key, value in updates.items() if key not in types and type(value) is not float]
        )
        if unknown:
            lookup = pb2.BatchGetVariablesRequest(session_id=self.session_id, variable_identifiers=unknown)
            found = yield Rpc("GetVariables", lookup)
            for key, var in found.variables.items():
                self.learn(var, key)
            for key in found.missing_variables:
                # Worded as the server words it (the key was never sent).
                local_errors[key] = f"variable {_quote(key)} not found in session {_quote(self.session_id)}"

        # JSON-path values travel in the compact form: one JSON array, not an Any each.
        request = pb2.BatchSetVariablesRequest(session_id=self.session_id, metadata=dict(metadata or {}), atomic=atomic)
        to_send = {k: v for k, v in updates.items() if k not in local_errors} if local_errors else updates
        local_errors.update(encode_compact(request, to_send, types))

        outcome: dict[str, bool | str] = {}
        if local_errors and atomic:
            outcome.update((key, local_errors.get(key, NOT_APPLIED_ATOMIC)) for key in updates)
            return BatchUpdateResult(outcome, False, {})
        if not (request.float_identifiers or request.value_identifiers or request.updates):
            outcome.update(local_errors)
            return BatchUpdateResult(outcome, False, {})

        response = yield Rpc("SetVariables", request)
        # new_versions becomes a dict only if read (BatchUpdateResult); the cache needs it only while watched.
        versions = response.new_versions
        if self.cache.watching:
            for key, version in versions.items():
                self.cache.note_write(self.names_of(key), version)
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

    def list_variables(self, pattern: str | None) -> Plan[list[VariableInfo]]:
        request = pb2.ListVariablesRequest(session_id=self.session_id, pattern=pattern or "")
        response = yield Rpc("ListVariables", request)
        return [self.remember(var) for var in response.variables]

    def delete_variable(self, identifier: str) -> Plan[None]:
        request = pb2.DeleteVariableRequest(session_id=self.session_id, variable_identifier=identifier)
        try:
            response = yield Rpc("DeleteVariable", request)
        finally:
            self.cache.drop(identifier)
            self.forget(identifier)
        _check(response, "DeleteVariable")

    def has_variable(self, identifier: str) -> Plan[bool]:
        try:
            yield from self.get_message(identifier)
        except VariableNotFoundError:
            return False
        return True
