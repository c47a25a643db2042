"""Records the client hands back: variable types, variable info, session info, batch results."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, TypedDict

__all__ = [
    "BatchGetResult",
    "BatchUpdateResult",
    "NOT_APPLIED_ATOMIC",
    "SessionInfo",
    "VariableInfo",
    "VariableSource",
    "VariableType",
]


class VariableType(str, Enum):
    """The variable types the bridge knows; the value is the wire name.

    Being a ``str`` enum, ``VariableType.FLOAT == "float"``, and every method
    taking a type accepts either form.
    """

    FLOAT = "float"
    INTEGER = "integer"
    STRING = "string"
    BOOLEAN = "boolean"
    CHOICE = "choice"
    MODULE = "module"
    EMBEDDING = "embedding"
    TENSOR = "tensor"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: VariableType | str) -> VariableType | str:
        """Return the member named by ``value``, or ``value`` itself if it names none.

        Unknown names are passed through so the server, which owns the rules,
        gives the verdict (INVALID_ARGUMENT) rather than the client. Raises
        ``TypeError`` if ``value`` is not a string.
        """
        if not isinstance(value, str):
            raise TypeError(f"var_type must be a VariableType or str, not {type(value).__name__}")
        # What cls(value) finds (a member finds itself), without raising for the unknown.
        member = _MEMBERS.get(value)
        return member if member is not None else value


#: Wire name -> member (what ``VariableType(name)`` returns).
_MEMBERS: dict[str, VariableType] = {member.value: member for member in VariableType}

#: Who made a variable's last change.
VariableSource = Literal["elixir", "python"]

#: The per-key message of an atomic batch update that was refused as a whole.
NOT_APPLIED_ATOMIC = "not applied: the atomic batch was rejected"


@dataclass(frozen=True)
class VariableInfo:
    """Everything the server knows about one variable, as of one read.

    ``value`` is decoded as :func:`snakepit_bridge.values.decode_value` does:
    float → ``float`` (NaN and infinities included), integer → ``int``,
    embedding → ``list[float]``, tensor → ``{"shape": [...], "data": [flat floats]}``.
    """

    id: str
    name: str
    type: VariableType | str
    value: Any
    version: int
    source: VariableSource
    metadata: dict[str, str] = field(default_factory=dict)
    constraints: dict[str, Any] = field(default_factory=dict)
    last_updated_at: datetime.datetime | None = None


class SessionInfo(TypedDict):
    """What :meth:`SessionContext.get_session` returns."""

    session_id: str
    metadata: dict[str, str]
    #: Timezone-aware (UTC); ``None`` if the server sent no time.
    created_at: datetime.datetime | None
    variable_count: int
    #: Live subscriptions of the session (gRPC streams plus Elixir subscribers).
    watcher_count: int


class BatchGetResult(dict[str, Any]):
    """The values found by a batch get, keyed by the identifier asked for.

    It is a plain ``dict`` of the found values (in the order asked), plus
    ``missing``: the identifiers the session has no variable for, in the
    server's order. Nothing is raised for missing identifiers.
    """

    missing: list[str]

    def __init__(self, found: dict[str, Any], missing: list[str]) -> None:
        super().__init__(found)
        self.missing = missing

    def __repr__(self) -> str:
        return f"BatchGetResult({dict.__repr__(self)}, missing={self.missing!r})"


class BatchUpdateResult(dict[str, bool | str]):
    """Per key of a batch update: ``True`` if applied, else the reason as a string.

    For a refused atomic batch nothing was applied: the offending keys carry the
    server's message and every other key :data:`NOT_APPLIED_ATOMIC`.

    Attributes:
        success: the server's verdict for the whole batch.
        new_versions: the new version of every key that was applied (a
            ``dict``; when given another mapping, it is copied into one on
            first access, so a batch call does not pay for it unless it is read).
    """

    success: bool

    def __init__(
        self,
        outcome: dict[str, bool | str],
        success: bool,
        new_versions: Mapping[str, int],
    ) -> None:
        super().__init__(outcome)
        self.success = success
        self._new_versions = new_versions

    @property
    def new_versions(self) -> dict[str, int]:
        versions = self._new_versions
        if type(versions) is not dict:
            versions = self._new_versions = dict(versions)
        return versions

    @new_versions.setter
    def new_versions(self, value: Mapping[str, int]) -> None:
        self._new_versions = value

    @property
    def errors(self) -> dict[str, str]:
        """Only the keys that were not applied, with their messages."""
        return {k: v for k, v in self.items() if isinstance(v, str)}

    def __getstate__(self) -> dict[str, Any]:
        # Pickle and copy a plain dict of versions, never the message it may come from.
        return {"success": self.success, "_new_versions": self.new_versions}

    def __repr__(self) -> str:
        return f"BatchUpdateResult({dict.__repr__(self)}, success={self.success!r}, new_versions={self.new_versions!r})"
