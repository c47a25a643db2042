"""``VariableUpdate``: one message of a watch, as a read-only mapping with attribute access.

Re-exported by :mod:`snakepit_bridge.watch` and the package; the watch plan
builds received updates with :func:`received_update` (only the value decoded,
``variable`` and ``timestamp`` deferred until read).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .types import VariableInfo, VariableType

__all__ = ["Deferred", "UpdateType", "VariableUpdate", "received_update"]

#: What an update says happened.
UpdateType = Literal["initial_value", "value_change", "registered", "deleted", "session_closed"]

_KEYS = ("variable_id", "name", "value", "version", "type", "metadata", "source", "timestamp", "update_type")
_REPR_FIELDS = ("update_type", "variable_id", "name", "value", "version", "type", "metadata", "source", "timestamp")


class Deferred:
    """A field value not computed yet: ``fn(arg)``, computed on first access (see :class:`_LazyField`)."""

    __slots__ = ("arg", "fn")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg


class _LazyField:
    """A dataclass field that may be given a :class:`Deferred`, computed (once) when first read.

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
        if type(value) is Deferred:
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
    ``update_type`` (``"initial_value"``, ``"value_change"``, ``"registered"``
    (a variable a pattern of the watch matches was registered after the watch
    started; it carries the first value), ``"deleted"`` or
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


def received_update(
    update_type: str,
    variable_id: str | None,
    name: str | None,
    value: Any,
    version: int | None,
    var_type: VariableType | str | None,
    metadata: dict[str, str],
    source: str | None,
    timestamp: Any,
    variable: Any,
) -> VariableUpdate:
    """What the constructor makes, without its one frozen-attribute set per field (for the receive path).

    ``timestamp`` and ``variable`` may be :class:`Deferred` values, computed when first read.
    """
    update = object.__new__(VariableUpdate)
    object.__setattr__(
        update,
        "__dict__",
        {
            "update_type": update_type,
            "variable_id": variable_id,
            "name": name,
            "value": value,
            "version": version,
            "type": var_type,
            "metadata": metadata,
            "source": source,
            "_lazy_timestamp": timestamp,
            "_lazy_variable": variable,
        },
    )
    return update
