"""The local value cache: values delivered by live watches, served by ``get_variable`` without an RPC.

Owned by a context (one per context) and refreshed by its watches; what is
served when is described in :mod:`snakepit_bridge.watch` ("The local value cache").
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["WatchCache", "WatchHolder"]


class WatchHolder:
    """One watch's claim on cache entries. Holds no reference to the iterator."""

    __slots__ = ("defunct", "ids", "live")

    def __init__(self) -> None:
        self.live = False  # a stream is open and accepted
        self.defunct = False  # the watch ended (or the session was cleaned up)
        self.ids: set[str] = set()


class CacheEntry:
    __slots__ = ("floor", "holders", "message", "name", "var_id", "version")

    def __init__(self, var_id: str, name: str, version: int, message: Any, floor: int) -> None:
        self.var_id = var_id
        self.name = name
        self.version = version
        self.message = message  # the Variable as the server sent it; decoded afresh on every read
        self.holders: set[WatchHolder] = set()
        self.floor = floor  # served only once version reaches it (read-your-writes)


class WatchCache:
    """Values delivered by live watches, served by ``get_variable`` without an RPC.

    Thread-safe (a blocking context may be iterated on one thread and read on
    another); the lock is never held across I/O.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, CacheEntry] = {}  # variable id -> entry
        self._names: dict[str, str] = {}  # name -> variable id
        self._holders: set[WatchHolder] = set()
        self._floors: dict[str, int] = {}  # identifier -> version an own write reached

    def _find(self, identifier: str) -> str | None:
        if identifier in self._entries:
            return identifier
        return self._names.get(identifier)

    def attach(self, holder: WatchHolder) -> None:
        with self._lock:
            if not holder.defunct:
                self._holders.add(holder)

    def set_live(self, holder: WatchHolder, live: bool) -> None:
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

    def refresh(self, holder: WatchHolder, var_id: str, name: str, version: int, message: Any) -> None:
        """A watch delivered ``message`` (a ``Variable``) at ``version``."""
        with self._lock:
            if holder.defunct:
                return
            entry = self._entries.get(var_id)
            if entry is None:
                floor = max(self._floors.pop(var_id, 0), self._floors.pop(name, 0))
                entry = self._entries[var_id] = CacheEntry(var_id, name, version, message, floor)
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

    def reset(self, holder: WatchHolder) -> None:
        """Forget every entry the holder refreshed (its session is a new one)."""
        with self._lock:
            for var_id in list(holder.ids):
                self._remove(var_id)
            holder.ids.clear()

    def release(self, holder: WatchHolder) -> None:
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
